// Pins the Policy WG's PolicyReport CRDs (wgpolicyk8s.io/v1alpha2) that the integration tests
// install: policy-report/crd/v1alpha2 in this module. The module has no release tags; this
// pseudo-version is one the Go module proxy serves (20211213184226-468085642d55 is refused).
// Read by tests/policyreport_crd.py.
module mesh-auditor/tools/policyreport-crd

go 1.24.0

require sigs.k8s.io/wg-policy-prototypes v0.0.0-20210911211205-fb8f67bb6d38 // indirect
