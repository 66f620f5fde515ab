output "cluster_name" {
  description = "EKS cluster name."
  value       = aws_eks_cluster.this.name
}

output "cluster_arn" {
  description = "EKS cluster ARN (the Security Hub findings' AwsEksCluster resource)."
  value       = aws_eks_cluster.this.arn
}

output "cluster_endpoint" {
  description = "Kubernetes API endpoint."
  value       = aws_eks_cluster.this.endpoint
}

output "cluster_certificate_authority_data" {
  description = "Base64 CA bundle of the Kubernetes API."
  value       = aws_eks_cluster.this.certificate_authority[0].data
}

output "account_id" {
  description = "AWS account of the cluster (written into every evidence record)."
  value       = local.account_id
}

output "region" {
  description = "AWS region of the cluster (written into every evidence record)."
  value       = local.region
}

output "vpc_id" {
  description = "The cluster's VPC."
  value       = aws_vpc.this.id
}

output "private_subnet_ids" {
  description = "Private subnets the cluster and its nodes use."
  value       = aws_subnet.private[*].id
}

output "auditor_role_arn" {
  description = "IAM role the auditor's ServiceAccount receives through EKS Pod Identity."
  value       = aws_iam_role.auditor.arn
}

output "evidence_bucket" {
  description = "Evidence bucket name."
  value       = local.evidence_name
}

output "evidence_prefix" {
  description = "Key prefix the auditor's records go under (the daemon adds <account>/<region>/<cluster> below it)."
  value       = var.evidence_prefix
}

output "evidence_cluster_prefix" {
  description = "This cluster's partition of the evidence bucket."
  value       = local.cluster_prefix
}

output "retention_days" {
  description = "Object Lock retention in days."
  value       = var.retention_days
}

output "metrics_namespace" {
  description = "CloudWatch namespace of the auditor's metrics."
  value       = local.metrics_namespace
}
