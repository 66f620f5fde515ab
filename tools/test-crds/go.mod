// Pins the upstream CRDs the integration tests install, read from the Go module cache by
// tests/crd_modules.py (never copied into the repository):
// - sigs.k8s.io/wg-policy-prototypes: the Policy WG's PolicyReport CRDs (wgpolicyk8s.io/v1alpha2,
//   policy-report/crd/v1alpha2). The module has no release tags; this pseudo-version is one the Go
//   module proxy serves (20211213184226-468085642d55 is refused).
// - sigs.k8s.io/karpenter: the NodePool CRD (karpenter.sh/v1, pkg/apis/crds) that EKS Auto Mode
//   serves too; v1.8.0 is the newest release that builds with this machine's Go toolchain.
module mesh-auditor/tools/test-crds

go 1.24.0

require (
	sigs.k8s.io/karpenter v1.8.0 // indirect
	sigs.k8s.io/wg-policy-prototypes v0.0.0-20210911211205-fb8f67bb6d38 // indirect
)
