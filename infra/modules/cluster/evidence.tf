# The evidence bucket: S3 Object Lock (versioning comes with it), a default retention, no public
# access, TLS only. Several clusters may share one bucket (create_evidence_bucket = false in the
# others): each writes below its own <account>/<region>/<cluster> prefix, which is what its IAM
# policy allows and what the Athena table in docs/aws.md partitions by.

resource "aws_s3_bucket" "evidence" {
  count               = var.create_evidence_bucket ? 1 : 0
  bucket              = local.evidence_name
  object_lock_enabled = true
  tags                = local.tags
}

resource "aws_s3_bucket_object_lock_configuration" "evidence" {
  count  = var.create_evidence_bucket ? 1 : 0
  bucket = aws_s3_bucket.evidence[0].id
  rule {
    default_retention {
      mode = var.object_lock_mode
      days = var.retention_days
    }
  }
}

resource "aws_s3_bucket_versioning" "evidence" {
  count  = var.create_evidence_bucket ? 1 : 0
  bucket = aws_s3_bucket.evidence[0].id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "evidence" {
  count  = var.create_evidence_bucket ? 1 : 0
  bucket = aws_s3_bucket.evidence[0].id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_public_access_block" "evidence" {
  count                   = var.create_evidence_bucket ? 1 : 0
  bucket                  = aws_s3_bucket.evidence[0].id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

data "aws_iam_policy_document" "evidence" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [local.evidence_arn, "${local.evidence_arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "evidence" {
  count  = var.create_evidence_bucket ? 1 : 0
  bucket = aws_s3_bucket.evidence[0].id
  policy = data.aws_iam_policy_document.evidence.json
}
