"""Config against traffic: ``scripts/lab verify --manifests M --rules R`` on the real-ztunnel node (#12).

Role: the static audit decides, for each protected Service, a list of witnesses (caller, request,
expected allowed/denied; ``auditor.core.checks.witnessplan``). This module learns them through a
process boundary (``python -m testrigs.witnessdump``: the lab never imports the auditor it
checks), puts the same manifests on the real node (istiod + the real ztunnel + the lab's Envoy
waypoint), sends every witness as real traffic from a lab pod running as the caller's identity,
and reports per promise and per witness where configuration and traffic disagree.

Callers. An ambient identity ``cluster.local/ns/N/sa/S`` sends from a pod of the input with that
ServiceAccount that ztunnel holds, or else from a bare Pod ``malab-verify-<hash>`` the node
creates in N (Namespace and ServiceAccount created when missing; the pod is labelled
``istio.io/dataplane-mode: ambient``), so istiod issues it a certificate for that identity. The
plaintext client (``pod outside the mesh``) is a pod in the non-ambient namespace
``malab-verify-outside`` and sends to each backend pod's address and target port (the real node has
no kube-proxy stand-in for uncaptured pods). Not expressible, and so reported as ``skipped`` with
the reason: sidecar, gateway, waypoint and host-network clients (the node has none), identities of
another trust domain than the node's ``cluster.local``, names Kubernetes would refuse.

Outcomes of one request (``curl -i`` in the caller's pod): ``allowed`` when the lab app answered
(its ``x-lab-pod`` header); ``denied`` for ``403 RBAC: access denied`` (the waypoint), a connection
closed without a reply (curl exit 52/56: ztunnel), or the waypoint's 503 whose reset reason is
``connection termination`` (the destination's ztunnel refused the waypoint's tunnel, the
walkthrough's observation); anything else (timeout, DNS, connection refused, another 503) is
``inconclusive``. A denial counts only when, in the same run, the control (the first allowed
identity's request with the required headers, or any witness that got through) on the same
Service and port got through; without it the denial is inconclusive. A disagreement is sent again until it has held for
``CONFIRM_S`` seconds (istiod's push and the waypoint's reload are eventually consistent).

Exit codes: 0 every expressible witness agrees; 1 at least one disagreement; 2 bad input (the
auditor's message, nothing applied); 3 no disagreement, but an observation is inconclusive.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from testrigs.lab import procs
from testrigs.lab.realnode import REDIRECTION, REPO_ROOT, RealNode

TRUST_DOMAIN = "cluster.local"  # istiod's default on the node
OUTSIDE_NAMESPACE = "malab-verify-outside"
POD_PREFIX = "malab-verify-"
CURL_TIMEOUT_S = 5
SETTLE_S = 3.0
CONFIRM_S = 12.0
EXIT_AGREE, EXIT_DISAGREE, EXIT_BAD_INPUT, EXIT_INCONCLUSIVE = 0, 1, 2, 3
AMBIENT, OUTSIDE = "ambient pod", "pod outside the mesh"
PRUNED_KINDS = ("authorizationpolicies.security.istio.io", "peerauthentications.security.istio.io")
_KIND_OF_RESOURCE = {
    "authorizationpolicies.security.istio.io": "AuthorizationPolicy",
    "peerauthentications.security.istio.io": "PeerAuthentication",
}
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_PRINCIPAL = re.compile(r"^([^/]+)/ns/([^/]+)/sa/([^/]+)$")
RBAC_DENIED = "RBAC: access denied"
TUNNEL_REFUSED = "reset reason: connection termination"


class VerifyInputError(ValueError):
    """The input the static audit refused (exit 2); the message is the auditor's."""


@dataclass
class Observation:
    """What one request met: ``outcome`` (allowed, denied, inconclusive) and ``detail`` (status, exit code)."""

    outcome: str
    detail: str


_NO_CONTROL = Observation("inconclusive", "no control")


@dataclass
class Result:
    """One witness and its verdict: ``agree``, ``disagree``, ``inconclusive``, ``skipped`` or ``model-unknown``."""

    witness: dict[str, Any]
    verdict: str
    observed: str = ""
    detail: str = ""
    sender: str = ""

    def as_dict(self) -> dict[str, Any]:
        w = self.witness
        return {
            "promise": w["promise"],
            "check": w["check"],
            "target": w["target"],
            "caller": w["caller"],
            "kind": w["kind"],
            "request": {"method": w["method"], "path": w["path"], "port": w["port"], "headers": sorted(w["headers"])},
            "label": w["label"],
            "expected": w["expected"],
            "observed": self.observed,
            "verdict": self.verdict,
            "detail": self.detail,
            "sender": self.sender,
            "model": w["reason"],
        }


