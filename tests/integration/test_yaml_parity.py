"""Differential test: the offline reader reads a manifest exactly as kubectl and the API server do.

Issue 9 kind 4. Hypothesis writes YAML text (plain YAML 1.1 scalars, keys that are not strings,
merge keys before and after explicit keys, anchors and aliases, duplicate keys) and the real
kubectl built by ``scripts/controlplane build`` reads the same file:

- conversion (``kubectl create --dry-run=client -o json --validate=false``): kubectl's YAML->JSON
  (sigs.k8s.io/yaml over goyaml v2) of a free-form payload equals ``load_documents``, and
  kubectl refuses exactly the files the reader refuses;
- admission (``kubectl create --dry-run=server -o json`` against the test API server with
  Istio's CRDs): for AuthorizationPolicy and PeerAuthentication fields the audit reads, the API
  server accepts exactly what ``read_manifests`` accepts, and stores what it decodes.

A failure prints the YAML text, kubectl's answer and the reader's.
"""

from __future__ import annotations

import io
import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes import client

from auditor.adapters.manifests.reader import read_manifests
from auditor.adapters.yaml_io import YamlSyntaxError, load_documents
from auditor.errors import InputError
from testrigs.devtools.controlplane import KubeAPI

pytestmark = pytest.mark.kube

# Plain scalars whose meaning differs between YAML 1.1, YAML 1.2, PyYAML and goyaml v2.
TRICKY = [
    "0x10", "0X1f", "010", "08", "09", "0o17", "0b11", "-0b11", "0b-11", "1_000", "_1", "+12",
    "-3", "1e3", "1.0", "3.5", ".5", "1.", "1e999", "0x", "9223372036854775807",
    "9223372036854775808", "18446744073709551615", "18446744073709551616", "-9223372036854775809",
    "y", "Y", "n", "N", "yes", "No", "on", "OFF", "true", "True", "tRUE", "~", "null", "Null",
    "2024-01-01", "2024-1-2", "2001-12-14t21:59:43.10-05:00", "2024-01-01 10:00:00", "12:30",
    "190:20:30", "1.2.3", "abc", ".inf", "-.Inf", ".nan", "'0x10'", '"yes"', "!!str 10",
    "!!float 1", "!!int 0x10", "!custom 7", "0.1", "1e6", "-0", "-0.0",
]  # fmt: skip
KEYS = ["a", "b", "c", "1", "0x10", "yes", "1.5", "1e6", "'1'", "'a'", "y", "on", "010", "2024-01-01"]


@st.composite
def flow_yaml(draw: st.DrawFn, anchors: list[tuple[str, bool]], depth: int = 0) -> str:
    """A flow-style YAML value; ``anchors`` are (name, is_mapping) defined before it."""
    choices = ["scalar", "scalar"]
    if depth < 3:
        choices += ["mapping", "sequence"]
    if anchors:
        choices.append("alias")
    kind = draw(st.sampled_from(choices))
    if kind == "scalar":
        return draw(st.sampled_from(TRICKY))
    if kind == "alias":
        return "*" + draw(st.sampled_from(anchors))[0]
    if kind == "sequence":
        items = draw(st.lists(flow_yaml(anchors, depth + 1), max_size=3))
        return "[" + ", ".join(items) + "]"
    pairs = []
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.integers(0, 5)) == 0:
            pairs.append("<<: " + draw(merge_source(anchors, depth)))
        else:
            pairs.append(f"{draw(st.sampled_from(KEYS))}: {draw(flow_yaml(anchors, depth + 1))}")
    return "{" + ", ".join(pairs) + "}"


@st.composite
def merged_mapping(draw: st.DrawFn, mappings: list[str]) -> str:
    """One merge source: an alias of an anchored mapping or an inline mapping."""
    alias: bool = draw(st.booleans())
    if mappings and alias:
        return "*" + draw(st.sampled_from(mappings))
    keys = draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=3))
    return "{" + ", ".join(f"{key}: {draw(st.sampled_from(TRICKY))}" for key in keys) + "}"


