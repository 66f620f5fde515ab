variable "name" {
  description = "EKS cluster name; also names the VPC, roles and (with the account and region) the evidence bucket."
  type        = string
  default     = "ambient"
}

variable "kubernetes_version" {
  description = "EKS Kubernetes version."
  type        = string
  default     = "1.33"
}

variable "vpc_cidr" {
  description = "CIDR of the cluster's VPC; split into one public and one private subnet per availability zone."
  type        = string
  default     = "10.0.0.0/16"
}

variable "availability_zones" {
  description = "How many availability zones the subnets span."
  type        = number
  default     = 3
  validation {
    condition     = var.availability_zones >= 2 && var.availability_zones <= 6
    error_message = "EKS needs subnets in at least two availability zones; at most six are supported here."
  }
}

variable "built_in_node_pools" {
  description = "EKS Auto Mode built-in NodePools. An empty list is a valid Auto Mode setup with custom NodePools only (the auditor's Auto Mode check looks at NodePool objects then)."
  type        = list(string)
  default     = ["general-purpose", "system"]
  validation {
    condition     = alltrue([for pool in var.built_in_node_pools : contains(["general-purpose", "system"], pool)])
    error_message = "EKS Auto Mode knows the built-in NodePools general-purpose and system only."
  }
}

variable "cluster_admin_principal_arns" {
  description = "IAM principals given cluster-admin through EKS access entries (the caller that runs tofu is added by bootstrap_cluster_creator_admin_permissions)."
  type        = list(string)
  default     = []
}

variable "auditor_namespace" {
  description = "Namespace of the auditor's ServiceAccount (the Pod Identity association binds this one)."
  type        = string
  default     = "mesh-auditor"
}

variable "auditor_service_account" {
  description = "Name of the auditor's ServiceAccount."
  type        = string
  default     = "mesh-auditor"
}

variable "evidence_bucket_name" {
  description = "Name of the evidence bucket (S3 Object Lock). Null creates mesh-auditor-evidence-<account>-<region>. Set create_evidence_bucket = false and this to a bucket another stack owns to let several clusters report into one bucket."
  type        = string
  default     = null
}

variable "create_evidence_bucket" {
  description = "Create the evidence bucket here (true) or use an existing one named evidence_bucket_name (false: the fleet's shared bucket)."
  type        = bool
  default     = true
}

variable "evidence_prefix" {
  description = "Key prefix the auditor writes under; the IAM policy allows PutObject below it only."
  type        = string
  default     = "mesh-auditor/reports"
}

variable "object_lock_mode" {
  description = "Default Object Lock retention mode of the evidence bucket (GOVERNANCE or COMPLIANCE)."
  type        = string
  default     = "GOVERNANCE"
  validation {
    condition     = contains(["GOVERNANCE", "COMPLIANCE"], var.object_lock_mode)
    error_message = "object_lock_mode must be GOVERNANCE or COMPLIANCE."
  }
}

variable "retention_days" {
  description = "Days an evidence record stays locked (the bucket default and the daemon's per-object retention)."
  type        = number
  default     = 365
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
