{{/* Names, labels and values shared by the templates. */}}

{{- define "mesh-auditor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Prefix of cluster-wide object names: mesh-auditor for a release named mesh-auditor. */}}
{{- define "mesh-auditor.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "mesh-auditor.namespace" -}}
{{- default .Release.Namespace .Values.namespace -}}
{{- end -}}

{{- define "mesh-auditor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mesh-auditor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "mesh-auditor.labels" -}}
{{ include "mesh-auditor.selectorLabels" . }}
app.kubernetes.io/part-of: mesh-auditor
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The auditor's ServiceAccount as an RBAC subject. */}}
{{- define "mesh-auditor.subject" -}}
- kind: ServiceAccount
  name: {{ .Values.serviceAccount.name }}
  namespace: {{ include "mesh-auditor.namespace" . }}
{{- end -}}

{{/* repository:tag or repository@digest. Arguments: (list image-values root). */}}
{{- define "mesh-auditor.image" -}}
{{- $image := index . 0 -}}
{{- $root := index . 1 -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "mesh-auditor.rulesConfigMap" -}}
{{- default (printf "%s-rules" (include "mesh-auditor.fullname" .)) .Values.rules.existingConfigMap -}}
{{- end -}}

{{/*
terminationGracePeriodSeconds: above both the probe deadline (a replica stopped mid-cycle deletes
its probe pods) and the daemon's own SIGTERM grace (settings daemon.shutdown_grace_s, default 10 s:
running work reaching a safe point); unset: the larger of the two plus 30 s.
*/}}
{{- define "mesh-auditor.gracePeriod" -}}
{{- $deadline := int .Values.probes.deadlineSeconds -}}
{{- $shutdown := int (ceil (float64 (dig "daemon" "shutdown_grace_s" 10 .Values.settings))) -}}
{{- $minimum := add (max $deadline $shutdown) 30 -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds -}}
{{- $minimum -}}
{{- else if le (int .Values.terminationGracePeriodSeconds) $deadline -}}
{{- fail (printf "terminationGracePeriodSeconds (%v) must exceed probes.deadlineSeconds (%v): a replica stopped mid-cycle must have time to delete its probe pods; leave it unset for %v" .Values.terminationGracePeriodSeconds .Values.probes.deadlineSeconds $minimum) -}}
{{- else if le (int .Values.terminationGracePeriodSeconds) $shutdown -}}
{{- fail (printf "terminationGracePeriodSeconds (%v) must exceed settings.daemon.shutdown_grace_s (%v): the daemon must reach a safe point before it is killed; leave it unset for %v" .Values.terminationGracePeriodSeconds $shutdown $minimum) -}}
{{- else -}}
{{- int .Values.terminationGracePeriodSeconds -}}
{{- end -}}
{{- end -}}

{{/* settings.yaml: the chart's values in the auditor's settings shape, then .Values.settings on top. */}}
{{- define "mesh-auditor.settings" -}}
{{- $probes := dict
  "image" (include "mesh-auditor.image" (list .Values.probeImage .))
  "in_mesh_namespace" .Values.probes.inMeshNamespace
  "outside_namespace" .Values.probes.outsideNamespace
  "service_account" .Values.probes.serviceAccount
  "control_enabled" .Values.control.enabled
  "deadline_s" .Values.probes.deadlineSeconds
  "node_selector" .Values.probes.nodeSelector -}}
{{- $daemon := dict
  "rules" (list (printf "/etc/mesh-auditor/rules/%s" .Values.rules.key))
  "namespace" (include "mesh-auditor.namespace" .)
  "probes_enabled" .Values.probes.enabled
  "policy_reports" .Values.policyReports
  "health_port" (int .Values.service.port) -}}
{{- $slack := dict "mode" .Values.slack.mode -}}
{{- if .Values.slack.channel -}}{{- $_ := set $slack "channel" .Values.slack.channel -}}{{- end -}}
{{- $aws := dict "security_hub" .Values.aws.securityHub "cloudwatch" .Values.aws.cloudwatch "verify_auto_mode" .Values.aws.verifyAutoMode -}}
{{- range $key, $value := dict "region" .Values.aws.region "cluster_name" .Values.aws.clusterName "account_id" .Values.aws.accountId "s3_bucket" .Values.aws.s3Bucket -}}
{{- if $value -}}{{- $_ := set $aws $key $value -}}{{- end -}}
{{- end -}}
{{- if .Values.aws.s3Bucket -}}
{{- $_ := set $aws "s3_prefix" .Values.aws.s3Prefix -}}
{{- $_ := set $aws "s3_retention_days" (int .Values.aws.s3RetentionDays) -}}
{{- end -}}
{{- $settings := dict "daemon" $daemon "probes" $probes "slack" $slack "aws" $aws "logging" .Values.logging -}}
{{- toYaml (mustMergeOverwrite $settings (deepCopy .Values.settings)) -}}
{{- end -}}