@dataclass
class Report:
    """The run: every ``Result``, the static findings, and timings (seconds)."""

    results: list[Result]
    findings: list[dict[str, Any]]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        verdicts = {r.verdict for r in self.results}
        if "disagree" in verdicts:
            return EXIT_DISAGREE
        return EXIT_INCONCLUSIVE if "inconclusive" in verdicts else EXIT_AGREE

    def promises(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for result in self.results:
            key = f"{result.witness['target']} {result.witness['check']}"
            bucket = counts.setdefault(
                key, {"agree": 0, "disagree": 0, "inconclusive": 0, "skipped": 0, "model-unknown": 0}
            )
            bucket[result.verdict] += 1
        return counts

    def as_dict(self) -> dict[str, Any]:
        return {
            "exit_code": self.exit_code,
            "witnesses": len(self.results),
            "checked": sum(r.verdict in ("agree", "disagree") for r in self.results),
            "disagreements": sum(r.verdict == "disagree" for r in self.results),
            "promises": self.promises(),
            "results": [r.as_dict() for r in self.results],
            "timings_s": {k: round(v, 2) for k, v in self.timings.items()},
        }

    def text(self) -> str:
        lines = []
        for key, counts in sorted(self.promises().items()):
            shown = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
            lines.append(f"{key}: {shown}")
        for result in self.results:
            if result.verdict in ("disagree", "inconclusive"):
                w = result.witness
                lines.append(
                    f"  {result.verdict.upper()}: {w['caller_label']} -> {w['target']} {w['method']} {w['path']} "
                    f"port {w['port']} ({w['label']}): config says {w['expected']}, traffic {result.observed or '?'}"
                    f" [{result.detail}]"
                )
        summary = self.as_dict()
        lines.append(
            f"{summary['witnesses']} witnesses, {summary['checked']} checked against traffic, "
            f"{summary['disagreements']} disagreement(s)"
        )
        return "\n".join(lines)


# --- the static side, through a process boundary ------------------------------------------------


def static_witnesses(manifests: Sequence[Path], rules: Sequence[Path]) -> dict[str, Any]:
    """Run ``python -m testrigs.witnessdump``: ``{"findings": [...], "witnesses": [...]}``.

    Raises VerifyInputError on its exit 2 (bad input), RuntimeError on any other failure."""
    argv = [sys.executable, "-m", "testrigs.witnessdump"]
    argv += [f"--manifests={m}" for m in manifests] + [f"--rules={r}" for r in rules]
    result = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=REPO_ROOT, timeout=300)
    if result.returncode == EXIT_BAD_INPUT:
        raise VerifyInputError(result.stderr.strip().removeprefix("auditor: error: "))
    if result.returncode != 0:
        raise RuntimeError(f"the static audit failed (exit {result.returncode}): {result.stderr.strip()[-2000:]}")
    document: dict[str, Any] = json.loads(result.stdout)
    return document


# --- the node -----------------------------------------------------------------------------------


def manifest_files(manifests: Sequence[Path]) -> list[Path]:
    return [f for path in manifests for f in (sorted(path.rglob("*.yaml")) if path.is_dir() else [path])]


def apply(node: RealNode, manifests: Sequence[Path]) -> None:
    """Apply the manifests and delete every AuthorizationPolicy and PeerAuthentication they do not hold."""
    files = manifest_files(manifests)
    text = "\n---\n".join(f.read_text(encoding="utf-8") for f in files)
    wanted = set()
    for document in yaml.safe_load_all(text):
        if isinstance(document, dict) and document.get("kind") in _KIND_OF_RESOURCE.values():
            meta = document.get("metadata") or {}
            wanted.add((document["kind"], meta.get("namespace") or "default", meta.get("name")))
    for resource in PRUNED_KINDS:
        items = json.loads(node.kubectl("get", resource, "--all-namespaces", "--output=json"))["items"]
        for item in items:
            meta = item["metadata"]
            if (_KIND_OF_RESOURCE[resource], meta["namespace"], meta["name"]) not in wanted:
                node.kubectl("delete", resource, meta["name"], f"--namespace={meta['namespace']}", "--wait=true")
    node.kubectl("apply", "-f", "-", stdin=text)


