"""The probe program: the code that runs inside probe pods.

A probe pod receives a plan (a list of HTTP requests), sends each request on a brand-new
connection, classifies what the client observed (semantics §1) and prints the results as JSON.

Modules, each with one role:

- ``wire``: the plan and result schema; the only module the auditor imports from here.
- ``classify``: pure decisions from an observed response or exception to an ``Outcome``.
- ``sender``: httpx, one fresh connection per request, a bounded number in flight.
- ``termination``: fits the result into the 4096-byte Kubernetes termination message.
- ``__main__``: the command line (``python -m probes --plan FILE``).

Nothing here imports the ``auditor`` package (import-linter enforces it).
"""
