// Pins the CRDs of the optional kinds the chart renders (ServiceMonitor), so the
// chart tests validate and install them against the real CRDs. Nothing is built
// from this module: testrigs/devtools/charttools.py downloads it with
// `go mod download` and reads the CRD files. See docs/deploy.md.
module mesh-auditor/tools/chartcrds

go 1.26.0

require github.com/prometheus-operator/prometheus-operator v0.85.0
