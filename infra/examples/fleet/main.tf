# Two clusters reporting into one evidence bucket: the first creates it, the second reports into
# it (each under its own <account>/<region>/<cluster> prefix, which its IAM role is limited to).
# Security Hub findings of both carry the cluster's ARN; a cross-region aggregator shows them
# together. See docs/aws.md for the fleet view (Athena).

module "ambient_west" {
  source = "../.."

  region        = "us-west-2"
  name          = "ambient-west"
  auditor_image = { repository = "123456789012.dkr.ecr.us-west-2.amazonaws.com/mesh-auditor", tag = "0.1.0" }
  auditor_rules = file("${path.module}/../../../rules/retail-store.yaml")
  slack         = { mode = "bot", channel = "C0123456789", existing_secret = "mesh-auditor-slack" }
}

module "ambient_east" {
  source = "../.."

  region                 = "us-east-1"
  name                   = "ambient-east"
  auditor_image          = { repository = "123456789012.dkr.ecr.us-east-1.amazonaws.com/mesh-auditor", tag = "0.1.0" }
  auditor_rules          = file("${path.module}/../../../rules/retail-store.yaml")
  create_evidence_bucket = false
  evidence_bucket_name   = module.ambient_west.evidence_bucket
}

output "evidence_bucket" {
  value = module.ambient_west.evidence_bucket
}
