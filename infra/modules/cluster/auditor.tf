# The auditor's AWS identity: an IAM role that EKS Pod Identity hands to the auditor's
# ServiceAccount, with exactly the calls the daemon makes (auditor/adapters/aws). The policy lives
# in auditor-policy.json.tftpl so that tests/integration/test_iam_least_privilege.py proves this
# very document against moto with IAM enforcement on; keep every statement there, not here.

locals {
  account_id     = data.aws_caller_identity.current.account_id
  region         = data.aws_region.current.region
  partition      = data.aws_partition.current.partition
  evidence_name  = coalesce(var.evidence_bucket_name, "mesh-auditor-evidence-${local.account_id}-${local.region}")
  evidence_arn   = "arn:${local.partition}:s3:::${local.evidence_name}"
  cluster_prefix = "${var.evidence_prefix}/${local.account_id}/${local.region}/${var.name}"
  # The daemon writes its metrics to this namespace (auditor/adapters/aws/metrics.py NAMESPACE).
  metrics_namespace = "MeshAuditor"
}

data "aws_iam_policy_document" "auditor_trust" {
  statement {
    actions = ["sts:AssumeRole", "sts:TagSession"]
    principals {
      type        = "Service"
      identifiers = ["pods.eks.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
    condition {
      test     = "ArnEquals"
      variable = "aws:SourceArn"
      values   = [aws_eks_cluster.this.arn]
    }
  }
}

resource "aws_iam_role" "auditor" {
  name               = "${var.name}-mesh-auditor"
  description        = "mesh-auditor daemon on EKS cluster ${var.name} (EKS Pod Identity)"
  assume_role_policy = data.aws_iam_policy_document.auditor_trust.json
  tags               = local.tags
}

resource "aws_iam_role_policy" "auditor" {
  name = "mesh-auditor-evidence"
  role = aws_iam_role.auditor.id
  policy = templatefile("${path.module}/auditor-policy.json.tftpl", {
    partition         = local.partition
    account           = local.account_id
    region            = local.region
    cluster           = var.name
    bucket            = local.evidence_name
    prefix            = var.evidence_prefix
    metrics_namespace = local.metrics_namespace
  })
}

resource "aws_eks_pod_identity_association" "auditor" {
  cluster_name    = aws_eks_cluster.this.name
  namespace       = var.auditor_namespace
  service_account = var.auditor_service_account
  role_arn        = aws_iam_role.auditor.arn
  tags            = local.tags
}
