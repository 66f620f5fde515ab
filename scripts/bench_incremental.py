#!/usr/bin/env python3
"""Benchmark of the daemon's incremental re-evaluation (#16; not a test): one change, its verdicts.

Builds the objects ``scripts/bench_static.py`` generates (N Services, each with a Deployment, a
ServiceAccount, a PeerAuthentication and an AuthorizationPolicy, 100 per namespace, one in 100
protected with a waypoint), decoded as the daemon's watches hold them, and an
``auditor.core.incremental.IncrementalAudit`` of them. Then, for each kind of event, applies one
change and reports the CPU time (``time.process_time``) from the event to the updated findings,
what was re-evaluated, and checks the result against a full ``run_static_audit`` of the same
objects (it must be identical). The cyclic garbage collector is paused, as in the daemon's audit.

    python scripts/bench_incremental.py [--services 10000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from auditor.core.decode import Decoded, decode_object  # noqa: E402
from auditor.core.incremental import Change, IncrementalAudit, ObjectKey, full_audit  # noqa: E402
from auditor.core.posture import Posture, PostureDocument, merge  # noqa: E402
from scripts.bench_static import PER_NAMESPACE, PROTECTED_EVERY, _service_docs  # noqa: E402 - after the path setup

Objects = dict[ObjectKey, tuple[Decoded, ...]]


def generated(services: int) -> tuple[list[dict[str, Any]], Posture]:
    """The documents and posture ``bench_static.generate`` writes to files, in memory."""
    namespaces = sorted({f"ns-{i // PER_NAMESPACE:04d}" for i in range(services)})
    documents: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": ns, "labels": {"istio.io/dataplane-mode": "ambient"}},
        }
        for ns in namespaces
    ]
    documents.append(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": {"name": "default", "namespace": "istio-system"},
            "spec": {"mtls": {"mode": "STRICT"}},
        }
    )
    protected = []
    for i in range(services):
        ns, name = f"ns-{i // PER_NAMESPACE:04d}", f"svc-{i:05d}"
        documents += _service_docs(ns, name, i % PROTECTED_EVERY == 0)
        if i % PROTECTED_EVERY == 0:
            protected.append(
                {
                    "name": name,
                    "namespace": ns,
                    "allowedPrincipals": [f"cluster.local/ns/{ns}/sa/client"],
                    "waypoint": {"name": f"{name}-waypoint"},
                    "requiredHeaders": [{"name": "x-token", "value": {"literal": "t"}}],
                }
            )
    rules = {
        "apiVersion": "mesh-auditor.dev/v1alpha1",
        "kind": "MeshPosture",
        "metadata": {"name": "bench"},
        "spec": {"scope": [{"namespace": ns} for ns in namespaces], "protectedServices": protected},
    }
    return documents, merge([("bench", PostureDocument.model_validate(rules))])


def _key(document: dict[str, Any]) -> ObjectKey:
    meta = document["metadata"]
    return str(document["kind"]), str(meta.get("namespace") or ""), str(meta["name"])


def _find(documents: list[dict[str, Any]], kind: str, namespace: str, name: str) -> dict[str, Any]:
    return next(d for d in documents if _key(d) == (kind, namespace, name))


def _events(documents: list[dict[str, Any]]) -> list[tuple[str, Callable[[], dict[str, Any] | None], ObjectKey]]:
    """(label, the object after the event or None when deleted, its key): one per kind of event."""

    def edited(kind: str, ns: str, name: str, edit: Callable[[dict[str, Any]], None]) -> Callable[[], dict[str, Any]]:
        def make() -> dict[str, Any]:
            document = copy.deepcopy(_find(documents, kind, ns, name))
            edit(document)
            return document

        return make

    def permissive(document: dict[str, Any]) -> None:
        document["spec"]["mtls"]["mode"] = "PERMISSIVE"

    def opt_out(document: dict[str, Any]) -> None:
        document["spec"]["template"]["metadata"]["labels"]["istio.io/dataplane-mode"] = "none"

    def new_image(document: dict[str, Any]) -> None:
        document["spec"]["template"]["spec"]["containers"][0]["image"] = "app:v2"

    def relabel(document: dict[str, Any]) -> None:
        document["metadata"].setdefault("labels", {})["tier"] = "edited"

    def wide_principal(document: dict[str, Any]) -> None:
        document["spec"]["rules"][0]["from"][0]["source"]["principals"].append("cluster.local/ns/ns-0001/sa/svc-00101")

    ns = "ns-0002"
    return [
        (
            "Deployment opts out of ambient",
            edited("Deployment", ns, "svc-00205", opt_out),
            ("Deployment", ns, "svc-00205"),
        ),
        ("Deployment image updated", edited("Deployment", ns, "svc-00205", new_image), ("Deployment", ns, "svc-00205")),
        ("Service relabelled", edited("Service", ns, "svc-00205", relabel), ("Service", ns, "svc-00205")),
        ("Service deleted", lambda: None, ("Service", ns, "svc-00206")),
        (
            "workload PeerAuthentication to PERMISSIVE",
            edited("PeerAuthentication", ns, "svc-00207", permissive),
            ("PeerAuthentication", ns, "svc-00207"),
        ),
        (
            "protected Service's Deployment opts out",
            edited("Deployment", ns, "svc-00200", opt_out),
            ("Deployment", ns, "svc-00200"),
        ),
        (
            "waypoint AuthorizationPolicy allows one more principal",
            edited("AuthorizationPolicy", ns, "svc-00200", wide_principal),
            ("AuthorizationPolicy", ns, "svc-00200"),
        ),
        (
            "root-namespace PeerAuthentication to PERMISSIVE",
            edited("PeerAuthentication", "istio-system", "default", permissive),
            ("PeerAuthentication", "istio-system", "default"),
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument(
        "--repeat",
        type=int,
        default=5,
        choices=range(1, 100),
        metavar="N",
        help="applications of each event (median CPU reported)",
    )
    parser.add_argument("--no-verify", action="store_true", help="skip the comparison with a full audit")
    args = parser.parse_args()
    gc.disable()
    documents, posture = generated(args.services)
    objects: Objects = {_key(d): decode_object(d, source="bench") for d in documents}
    started = time.process_time()
    audit = IncrementalAudit(objects, posture, {})
    load = os.getloadavg()[0]
    print(f"{args.services} Services, {len(objects)} objects, {len(audit.findings)} findings; load average {load:.1f}")
    print(f"initial full evaluation: {time.process_time() - started:.2f} s CPU\n")
    print(f"| event | CPU event -> verdicts (median of {args.repeat}) | re-evaluated | same as a full audit |")
    print("|---|---:|---|---|")
    for label, make, key in _events(documents):
        original = objects[key]
        after_doc = make()
        changed = decode_object(after_doc, source="bench") if after_doc is not None else ()
        times = []
        for _ in range(args.repeat):
            started = time.process_time()
            update = audit.apply([Change(key, original, changed)])
            times.append(time.process_time() - started)
            audit.apply([Change(key, changed, original)])  # back, for the next repetition
        audit.apply([Change(key, original, changed)])
        current = {**objects, key: changed} if changed else {k: v for k, v in objects.items() if k != key}
        same = "not checked" if args.no_verify else str(audit.findings == full_audit(current, posture, {})).lower()
        audit.apply([Change(key, changed, original)])
        what = (
            "everything"
            if update.everything
            else f"{len(update.namespaces)} namespace(s), {len(update.targets)} protected Service(s)"
        )
        print(f"| {label} | {statistics.median(times) * 1000:.1f} ms | {what} | {same} |")


if __name__ == "__main__":
    main()
