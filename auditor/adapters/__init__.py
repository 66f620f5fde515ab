"""Thin adapters between the outside world (files, clusters, SDKs) and the pure core."""
