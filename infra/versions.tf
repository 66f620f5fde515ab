terraform {
  required_version = ">= 1.6.0"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.79.0"
    }
    helm = {
      source = "hashicorp/helm"
      # The provider block below uses the nested `kubernetes {}` block of helm 1.x and 2.x
      # (3.x made it an attribute).
      version = ">= 1.3.0, < 3.0.0"
    }
  }
}
