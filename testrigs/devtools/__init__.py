"""Developer and CI tooling that is not part of the auditor at run time.

Nothing in the auditor imports this package; it holds helpers such as the launcher of the
integration tests' Kubernetes control plane (``testrigs.devtools.controlplane``).
"""