@st.composite
def merge_source(draw: st.DrawFn, anchors: list[tuple[str, bool]], depth: int) -> str:
    """The value of a << key: one mapping, or a list of them (the earlier one wins)."""
    mappings = [name for name, is_mapping in anchors if is_mapping]
    if draw(st.booleans()):
        return draw(merged_mapping(mappings))
    return "[" + ", ".join(draw(st.lists(merged_mapping(mappings), min_size=1, max_size=3))) + "]"


@st.composite
def configmap_text(draw: st.DrawFn) -> str:
    anchors: list[tuple[str, bool]] = []
    definitions = []
    for index in range(draw(st.integers(0, 2))):
        value = draw(flow_yaml(list(anchors), 1))
        definitions.append(f"&d{index} {value}")
        anchors.append((f"d{index}", value.startswith("{")))
    payload = draw(flow_yaml(anchors))
    defs = "defs: [" + ", ".join(definitions) + "]\n" if definitions else ""
    block = draw(st.booleans())  # the same payload in block style, once a mapping
    body = f"payload:\n  inner: {payload}\n" if block else f"payload: {payload}\n"
    return f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: parity\n{defs}{body}"


def _read(text: str) -> tuple[str | None, Any]:
    """The reader's refusal, or its one document."""
    try:
        [(_, document)] = list(load_documents(text, strict=False))
    except YamlSyntaxError as error:
        return error.message, None
    return None, document


