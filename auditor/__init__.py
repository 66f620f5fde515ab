"""mesh-auditor: proves the zero-trust promises of an Istio ambient mesh on EKS Auto Mode.

Layout (see docs/architecture.md):

- ``auditor.cli``, ``auditor.cli_ops``: the ``auditor`` command line (entry points).
- ``auditor.app``: the one composition root (``auditor.app.daemon`` for the daemon) that
  builds the adapters and wires them into the core through the ports.
- ``auditor.daemon``: the daemon's loop, sinks, metrics and health server.
- ``auditor.render``: pure renderers (table, Markdown, JUnit, HTML, JSON, Slack, PolicyReport).
- ``auditor.adapters``: thin adapters to manifests, rules, clusters, probe pods, Slack and AWS.
- ``auditor.ports``: the Protocols the adapters implement.
- ``auditor.core``: the pure core (models, snapshot, posture, checks, verdicts); no I/O, no clock.
"""

__version__ = "0.1.0"
