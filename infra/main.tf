# mesh-auditor's whole stack on AWS, as the EKS Auto Mode + Istio ambient walkthrough builds it:
# VPC, EKS Auto Mode cluster with its built-in NodePools, Istio ambient and the Gateway API CRDs
# through Helm, and the auditor with its IAM role (EKS Pod Identity), evidence bucket (S3 Object
# Lock), Security Hub findings and CloudWatch metrics. Usage: examples/; docs/aws.md.

provider "aws" {
  region = var.region
}

module "cluster" {
  source = "./modules/cluster"

  name                         = var.name
  kubernetes_version           = var.kubernetes_version
  built_in_node_pools          = var.built_in_node_pools
  cluster_admin_principal_arns = var.cluster_admin_principal_arns
  create_evidence_bucket       = var.create_evidence_bucket
  evidence_bucket_name         = var.evidence_bucket_name
  retention_days               = var.retention_days
  tags                         = var.tags
}

provider "helm" {
  kubernetes {
    host                   = module.cluster.cluster_endpoint
    cluster_ca_certificate = base64decode(module.cluster.cluster_certificate_authority_data)
    exec {
      api_version = "client.authentication.k8s.io/v1beta1"
      command     = "aws"
      args        = ["eks", "get-token", "--cluster-name", module.cluster.cluster_name, "--region", var.region]
    }
  }
}

module "mesh" {
  source = "./modules/mesh"

  cluster_name    = module.cluster.cluster_name
  account_id      = module.cluster.account_id
  region          = module.cluster.region
  istio_version   = var.istio_version
  auditor_image   = var.auditor_image
  auditor_rules   = var.auditor_rules
  slack           = var.slack
  evidence_bucket = module.cluster.evidence_bucket
  evidence_prefix = module.cluster.evidence_prefix
  retention_days  = module.cluster.retention_days
  security_hub    = var.security_hub
  cloudwatch      = true
}
