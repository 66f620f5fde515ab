"""Helpers for live-audit tests: apply a case to the real API server, audit it, clean it up."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from auditor.cli import main
from testrigs.devtools.controlplane import ControlPlaneError, KubeAPI


def audit(*argv: str) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    code = main(["check", *argv, "--output", "json"], stdout=out)
    return code, json.loads(out.getvalue())


def statuses(document: dict[str, Any]) -> dict[tuple[str, str], str]:
    return {(f["target"], f["check"]): f["status"] for f in document["findings"]}


_NOW = "2026-01-01T00:00:00Z"
READY_WAYPOINT_STATUS = {
    "addresses": [{"type": "IPAddress", "value": "10.96.100.10"}],
    "conditions": [
        {"type": t, "status": "True", "reason": t, "message": "", "lastTransitionTime": _NOW, "observedGeneration": 1}
        for t in ("Accepted", "Programmed")
    ],
}


class AppliedCase:
    """The objects of one manifest file, applied so that the cluster matches it exactly.

    Namespaces get exactly the file's labels (a previous case's labels must not linger); objects
    whose fixture gives a creationTimestamp are created one by one, oldest first, a second
    apart, so the server's timestamps keep their order; status blocks are written through the
    status subresource, as Istio would. Gateways without a status in the fixture get the one
    Istio writes for a ready waypoint: the Gateway API CRD defaults a new Gateway's conditions to
    ``Pending`` (no controller reconciled it), which the auditor rightly treats as "not ready"
    (semantics §2), and this control plane runs no Istio. With ``write_status=False`` (a
    control plane with istiod, ``istio_api``) no status is written: istiod writes it.
    """

    def __init__(self, kube: KubeAPI, manifests: Path, workdir: Path, *, write_status: bool = True) -> None:
        self.kube = kube
        # False where istiod runs against the server: then istiod writes every status.
        self.write_status = write_status
        self.documents = _as_kubectl_reads(kube, manifests)
        self.objects_file = workdir / "objects.yaml"

    def __enter__(self) -> AppliedCase:
        namespaces = [d for d in self.documents if d["kind"] == "Namespace"]
        objects = [d for d in self.documents if d["kind"] != "Namespace"]
        for namespace in namespaces:
            self._set_namespace(namespace)
        timed = sorted((d for d in objects if d["metadata"].get("creationTimestamp")), key=_created)
        untimed = [d for d in objects if not d["metadata"].get("creationTimestamp")]
        self.objects_file.write_text(yaml.safe_dump_all([_without_status(d) for d in objects]), encoding="utf-8")
        if untimed:
            self._apply(yaml.safe_dump_all([_without_status(d) for d in untimed]))
        for position, document in enumerate(timed):
            if position:
                time.sleep(1.1)  # creationTimestamp has one-second resolution
            self._apply(yaml.safe_dump(_without_status(document)))
        for document in objects if self.write_status else ():
            status = document.get("status") or (READY_WAYPOINT_STATUS if document["kind"] == "Gateway" else None)
            if status:
                self._write_status({**document, "status": status})
        return self

    def _apply(self, manifest: str) -> None:
        try:
            self.kube.apply_text(manifest)
        except ControlPlaneError as error:
            # Client-side apply reads an object and then creates it. Where istiod runs, its
            # waypoint deployment controller creates a Gateway's ServiceAccount and Deployment in
            # between (CI failure of kind5-waypoint-deployment: "serviceaccounts catalog-waypoint
            # already exists"). A second apply finds the object and patches it; only that race
            # is retried, and only once.
            if self.write_status or "(AlreadyExists)" not in str(error):
                raise
            self.kube.apply_text(manifest)

    def __exit__(self, *exc: object) -> None:
        self.kube.kubectl("delete", f"--filename={self.objects_file}", "--ignore-not-found", "--wait=false")

    def _set_namespace(self, document: dict[str, Any]) -> None:
        name = document["metadata"]["name"]
        labels = {**(document["metadata"].get("labels") or {}), "kubernetes.io/metadata.name": name}
        with self.kube.new_client() as api:
            core = client.CoreV1Api(api)
            try:
                namespace = core.read_namespace(name)
            except client.ApiException as error:
                if error.status != 404:
                    raise
                core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels)))
                return
            assert namespace.metadata is not None
            namespace.metadata.labels = labels  # replace, not merge: stale labels must go
            core.replace_namespace(name, namespace)

    def _write_status(self, document: dict[str, Any]) -> None:
        meta = document["metadata"]
        patch = json.dumps({"status": document["status"]})
        kind = {"Gateway": "gateways.gateway.networking.k8s.io", "Service": "services"}[document["kind"]]
        self.kube.kubectl(
            "patch",
            kind,
            meta["name"],
            f"--namespace={meta.get('namespace', 'default')}",
            "--subresource=status",
            "--type=merge",
            f"--patch={patch}",
        )


def _as_kubectl_reads(kube: KubeAPI, manifests: Path) -> list[dict[str, Any]]:
    """The file's objects as kubectl reads them (sigs.k8s.io/yaml: merge keys, YAML 1.1 scalars),
    not as PyYAML does, so that the live side of a parity test is the cluster's own reading."""
    printed = kube.kubectl("create", "--dry-run=client", "--validate=false", "--output=json", f"--filename={manifests}")
    decoder = json.JSONDecoder()
    documents: list[dict[str, Any]] = []
    position = 0
    while printed[position:].strip():  # one JSON object after another
        document, end = decoder.raw_decode(printed, printed.index("{", position))
        documents += document["items"] if document.get("kind") == "List" else [document]
        position = end
    return documents


def _created(document: dict[str, Any]) -> str:
    return str(document["metadata"]["creationTimestamp"])


def _without_status(document: dict[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in document["metadata"].items() if k != "creationTimestamp"}
    return {**{k: v for k, v in document.items() if k != "status"}, "metadata": meta}