@dataclass(frozen=True)
class Sender:
    """Where a caller's requests leave from: a pod key on the node, or why the caller cannot be expressed."""

    pod: str = ""
    skipped: str = ""


def plan_senders(node: RealNode, witnesses: Iterable[dict[str, Any]]) -> dict[tuple[str | None, str], Sender]:
    """A sender for every (caller, kind): an existing captured pod of that identity, or a pod created for it."""
    pods = json.loads(node.kubectl("get", "pods", "--all-namespaces", "--output=json"))["items"]
    namespaces = {
        n["metadata"]["name"] for n in json.loads(node.kubectl("get", "namespaces", "--output=json"))["items"]
    }
    senders: dict[tuple[str | None, str], Sender] = {}
    created: list[str] = []
    for witness in witnesses:
        key = (witness["caller"], witness["kind"])
        if key in senders:
            continue
        if witness["kind"] == OUTSIDE:
            senders[key] = Sender(_ensure_pod(node, OUTSIDE_NAMESPACE, "default", ambient=False, namespaces=namespaces))
            created.append(senders[key].pod)
            continue
        if witness["kind"] != AMBIENT:
            senders[key] = Sender(skipped=f"the real node has no {witness['kind']} client")
            continue
        match = _PRINCIPAL.match(witness["caller"] or "")
        if match is None or match.group(1) != TRUST_DOMAIN:
            senders[key] = Sender(skipped=f"not an identity of the node's trust domain {TRUST_DOMAIN}")
            continue
        namespace, account = match.group(2), match.group(3)
        if not (_DNS_LABEL.match(namespace) and _DNS_LABEL.match(account)):
            senders[key] = Sender(skipped="the namespace or ServiceAccount is not a name Kubernetes accepts")
            continue
        existing = next(
            (
                f"{p['metadata']['namespace']}/{p['metadata']['name']}"
                for p in pods
                if p["metadata"]["namespace"] == namespace
                and (p["spec"].get("serviceAccountName") or "default") == account
                and (p["metadata"].get("annotations") or {}).get(REDIRECTION) == "enabled"
                and not p["spec"].get("hostNetwork")
            ),
            None,
        )
        if existing is None:
            existing = _ensure_pod(node, namespace, account, ambient=True, namespaces=namespaces)
            created.append(existing)
        senders[key] = Sender(existing)
    if created:
        _wait_pods(node, set(created), ambient={s.pod for k, s in senders.items() if k[1] == AMBIENT and s.pod})
    return senders


def _ensure_pod(node: RealNode, namespace: str, account: str, *, ambient: bool, namespaces: set[str]) -> str:
    name = POD_PREFIX + hashlib.sha256(f"{namespace}/{account}".encode()).hexdigest()[:10]
    documents: list[dict[str, Any]] = []
    if namespace not in namespaces:
        labels = {"istio.io/dataplane-mode": "ambient"} if ambient else {}
        documents.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": labels}})
        namespaces.add(namespace)
    documents.append(
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account, "namespace": namespace}}
    )
    documents.append(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {"istio.io/dataplane-mode": "ambient" if ambient else "none", "malab-verify": "sender"},
            },
            "spec": {
                "serviceAccountName": account,
                "containers": [{"name": "sender", "image": "curlimages/curl:8.19.0", "command": ["sleep", "infinity"]}],
            },
        }
    )
    node.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(documents))
    return f"{namespace}/{name}"


