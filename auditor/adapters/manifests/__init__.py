"""Reads Kubernetes manifest files (or stdin) into a snapshot: ``auditor check --manifests``."""
