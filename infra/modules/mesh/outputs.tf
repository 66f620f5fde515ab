output "istio_version" {
  description = "Istio release installed."
  value       = var.istio_version
}

output "auditor_release" {
  description = "Helm release name and namespace of the auditor."
  value       = { name = helm_release.mesh_auditor.name, namespace = helm_release.mesh_auditor.namespace }
}
