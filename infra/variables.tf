variable "region" {
  description = "AWS region of the cluster, its VPC and the auditor's evidence."
  type        = string
  default     = "us-west-2"
}

variable "name" {
  description = "EKS cluster name (the walkthrough's is ambient)."
  type        = string
  default     = "ambient"
}

variable "kubernetes_version" {
  description = "EKS Kubernetes version."
  type        = string
  default     = "1.33"
}

variable "built_in_node_pools" {
  description = "EKS Auto Mode built-in NodePools; [] for custom NodePools only (still a valid Auto Mode setup)."
  type        = list(string)
  default     = ["general-purpose", "system"]
}

variable "cluster_admin_principal_arns" {
  description = "Extra IAM principals with cluster-admin access entries."
  type        = list(string)
  default     = []
}

variable "istio_version" {
  description = "Istio release (the walkthrough deploys 1.28.1)."
  type        = string
  default     = "1.28.1"
}

variable "auditor_image" {
  description = "Container image of the auditor (built from infra/Dockerfile)."
  type = object({
    repository = string
    tag        = string
  })
}

variable "auditor_rules" {
  description = "The auditor's rules file, as YAML text (e.g. file(\"rules/example.yaml\"))."
  type        = string
}

variable "slack" {
  description = "Slack alerts: mode off|bot|webhook, channel, and the name of an existing Secret with the token or webhook URL."
  type = object({
    mode            = string
    channel         = optional(string, "")
    existing_secret = optional(string, "")
  })
  default = { mode = "off" }
}

variable "create_evidence_bucket" {
  description = "Create the Object Lock evidence bucket here; false to report into a fleet bucket named evidence_bucket_name."
  type        = bool
  default     = true
}

variable "evidence_bucket_name" {
  description = "Evidence bucket name; null = mesh-auditor-evidence-<account>-<region>."
  type        = string
  default     = null
}

variable "retention_days" {
  description = "Object Lock retention of each evidence record, in days."
  type        = number
  default     = 365
}

variable "security_hub" {
  description = "Import findings into Security Hub (it must be enabled in the region)."
  type        = bool
  default     = true
}

variable "tags" {
  description = "Tags for every AWS resource."
  type        = map(string)
  default     = {}
}
