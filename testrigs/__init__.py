"""Test rigs of mesh-auditor: not part of the shipped package.

``testrigs.devtools`` builds and runs the real components the integration tests use (kube-apiserver,
etcd, istiod, istioctl, Helm, OpenTofu, the images); ``testrigs.lab`` is the mesh lab (a real
data plane in network namespaces on this host); ``testrigs.fakes`` holds the in-memory fakes of
the ports for unit tests of the pure core. They work from a source checkout only and are run
through ``scripts/`` (``scripts/controlplane``, ``scripts/lab``, ...). Nothing in ``auditor`` or
``probes`` imports them (import-linter checks it, and a test asserts the wheel holds none of it).
"""
