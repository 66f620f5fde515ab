terraform {
  required_version = ">= 1.6.0"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.79.0" # aws_eks_cluster.compute_config (EKS Auto Mode) arrived in 5.79.0
    }
  }
}
