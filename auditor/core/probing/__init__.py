"""Active probing: plan probe pods from the posture and snapshot (``probeplan``), read what the
pods report (``probereport``) and turn it into verdicts that never pass on a missing proof
(``verdict``)."""
