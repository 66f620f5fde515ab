"""``auditor daemon``: continuous audits, drift lifecycle, alerts and reports (the in-cluster process)."""
