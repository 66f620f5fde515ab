"""Reads rules files (``rules/*.yaml``) into a validated ``Posture`` and resolves header values."""
