"""The mesh lab: a small, real data plane that enforces Istio ambient semantics, on one Linux host.

Optional (``pip install 'mesh-auditor[lab]'``), root and Linux only. It gives the auditor a
cluster-shaped target whose behaviour is known, and that can be made to diverge from its config
on purpose (faults), so the auditor's probes and verdicts can be tested end to end:

- ``lab``: ``Lab.up``/``reconcile``/``down``/``status``, the composition root;
- ``mesh``: the ambient rules (capture, waypoints, PeerAuthentication, policy binding), pure;
- ``rbac``, ``envoyconf``: AuthorizationPolicy and topology -> Envoy config, pure;
- ``netns``, ``procs``, ``proxy``, ``pki``: namespaces + iptables, processes, Envoy, the CA;
- ``app``: the HTTP app each pod runs; ``translator``: the API-server poll loop;
- ``kubelet``, ``image``: probe pods from the API server run inside their own lab pods;
  ``writeback``: istio-cni's redirection annotation (every status of istiod's comes from the
  real istiod the lab runs); ``controllers``: the controller-manager's and kubelets' objects;
- ``python -m testrigs.lab up|down|status`` (run as ``scripts/lab``): the command line (docs/lab.md).

The lab never imports ``auditor.core`` or ``auditor.adapters`` (an import-linter contract): it is
the reference the auditor is graded against, not a second copy of the auditor's reasoning.
"""
