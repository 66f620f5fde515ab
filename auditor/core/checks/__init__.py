"""The static checks: one module per promise, metadata in ``catalog``, the run in ``auditor.core.audit``."""