def _wait_pods(node: RealNode, keys: set[str], *, ambient: set[str], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if set(node.sync_pods()) >= keys:
            break
        time.sleep(0.5)
    else:
        raise RuntimeError(f"the sender pods {sorted(keys - set(node.sync_pods()))} got no address")
    node.wait_handed(ambient & keys, timeout=max(deadline - time.monotonic(), 10.0))


# --- traffic ------------------------------------------------------------------------------------


def send(node: RealNode, pod: str, url: str, method: str, headers: dict[str, str], *, host: str = "") -> Observation:
    """One request with ``curl -i`` in the pod; header values go on stdin (never on a command line)."""
    record = node.load()
    if record is None or pod not in record.pods:
        return Observation("inconclusive", f"no pod {pod} on the node")
    lines = [f"{k}: {v}" if v else f"{k};" for k, v in headers.items()]
    if host:
        lines.append(f"host: {host}")
    argv = [procs.IP, "netns", "exec", record.pods[pod]["netns"], "curl", "-s", "-i", "--max-time", str(CURL_TIMEOUT_S)]
    argv += ["-X", method, "-H", "@-", url]
    try:
        result = subprocess.run(
            argv,
            input="\n".join(lines) + "\n",
            capture_output=True,
            text=True,
            check=False,
            timeout=CURL_TIMEOUT_S + 10,
        )
    except subprocess.TimeoutExpired:
        return Observation("inconclusive", "curl did not return")
    return classify(result.returncode, result.stdout)


def classify(exit_code: int, output: str) -> Observation:
    """``curl -s -i``'s exit code and output as an outcome (see the module docstring)."""
    if exit_code in (52, 56):
        return Observation("denied", f"curl exit {exit_code}: connection closed without a reply")
    if exit_code != 0:
        return Observation("inconclusive", f"curl exit {exit_code}")
    head, _, body = output.replace("\r\n", "\n").partition("\n\n")
    status_line = head.split("\n", 1)[0]
    status = status_line.split(" ")[1] if status_line.startswith("HTTP/") and " " in status_line else "?"
    block = head
    lab_app = any(line.lower().startswith("x-lab-pod:") for line in block.split("\n"))
    if lab_app:
        return Observation("allowed", f"HTTP {status} from the lab app")
    if status == "403" and body.strip() == RBAC_DENIED:
        return Observation("denied", f"HTTP 403 {RBAC_DENIED}")
    if status == "503" and TUNNEL_REFUSED in body:
        return Observation("denied", f"HTTP 503 {body.strip()[:120]}")
    return Observation("inconclusive", f"HTTP {status} not from the app: {body.strip()[:120]}")


def _backends(node: RealNode, target: str, port: int) -> list[tuple[str, int]]:
    """(pod IP, target port) of every pod behind the Service (the plaintext client's destinations)."""
    namespace, name = target.split("/", 1)
    service = json.loads(node.kubectl("get", "service", name, f"--namespace={namespace}", "--output=json"))
    selector = service["spec"].get("selector") or {}
    entry = next((p for p in service["spec"].get("ports") or [] if p["port"] == port), None)
    if entry is None or not selector:
        return []
    pods = json.loads(node.kubectl("get", "pods", f"--namespace={namespace}", "--output=json"))["items"]
    found = []
    for pod in pods:
        labels = pod["metadata"].get("labels") or {}
        address = (pod.get("status") or {}).get("podIP")
        if not address or any(labels.get(k) != v for k, v in selector.items()):
            continue
        target_port = entry.get("targetPort", port)
        if isinstance(target_port, str):
            named = [p for c in pod["spec"]["containers"] for p in c.get("ports") or [] if p.get("name") == target_port]
            target_port = named[0]["containerPort"] if named else port
        found.append((address, int(target_port)))
    return found


def observe(node: RealNode, witness: dict[str, Any], sender: str) -> Observation:
    """Send the witness once: Service-addressed for an in-mesh caller, to every backend for plaintext."""
    namespace, name = witness["target"].split("/", 1)
    if witness["kind"] == OUTSIDE:
        observations = [
            send(node, sender, f"http://{ip}:{p}{witness['path']}", witness["method"], witness["headers"], host=name)
            for ip, p in _backends(node, witness["target"], witness["port"])
        ]
        if not observations:
            return Observation("inconclusive", "no backend pod with an address")
        outcomes = {o.outcome for o in observations}
        if len(outcomes) == 1:
            return observations[0]
        return Observation("inconclusive", "backends differ: " + "; ".join(o.detail for o in observations))
    url = f"http://{name}.{namespace}:{witness['port']}{witness['path']}"
    return send(node, sender, url, witness["method"], witness["headers"])


def run(node: RealNode, document: dict[str, Any]) -> Report:
    """Send every witness of ``document`` (``static_witnesses``) on the node that holds the manifests."""
    started = time.monotonic()
    witnesses: list[dict[str, Any]] = document["witnesses"]
    senders = plan_senders(node, witnesses)
    senders_s = time.monotonic() - started
    time.sleep(SETTLE_S)  # istiod's push of new identities and policies to ztunnel
    controls = _controls(node, witnesses, senders)
    observed: list[tuple[dict[str, Any], Sender, Observation | None]] = []
    for witness in witnesses:
        sender = senders[(witness["caller"], witness["kind"])]
        observed.append((witness, sender, None if sender.skipped else _confirmed(node, witness, sender.pod)))
    # Any request that got through on a Service port in this run proves that path, like the control.
    for witness, _, observation in observed:
        key = (witness["target"], witness["port"])
        if (
            observation is not None
            and observation.outcome == "allowed"
            and controls.get(key, _NO_CONTROL).outcome != "allowed"
        ):
            controls[key] = observation
    results = [
        Result(witness, "skipped", detail=sender.skipped)
        if observation is None
        else _judge(witness, observation, sender.pod, controls)
        for witness, sender, observation in observed
    ]
    timings = {"senders": senders_s, "total": time.monotonic() - started}
    return Report(results, document["findings"], timings)


def _controls(
    node: RealNode, witnesses: list[dict[str, Any]], senders: dict[tuple[str | None, str], Sender]
) -> dict[tuple[str, int], Observation]:
    """Per (target, Service port): the first allowed identity's request with the required headers."""
    controls: dict[tuple[str, int], Observation] = {}
    allowed = {
        w["target"]: w
        for w in witnesses
        if w["check"] == "principal-allowlist.allowed-admitted"
        and w["kind"] == AMBIENT
        and not senders[(w["caller"], w["kind"])].skipped
    }
    for witness in witnesses:
        key = (witness["target"], witness["port"])
        base = allowed.get(witness["target"])
        if key in controls or base is None:
            continue
        control = {**base, "port": witness["port"]}
        deadline = time.monotonic() + CONFIRM_S
        observation = observe(node, control, senders[(base["caller"], base["kind"])].pod)
        while observation.outcome != "allowed" and time.monotonic() < deadline:
            time.sleep(1.0)
            observation = observe(node, control, senders[(base["caller"], base["kind"])].pod)
        controls[key] = observation
    return controls


def _confirmed(node: RealNode, witness: dict[str, Any], sender: str) -> Observation:
    """The observation; one that disagrees with the model is re-sent until it held for ``CONFIRM_S``."""
    observation = observe(node, witness, sender)
    deadline = time.monotonic() + CONFIRM_S
    decided = witness["expected"] in {"allowed", "denied"}  # the model's "unknown" is not compared
    while decided and observation.outcome != witness["expected"] and time.monotonic() < deadline:
        time.sleep(1.0)
        observation = observe(node, witness, sender)
    return observation


def _judge(
    witness: dict[str, Any], observation: Observation, sender: str, controls: dict[tuple[str, int], Observation]
) -> Result:
    outcome, detail = observation.outcome, observation.detail
    if outcome == "denied":
        control = controls.get((witness["target"], witness["port"]))
        if control is None or control.outcome != "allowed":
            why = control.detail if control else "no allowed identity to send it"
            return Result(witness, "inconclusive", "denied", f"{detail}; no successful control ({why})", sender)
    if outcome == "inconclusive":
        return Result(witness, "inconclusive", outcome, detail, sender)
    if witness["expected"] == "unknown":
        return Result(witness, "model-unknown", outcome, detail, sender)
    verdict = "agree" if outcome == witness["expected"] else "disagree"
    return Result(witness, verdict, outcome, detail, sender)


def verify(state_dir: Path, manifests: Sequence[Path], rules: Sequence[Path], *, keep: bool = False) -> Report:
    """The whole command: static witnesses (VerifyInputError on bad input, before anything starts), the node
    (reused when one runs in ``state_dir``, else brought up and, unless ``keep``, taken down), traffic."""
    started = time.monotonic()
    document = static_witnesses(manifests, rules)
    static_s = time.monotonic() - started
    node = RealNode(state_dir)
    record = node.load()
    reuse = record is not None and node.ztunnel_ready(record)
    up_started = time.monotonic()
    try:
        if not reuse:
            node.up()
        apply(node, manifests)
        node.settle()
        up_s = time.monotonic() - up_started
        report = run(node, document)
    finally:
        if not reuse and not keep:
            node.down()
    report.timings.update({"static": static_s, "node": up_s, "verify": time.monotonic() - started})
    return report