def _kubectl(kube_api: KubeAPI, *args: str, manifest: str) -> tuple[int, Any, str]:
    result = subprocess.run(
        [str(kube_api.kubectl_path), f"--kubeconfig={kube_api.kubeconfig}", *args, "--filename=-"],
        input=manifest,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    printed = json.loads(result.stdout, parse_int=_json_int) if result.returncode == 0 else None
    return result.returncode, printed, result.stderr


def _json_int(text: str) -> int | float:
    """An integer as Kubernetes decodes JSON: a float64 past int64 (kubectl prints it without a fraction)."""
    number = int(text)
    return number if -(2**63) <= number < 2**63 else float(text)


@pytest.fixture(scope="module")
def parity_namespace(kube_api: KubeAPI) -> Iterator[str]:
    name = f"t-yaml-parity-{uuid.uuid4().hex[:8]}"
    with kube_api.new_client() as api:
        client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        kube_api.empty_namespace(name)


_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@_SETTINGS
@given(text=configmap_text())
def test_yaml_to_json_equals_kubectl(kube_api: KubeAPI, text: str) -> None:
    code, printed, stderr = _kubectl(
        kube_api, "create", "--dry-run=client", "--output=json", "--validate=false", manifest=text
    )
    refusal, document = _read(text)
    if refusal is not None and "at random" in refusal:
        return  # 1 and "1" in one mapping: kubectl's answer depends on Go's map order
    if refusal is not None:
        assert code != 0, f"the reader refused what kubectl read:\n{text}\nreader: {refusal}\nkubectl: {printed}"
        return
    assert code == 0, f"kubectl refused what the reader read:\n{text}\nkubectl: {stderr}\nreader: {document}"
    assert printed["payload"] == document["payload"], text
    assert printed.get("defs") == document.get("defs"), text


PRINCIPALS = ["cluster.local/ns/default/sa/ui", "'*'", '"*"', "*x", "0x10", "yes", "on", "1.5", "null", "~", "010", "2024-01-01"]  # fmt: skip
ENUMS = ["ALLOW", "DENY", "allow", "Allow", "deny", "AUDIT", "'ALLOW'", "ALLOW ", '""', "0", "true", "~"]
MODES = ["STRICT", "strict", "Strict", "PERMISSIVE", "permissive", "DISABLE", "UNSET", "on", "'STRICT'", '""', "~"]


@st.composite
def policy_text(draw: st.DrawFn, namespace: str) -> str:
    principals = draw(st.lists(st.sampled_from(PRINCIPALS), min_size=1, max_size=3))
    merged = draw(st.sampled_from(["", "before", "after"]))
    other = draw(st.sampled_from(PRINCIPALS))
    source = [f"principals: [{', '.join(principals)}]"]
    if merged == "before":
        source.insert(0, f"<<: {{principals: [{other}]}}")
    elif merged == "after":
        source.append(f"<<: {{principals: [{other}]}}")
    if draw(st.booleans()):
        source.append(f"namespaces: [{draw(st.sampled_from(PRINCIPALS))}]")
    action = draw(st.sampled_from(ENUMS))
    mode = draw(st.sampled_from(MODES))
    return (
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        f"metadata: {{name: parity, namespace: {namespace}}}\n"
        f"spec:\n  action: {action}\n  rules:\n  - from:\n    - source: {{{', '.join(source)}}}\n"
        "---\n"
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
        f"metadata: {{name: parity, namespace: {namespace}}}\n"
        f"spec:\n  mtls: {{mode: {mode}}}\n"
    )


@_SETTINGS
@given(data=st.data())
def test_admission_equals_the_offline_reader(
    kube_api: KubeAPI, parity_namespace: str, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    """The API server accepts exactly what the offline reader accepts, and stores what it reads."""
    text = data.draw(policy_text(parity_namespace))
    path = tmp_path_factory.mktemp("parity") / "policy.yaml"
    path.write_text(text, encoding="utf-8")
    results = [
        _kubectl(kube_api, "create", "--dry-run=server", "--output=json", manifest=document)
        for document in text.split("---\n")
    ]
    accepted = all(code == 0 for code, _, _ in results)
    try:
        snapshot = read_manifests([str(path)], io.StringIO()).snapshot
    except InputError as error:
        refusal = error.render()
        assert not accepted, f"the reader refused what the API server stored:\n{text}\nreader: {refusal}"
        return
    refusals = "\n".join(stderr for code, _, stderr in results if code != 0)
    assert accepted, f"the API server refused what the reader read:\n{text}\nserver: {refusals}"
    [(_, policy, _), (_, peer, _)] = results
    [decoded_policy] = snapshot.authorization_policies
    [decoded_peer] = snapshot.peer_authentications
    stored_source = policy["spec"]["rules"][0]["from"][0]["source"]
    [rule] = decoded_policy.rules
    [source] = rule.sources
    assert list(source.principals) == stored_source.get("principals", []), text
    assert list(source.namespaces) == stored_source.get("namespaces", []), text
    assert decoded_policy.action == policy["spec"].get("action", "ALLOW"), text
    stored_mode = peer["spec"].get("mtls", {}).get("mode") or "UNSET"
    assert (decoded_peer.mode or "UNSET") == stored_mode, text


def test_case_e_kubectl_sends_the_merged_principals(kube_api: KubeAPI, parity_namespace: str, tmp_path: Path) -> None:
    """Issue 9 case E, against the real server: the stored policy admits everyone, as the reader says."""
    text = (
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        f"metadata: {{name: case-e, namespace: {parity_namespace}}}\n"
        "spec:\n  rules:\n  - from:\n    - source:\n"
        "        principals: [cluster.local/ns/default/sa/ui]\n"
        '        <<: {principals: ["*"]}\n'
    )
    code, stored, stderr = _kubectl(kube_api, "create", "--dry-run=server", "--output=json", manifest=text)
    assert code == 0, stderr
    assert stored["spec"]["rules"][0]["from"][0]["source"]["principals"] == ["*"]
    path = tmp_path / "case-e.yaml"
    path.write_text(text, encoding="utf-8")
    [policy] = read_manifests([str(path)], io.StringIO()).snapshot.authorization_policies
    assert policy.rules[0].sources[0].principals == ("*",)
