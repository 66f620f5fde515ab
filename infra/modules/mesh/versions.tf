terraform {
  required_version = ">= 1.6.0"
  required_providers {
    helm = {
      source = "hashicorp/helm"
      # The oldest release with every argument used here (create_namespace arrived in 1.3.0);
      # scripts/infra validates against 1.3.2, the newest one the Go module proxy serves.
      version = ">= 1.3.0"
    }
  }
}
