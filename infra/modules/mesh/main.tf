# Istio ambient through Helm (base, istiod with the ambient profile, istio-cni, ztunnel), the
# Gateway API CRDs, and the auditor's own chart, in the order Istio's Helm install guide for
# ambient gives (https://istio.io/latest/docs/ambient/install/helm/). Needs a configured helm
# provider for the cluster (see ../../main.tf).

# EKS does not ship the Gateway API CRDs; the walkthrough applies the release's standard install.
# kubectl with server-side apply, as the walkthrough does, keeps this module to one provider.
resource "terraform_data" "gateway_api_crds" {
  count            = var.install_gateway_api_crds ? 1 : 0
  triggers_replace = [var.gateway_api_version]
  provisioner "local-exec" {
    # The walkthrough's prerequisites (AWS CLI, kubectl); a kubeconfig of its own, so the
    # operator's current context never decides which cluster gets the CRDs.
    command = "aws eks update-kubeconfig --name \"$CLUSTER\" --region \"$REGION\" --kubeconfig \"$KUBECONFIG\" && kubectl apply --server-side -f \"$MANIFEST\""
    environment = {
      CLUSTER    = var.cluster_name
      REGION     = var.region
      KUBECONFIG = "${path.root}/.terraform/${var.cluster_name}.kubeconfig"
      MANIFEST   = "https://github.com/kubernetes-sigs/gateway-api/releases/download/${var.gateway_api_version}/standard-install.yaml"
    }
  }
}

resource "helm_release" "istio_base" {
  name             = "istio-base"
  repository       = var.istio_chart_repository
  chart            = "base"
  version          = var.istio_version
  namespace        = "istio-system"
  create_namespace = true
  wait             = true
  depends_on       = [terraform_data.gateway_api_crds]
}

resource "helm_release" "istiod" {
  name       = "istiod"
  repository = var.istio_chart_repository
  chart      = "istiod"
  version    = var.istio_version
  namespace  = "istio-system"
  wait       = true
  values     = [yamlencode({ profile = "ambient" })]
  depends_on = [helm_release.istio_base]
}

resource "helm_release" "istio_cni" {
  name       = "istio-cni"
  repository = var.istio_chart_repository
  chart      = "cni"
  version    = var.istio_version
  namespace  = "istio-system"
  wait       = true
  values     = [yamlencode({ profile = "ambient" })]
  depends_on = [helm_release.istiod]
}

resource "helm_release" "ztunnel" {
  name       = "ztunnel"
  repository = var.istio_chart_repository
  chart      = "ztunnel"
  version    = var.istio_version
  namespace  = "istio-system"
  wait       = true
  depends_on = [helm_release.istio_cni]
}

locals {
  # deploy/helm/mesh-auditor in this repository, unless another chart is given.
  auditor_chart = coalesce(var.auditor_chart, "${path.module}/../../../deploy/helm/mesh-auditor")
  # The chart's value names (deploy/helm/mesh-auditor/values.yaml; its values.schema.json
  # refuses any other key).
  auditor_values = {
    image = var.auditor_image
    # EKS Pod Identity binds the role to this ServiceAccount by name: no annotation is needed
    # (IRSA would need aws.iamRoleArn instead). The chart always creates it.
    serviceAccount = {
      name = var.auditor_service_account
    }
    rules = {
      inline = yamldecode(var.auditor_rules)
    }
    slack = {
      mode    = var.slack.mode
      channel = var.slack.channel
      # The Secret the platform team created: the bot token (bot) or the webhook URL (webhook).
      tokenSecret = {
        name = coalesce(var.slack.existing_secret, "mesh-auditor-slack")
        key  = var.slack.mode == "webhook" ? "webhook-url" : "bot-token"
      }
    }
    aws = {
      region          = var.region
      accountId       = var.account_id
      clusterName     = var.cluster_name
      s3Bucket        = var.evidence_bucket == null ? "" : var.evidence_bucket
      s3Prefix        = var.evidence_prefix
      s3RetentionDays = var.retention_days
      securityHub     = var.security_hub
      cloudwatch      = var.cloudwatch
      verifyAutoMode  = true
    }
  }
}

resource "helm_release" "mesh_auditor" {
  name             = "mesh-auditor"
  chart            = local.auditor_chart
  namespace        = var.auditor_namespace
  create_namespace = true
  wait             = true
  values           = [yamlencode(local.auditor_values)]
  depends_on       = [helm_release.ztunnel]
}
