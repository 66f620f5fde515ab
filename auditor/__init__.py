"""mesh-auditor: proves the zero-trust promises of an Istio ambient mesh on EKS Auto Mode.

Layout (see docs/architecture.md):

- ``auditor.core``: the pure core (models, snapshot, posture, checks, verdicts); no I/O, no clock.
- ``auditor.adapters``: thin adapters that read manifests, rules and clusters into core models.
- ``auditor.app``: the composition root that wires adapters into the core.
- ``auditor.cli``: the ``auditor`` command line.
"""

__version__ = "0.1.0"
