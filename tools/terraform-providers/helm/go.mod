// Pins the hashicorp/helm provider for `scripts/infra validate`; built by testrigs/devtools/infra.py
// into a filesystem mirror. One module per provider, so that each builds with exactly the
// dependency versions it was released with. See docs/aws.md.
module mesh-auditor/tools/terraform-providers/helm

go 1.14

tool github.com/hashicorp/terraform-provider-helm

require github.com/hashicorp/terraform-provider-helm v1.3.2 // indirect

// The provider's go.mod replaces go-autorest; a dependency's replace does not apply to the main
// module, so it is repeated here.
replace github.com/Azure/go-autorest => github.com/Azure/go-autorest v13.3.3+incompatible

// vbom.ml is a vanity host that no longer answers; it served github.com/fvbommel/util, and the
// same commit is taken from there.
replace vbom.ml/util => github.com/fvbommel/util v0.0.0-20160121211510-db5cfe13f5cc
