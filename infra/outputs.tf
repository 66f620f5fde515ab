output "cluster_name" {
  description = "EKS cluster name."
  value       = module.cluster.cluster_name
}

output "cluster_arn" {
  description = "EKS cluster ARN (the AwsEksCluster resource of the auditor's Security Hub findings)."
  value       = module.cluster.cluster_arn
}

output "configure_kubectl" {
  description = "Command that points kubectl at the cluster."
  value       = "aws eks --region ${var.region} update-kubeconfig --name ${module.cluster.cluster_name}"
}

output "auditor_role_arn" {
  description = "IAM role of the auditor (EKS Pod Identity)."
  value       = module.cluster.auditor_role_arn
}

output "evidence_bucket" {
  description = "Object Lock bucket holding the auditor's evidence."
  value       = module.cluster.evidence_bucket
}

output "evidence_cluster_prefix" {
  description = "This cluster's partition of the evidence bucket."
  value       = module.cluster.evidence_cluster_prefix
}
