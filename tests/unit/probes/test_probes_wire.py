"""The wire schema in ``probes.wire``: what plans parse, what they are refused for, and results.

The hypothesis tests feed arbitrary JSON (and arbitrary text) to ``parse_plan``: it either
returns a plan or raises ``PlanError``, never anything else.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import probes.wire
from probes.wire import (
    SCHEMA_VERSION,
    CompactResult,
    CompactRunResult,
    ErrorInfo,
    Evidence,
    Outcome,
    PlanError,
    ProbePlan,
    ProbeResult,
    ResultError,
    RunResult,
    parse_plan,
    parse_result,
)

URL = "http://catalog.default.svc.cluster.local/catalog/tags"


def plan_json(**overrides: Any) -> str:
    request: dict[str, Any] = {"id": "r1", "url": URL}
    request.update(overrides.pop("request", {}))
    return json.dumps({"run_id": "run-1", "requests": [request], **overrides})


def test_public_surface_is_pinned() -> None:
    """The auditor imports these names; changing them is a schema change."""
    assert sorted(probes.wire.__all__) == sorted(
        [
            "HEADER_ENV_PREFIX",
            "SCHEMA_VERSION",
            "CompactResult",
            "CompactRunResult",
            "ErrorInfo",
            "Evidence",
            "Outcome",
            "PlanError",
            "ProbePlan",
            "ProbeRequest",
            "ProbeResult",
            "ResultError",
            "RunResult",
            "parse_plan",
            "parse_result",
            "with_header_values",
        ]
    )
    assert SCHEMA_VERSION == 1


def test_outcome_spellings_are_the_contract() -> None:
    """Outcome values are spelled exactly as the other tools expect."""
    assert [o.value for o in Outcome] == [
        "allowed",
        "l7-denied",
        "app-denied",
        "l4-denied",
        "refused",
        "timeout",
        "dns-failure",
        "upstream-error",
        "other",
    ]


def test_minimal_plan_gets_documented_defaults() -> None:
    """Only run_id, id and url are required; method, headers and timeout have defaults."""
    plan = parse_plan(plan_json())

    (request,) = plan.requests
    assert (plan.schema_version, plan.run_id, plan.marker_header, plan.concurrency) == (
        1,
        "run-1",
        None,
        None,
    )
    assert (request.method, request.headers, request.timeout_s) == ("GET", {}, 3.0)


def test_full_plan_parses_every_field() -> None:
    """Every documented field is read, and header names are lower-cased for lookups."""
    plan = parse_plan(
        plan_json(
            schema_version=1,
            marker_header="X-Waypoint",
            concurrency=4,
            request={
                "method": "POST",
                "headers": {"x-auth-token": "internal-retail-token"},
                "timeout_s": 0.5,
                "marker_header": "X-Other",
            },
        )
    )

    (request,) = plan.requests
    assert (plan.marker_header, plan.concurrency) == ("x-waypoint", 4)
    assert (request.method, request.timeout_s, request.marker_header) == ("POST", 0.5, "x-other")
    assert request.headers == {"x-auth-token": "internal-retail-token"}


def test_request_marker_header_overrides_the_plan() -> None:
    """A request's own marker header wins over the plan's."""
    plan = parse_plan(
        json.dumps(
            {
                "run_id": "r",
                "marker_header": "x-plan",
                "requests": [
                    {"id": "own", "url": URL, "marker_header": "x-own"},
                    {"id": "inherits", "url": URL},
                ],
            }
        )
    )

    assert [plan.marker_for(r) for r in plan.requests] == ["x-own", "x-plan"]


@pytest.mark.parametrize(
    ("document", "named"),
    [
        pytest.param(json.dumps({"requests": []}), "run_id", id="missing-run-id"),
        pytest.param(json.dumps({"run_id": "r"}), "requests", id="missing-requests"),
        pytest.param(plan_json(schema_version=2), "schema_version", id="future-schema"),
        pytest.param(plan_json(concurrency=0), "concurrency", id="concurrency-zero"),
        pytest.param(plan_json(concurrency=257), "concurrency", id="concurrency-too-big"),
        pytest.param(plan_json(concurrency=True), "concurrency", id="concurrency-bool"),
        pytest.param(plan_json(concurency=4), "concurency", id="typo-key"),
        pytest.param(plan_json(marker_header="x marker"), "marker_header", id="marker-not-token"),
        pytest.param(plan_json(run_id=""), "run_id", id="empty-run-id"),
        pytest.param(plan_json(run_id="r" * 129), "run_id", id="long-run-id"),
        pytest.param(plan_json(request={"id": ""}), "requests.0.id", id="empty-id"),
        pytest.param(plan_json(request={"url": "ftp://x/"}), "requests.0.url", id="ftp"),
        pytest.param(plan_json(request={"url": "http:///path"}), "requests.0.url", id="no-host"),
        pytest.param(plan_json(request={"url": "http://x:0/"}), "requests.0.url", id="port-0"),
        pytest.param(plan_json(request={"url": "http://x:99999/"}), "requests.0.url", id="port"),
        pytest.param(plan_json(request={"url": "http://[::1/"}), "requests.0.url", id="ipv6"),
        pytest.param(plan_json(request={"url": "http://x/a b"}), "requests.0.url", id="space"),
        pytest.param(plan_json(request={"method": "get"}), "requests.0.method", id="lower-method"),
        pytest.param(plan_json(request={"timeout_s": 0}), "requests.0.timeout_s", id="timeout-0"),
        pytest.param(plan_json(request={"timeout_s": 301}), "requests.0.timeout_s", id="timeout"),
        pytest.param(plan_json(request={"timeout_s": "3"}), "requests.0.timeout_s", id="t-str"),
        pytest.param(plan_json(request={"headers": {"bad name": "v"}}), "requests.0.headers", id="hdr-name"),
        pytest.param(
            plan_json(request={"headers": {"x-a": "v\r\nx-b: injected"}}),
            "requests.0.headers",
            id="header-crlf",
        ),
        pytest.param(
            plan_json(request={"headers": {"x-a": "caf\u00e9"}}),
            "requests.0.headers",
            id="hdr-ascii",
        ),
        pytest.param(plan_json(request={"extra": 1}), "requests.0.extra", id="request-typo"),
        pytest.param("{", "Invalid JSON", id="not-json"),
        pytest.param("[]", "(document)", id="not-an-object"),
    ],
)
def test_invalid_plan_raises_plan_error_naming_the_field(document: str, named: str) -> None:
    """Each schema violation is refused with a message that names where it is."""
    with pytest.raises(PlanError, match=named.replace("(", r"\(").replace(")", r"\)")):
        parse_plan(document)


def test_duplicate_request_ids_are_refused() -> None:
    """Results are keyed by id, so two requests may not share one."""
    document = json.dumps({"run_id": "r", "requests": [{"id": "a", "url": URL}] * 2})

    with pytest.raises(PlanError, match=r"requests: .*duplicate id 'a'"):
        parse_plan(document)


def test_plan_error_is_a_value_error() -> None:
    """Callers that only know ValueError still catch a bad plan."""
    assert issubclass(PlanError, ValueError)
    assert issubclass(ResultError, ValueError)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=30,
)
field_values = st.one_of(json_values, st.just(URL), st.just("GET"), st.floats(0.01, 10))
plan_like = st.fixed_dictionaries(
    {"run_id": json_values | st.text(min_size=1, max_size=5)},
    optional={
        "schema_version": st.sampled_from([1, 2, "1", None]),
        "marker_header": field_values,
        "concurrency": st.integers(-2, 300) | json_values,
        "requests": st.lists(
            st.fixed_dictionaries(
                {"id": st.text(max_size=4) | json_values, "url": field_values},
                optional={
                    "method": field_values,
                    "headers": st.dictionaries(st.text(max_size=5), st.text(max_size=5)) | json_values,
                    "timeout_s": field_values,
                },
            ),
            max_size=4,
        ),
    },
)


def assert_parses_or_plan_error(document: str | bytes) -> None:
    try:
        plan = parse_plan(document)
    except PlanError:
        return  # the documented failure
    assert isinstance(plan, ProbePlan)


@settings(database=None, deadline=None, max_examples=150)
@given(json_values)
def test_arbitrary_json_parses_or_raises_plan_error(value: Any) -> None:
    """Any JSON document gives a plan or a PlanError, never another exception."""
    assert_parses_or_plan_error(json.dumps(value))


@settings(database=None, deadline=None, max_examples=150)
@given(plan_like)
def test_plan_shaped_json_parses_or_raises_plan_error(value: dict[str, Any]) -> None:
    """Documents close to a plan reach the field validators and still never crash them."""
    assert_parses_or_plan_error(json.dumps(value))


@settings(database=None, deadline=None, max_examples=200)
@given(st.binary() | st.text())
def test_arbitrary_bytes_parse_or_raise_plan_error(data: bytes | str) -> None:
    """Bytes that are not JSON, or not UTF-8, give a PlanError too."""
    assert_parses_or_plan_error(data)


def sample_result() -> RunResult:
    evidence = Evidence(
        status=403,
        connect_ms=0.8,
        first_byte_ms=2.1,
        total_ms=2.4,
        headers={"server": "istio-envoy"},
        body_prefix="RBAC: access denied",
    )
    failed = Evidence(
        total_ms=1.0,
        error=ErrorInfo(type="ReadError", message="", chain=("ConnectionResetError: reset",)),
    )
    return RunResult(
        run_id="run-1",
        results=(
            ProbeResult(id="a", outcome=Outcome.L7_DENIED, evidence=evidence),
            ProbeResult(id="b", outcome=Outcome.L4_DENIED, evidence=failed),
        ),
    )


def test_full_result_round_trips() -> None:
    """What the probe prints is what the auditor parses, with the documented keys."""
    result = sample_result()
    text = result.model_dump_json()

    assert parse_result(text) == result
    document = json.loads(text)
    assert list(document) == ["schema_version", "run_id", "results"]
    assert list(document["results"][0]["evidence"]) == [
        "status",
        "connect_ms",
        "first_byte_ms",
        "total_ms",
        "headers",
        "body_prefix",
        "error",
    ]


def test_compact_result_round_trips() -> None:
    """The termination-message form parses as CompactRunResult."""
    compact = CompactRunResult(
        run_id="run-1",
        truncated=True,
        complete=False,
        results=(CompactResult(id="a", outcome=Outcome.REFUSED, status=None),),
    )

    assert parse_result(compact.model_dump_json()) == compact


def test_result_ignores_unknown_evidence_keys() -> None:
    """A newer probe may add evidence; an older auditor still reads the result."""
    document = json.loads(sample_result().model_dump_json())
    document["results"][0]["evidence"]["tls_ms"] = 1.0

    parsed = parse_result(json.dumps(document))

    assert isinstance(parsed, RunResult)
    assert parsed.results[0].outcome is Outcome.L7_DENIED


@pytest.mark.parametrize(
    ("document", "named"),
    [
        ('{"schema_version": 1, "run_id": "r", "results": [{"id": "a"}]}', "results.0.outcome"),
        (
            '{"schema_version": 1, "run_id": "r", "results": [{"id": "a", "outcome": "nope", "evidence": {}}]}',
            "results.0.outcome",
        ),
        ('{"schema_version": 2, "run_id": "r", "results": []}', "schema_version"),
        ("nope", "Invalid JSON"),
    ],
)
def test_invalid_result_raises_result_error(document: str, named: str) -> None:
    """A broken result document is refused with the field named."""
    with pytest.raises(ResultError, match=named):
        parse_result(document)


def test_after_names_an_earlier_request_of_the_plan() -> None:
    """A confirmation waits for an earlier request: a later or unknown one is refused (no wait cycle)."""
    good = json.dumps({"run_id": "r", "requests": [{"id": "a", "url": URL}, {"id": "b", "url": URL, "after": "a"}]})
    assert [r.after for r in parse_plan(good).requests] == [None, "a"]
    for requests in (
        [{"id": "a", "url": URL, "after": "b"}, {"id": "b", "url": URL}],
        [{"id": "a", "url": URL, "after": "a"}],
        [{"id": "a", "url": URL, "after": "z"}],
    ):
        with pytest.raises(PlanError, match=r"after '[abz]' names no earlier request"):
            parse_plan(json.dumps({"run_id": "r", "requests": requests}))
