"""Runs probe plans as short-lived, hardened pods (the ``ProbeRunner`` port) and reads their reports."""
