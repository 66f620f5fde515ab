"""Property tests: whatever the input, the parsers either succeed or raise the documented error."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditor.adapters.manifests.reader import read_manifests
from auditor.adapters.rules.loader import load_rules
from auditor.core.decode import DecodeError, decode_object
from auditor.errors import InputError

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 70000), st.text(max_size=12))
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
_kinds = st.sampled_from(
    [
        "Service",
        "Pod",
        "Deployment",
        "CronJob",
        "PeerAuthentication",
        "AuthorizationPolicy",
        "Gateway",
        "GatewayClass",
        "HTTPRoute",
        "ServiceEntry",
        "List",
        "Unknown",
    ]
)
_api_versions = st.sampled_from(
    [
        "v1",
        "apps/v1",
        "batch/v1",
        "security.istio.io/v1",
        "gateway.networking.k8s.io/v1",
        "networking.istio.io/v1",
    ]
)


@st.composite
def _objects(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {"apiVersion": draw(_api_versions), "kind": draw(_kinds)}
    body["metadata"] = draw(
        st.one_of(
            _json,
            st.fixed_dictionaries(
                {"name": st.text(min_size=1, max_size=8)},
                optional={"labels": _json, "namespace": _scalars},
            ),
        )
    )
    body["spec"] = draw(_json)
    if draw(st.booleans()):
        body["items"] = draw(st.lists(_json, max_size=2))
    return body


@given(_objects())
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_decode_object_raises_only_decode_error(body: dict[str, Any]) -> None:
    """Any Kubernetes-shaped dict decodes or raises DecodeError with a field and a fix."""
    try:
        decode_object(body, source="fuzz")
    except DecodeError as error:
        assert error.field
        assert error.fix


@given(st.text(max_size=200))
@settings(max_examples=300)
def test_manifest_reader_raises_only_input_error_on_arbitrary_text(text: str) -> None:
    """Arbitrary text on stdin is either read or refused with an InputError naming <stdin>."""
    try:
        read_manifests(["-"], io.StringIO(text))
    except InputError as error:
        assert error.source == "<stdin>"


@given(_json)
@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_rules_loader_raises_only_input_error(tmp_path_factory: Any, document: Any) -> None:
    """Any YAML value as a rules file is loaded or refused with an InputError naming the file."""
    path: Path = tmp_path_factory.mktemp("rules") / "rules.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    try:
        load_rules([str(path)])
    except InputError as error:
        assert error.source == str(path)
