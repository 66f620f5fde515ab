"""The pure core: immutable models and functions from (snapshot, posture) to findings.

Nothing in this package performs I/O, reads the clock or imports an SDK; import-linter enforces it.
"""
