"""Reads a live cluster into the same snapshot the manifest reader builds (``auditor check --kubeconfig``)."""
