variable "cluster_name" {
  description = "EKS cluster name (the auditor's ids, evidence partition and DescribeCluster target)."
  type        = string
}

variable "account_id" {
  description = "AWS account of the cluster (written into every evidence record)."
  type        = string
}

variable "region" {
  description = "AWS region of the cluster and of the auditor's AWS sinks."
  type        = string
}

variable "istio_version" {
  description = "Istio release of the base, istiod, cni and ztunnel charts (the walkthrough deploys 1.28.1)."
  type        = string
  default     = "1.28.1"
}

variable "istio_chart_repository" {
  description = "Helm repository of Istio's charts."
  type        = string
  default     = "https://istio-release.storage.googleapis.com/charts"
}

variable "gateway_api_version" {
  description = "Kubernetes Gateway API release whose standard CRDs are installed (the walkthrough uses v1.4.0)."
  type        = string
  default     = "v1.4.0"
}

variable "install_gateway_api_crds" {
  description = "Install the Gateway API standard CRDs with kubectl (server-side apply) before Istio; needs kubectl and a kubeconfig for the cluster where tofu runs."
  type        = bool
  default     = true
}

variable "auditor_chart" {
  description = "Path (or repository chart name) of the auditor's Helm chart."
  type        = string
  default     = null
}

variable "auditor_namespace" {
  description = "Namespace the auditor runs in (the Pod Identity association binds its ServiceAccount there)."
  type        = string
  default     = "mesh-auditor"
}

variable "auditor_service_account" {
  description = "The auditor's ServiceAccount name."
  type        = string
  default     = "mesh-auditor"
}

variable "auditor_image" {
  description = "Container image of the auditor: repository and tag."
  type = object({
    repository = string
    tag        = string
  })
}

variable "auditor_rules" {
  description = "The auditor's rules file (YAML text, see rules/schema.json)."
  type        = string
}

variable "slack" {
  description = "Slack alerts: mode off|bot|webhook, the channel (bot mode) and the name of an existing Secret holding the token or webhook URL (never the token itself)."
  type = object({
    mode            = string
    channel         = optional(string, "")
    existing_secret = optional(string, "")
  })
  default = { mode = "off" }
  validation {
    condition     = contains(["off", "bot", "webhook"], var.slack.mode)
    error_message = "slack.mode must be off, bot or webhook."
  }
}

variable "evidence_bucket" {
  description = "S3 bucket for the audit archive (Object Lock); null = no archive."
  type        = string
  default     = null
}

variable "evidence_prefix" {
  description = "Key prefix of the archive (the daemon adds <account>/<region>/<cluster> below it)."
  type        = string
  default     = "mesh-auditor/reports"
}

variable "retention_days" {
  description = "Object Lock retention of each archived record, in days."
  type        = number
  default     = 365
}

variable "security_hub" {
  description = "Import findings into AWS Security Hub (Security Hub must be enabled in the region)."
  type        = bool
  default     = true
}

variable "cloudwatch" {
  description = "Put cycle metrics to CloudWatch (namespace MeshAuditor)."
  type        = bool
  default     = true
}
