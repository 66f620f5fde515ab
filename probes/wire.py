"""Wire schema between the auditor and the probe program.

This is the only ``probes`` module the auditor imports, so it needs pydantic and the standard
library alone. A plan travels auditor -> probe pod (a file or stdin, see ``__main__``); a result
travels back on stdout in full and, size-capped, in the pod's termination message, where it may
arrive in the compact form. ``parse_plan`` and ``parse_result`` are the two entry points; both
raise a ``ValueError`` subclass whose message names the offending field.

    plan   {"schema_version": 1, "run_id": str, "marker_header": str?, "concurrency": int?,
            "requests": [{"id", "url", "method", "headers", "header_refs"?,
                          "header_ref_suffixes"?, "timeout_s", "marker_header"?, "after"?}]}

``header_refs`` maps a header name to the environment variable (``MESH_AUDITOR_HEADER_<n>``) that
holds its value in the probe pod, set by the kubelet from a Secret (``secretKeyRef``): secret
values never travel in the plan, which is part of the pod spec. ``header_ref_suffixes`` appends a
literal to a referenced value (the near-miss control request: the secret plus a suffix), so a
value derived from a secret travels as a reference too. ``with_header_values`` resolves both
inside the probe program. ``after`` names an earlier request of the same plan: this one is sent
only once that one ended, on its own connection (a confirmation of a denial must not share the
moment of the first request, when a restarting ztunnel cuts every connection at once).
    result {"schema_version": 1, "run_id": str,
            "results": [{"id", "outcome", "evidence": {status, connect_ms, first_byte_ms,
                         total_ms, headers, body_prefix, error}}]}
    compact result (termination message only)
           {"schema_version": 1, "run_id": str, "truncated": true, "complete": bool,
            "results": [{"id", "outcome", "status"}]}
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Final, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

__all__ = [
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

SCHEMA_VERSION: Final = 1

# RFC 9110 token characters: what h11 accepts in a header name.
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# Printable ASCII and tab: httpx encodes header values as ASCII and h11 rejects control bytes,
# so anything else would only fail later, inside the probe pod, as an `other` outcome.
_HEADER_VALUE = re.compile(r"^[\x20-\x7e\t]*$")
_METHOD = re.compile(r"^[A-Z][A-Z_-]{0,31}$")
HEADER_ENV_PREFIX: Final = "MESH_AUDITOR_HEADER_"
_HEADER_ENV = re.compile(rf"^{HEADER_ENV_PREFIX}[0-9]{{1,4}}$")
_MAX_ERRORS_SHOWN = 5


class Outcome(StrEnum):
    """What a client observed for one request (semantics §1); the spelling is the contract."""

    ALLOWED = "allowed"
    L7_DENIED = "l7-denied"
    APP_DENIED = "app-denied"
    L4_DENIED = "l4-denied"
    REFUSED = "refused"
    TIMEOUT = "timeout"
    DNS_FAILURE = "dns-failure"
    UPSTREAM_ERROR = "upstream-error"
    OTHER = "other"


class PlanError(ValueError):
    """A plan that is not JSON or breaks the schema; the message names each bad field."""


class ResultError(ValueError):
    """A result document that is not JSON or breaks the schema; the message names the field."""


def _check_url(url: str) -> str:
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a non-numeric or out-of-range port
    except ValueError as exc:
        raise ValueError(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"scheme must be http or https, got {parts.scheme!r}")
    if not parts.hostname:
        raise ValueError("URL has no host")
    if port == 0 or any(c.isspace() or not c.isprintable() for c in url):
        raise ValueError("URL has port 0, whitespace or control characters")
    return url


def _check_header_name(name: str) -> str:
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"header name {name!r} is not an HTTP token")
    return name.lower()


def _check_headers(headers: dict[str, str]) -> dict[str, str]:
    for name, value in headers.items():
        _check_header_name(name)
        if not _HEADER_VALUE.fullmatch(value):
            raise ValueError(f"header {name!r} has a value outside printable ASCII")
    return headers


def _check_header_refs(refs: dict[str, str]) -> dict[str, str]:
    for name, variable in refs.items():
        _check_header_name(name)
        if not _HEADER_ENV.fullmatch(variable):
            raise ValueError(f"header {name!r} refers to {variable!r}, not a {HEADER_ENV_PREFIX}<n> variable")
    return {name.lower(): variable for name, variable in refs.items()}


def _check_header_ref_suffixes(suffixes: dict[str, str]) -> dict[str, str]:
    for name, suffix in suffixes.items():
        _check_header_name(name)
        if not suffix or not _HEADER_VALUE.fullmatch(suffix):
            raise ValueError(f"header {name!r} has an empty suffix or one outside printable ASCII")
    return {name.lower(): suffix for name, suffix in suffixes.items()}


def _check_method(method: str) -> str:
    if not _METHOD.fullmatch(method):
        raise ValueError(f"method must be an upper-case HTTP token, got {method!r}")
    return method


_Id = Annotated[str, Field(min_length=1, max_length=128)]
_HeaderName = Annotated[str, Field(max_length=128), AfterValidator(_check_header_name)]


class _Plan(BaseModel):
    # Strict: "3" is not a number and true is not 1; unknown keys are typos, not extensions.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


class ProbeRequest(_Plan):
    """One request to send on its own connection."""

    id: _Id
    url: Annotated[str, Field(max_length=2048), AfterValidator(_check_url)]
    method: Annotated[str, AfterValidator(_check_method)] = "GET"
    headers: Annotated[dict[str, str], AfterValidator(_check_headers)] = Field(default_factory=dict)
    # Seconds for each phase (connect, write, read); 300 caps a typo'd value in minutes.
    timeout_s: Annotated[float, Field(gt=0, le=300)] = 3.0
    # Overrides the plan-level marker header for this request (semantics §1.7a).
    marker_header: _HeaderName | None = None
    # Header name -> environment variable holding its value (from a Secret, see the module doc).
    header_refs: Annotated[dict[str, str], AfterValidator(_check_header_refs)] = Field(default_factory=dict)
    # Header name -> literal appended to its referenced value (a near miss of a secret value).
    header_ref_suffixes: Annotated[dict[str, str], AfterValidator(_check_header_ref_suffixes)] = Field(
        default_factory=dict
    )
    # The id of an earlier request of the plan: this one starts only after that one ended.
    after: _Id | None = None

    @model_validator(mode="after")
    def _refs_are_not_headers(self) -> ProbeRequest:
        both = sorted(set(self.headers) & set(self.header_refs))
        if both:
            raise ValueError(f"headers {both} are given both as values and as header_refs")
        dangling = sorted(set(self.header_ref_suffixes) - set(self.header_refs))
        if dangling:
            raise ValueError(f"header_ref_suffixes {dangling} name headers that are not in header_refs")
        return self


class ProbePlan(_Plan):
    """Everything one probe process runs, as the auditor sends it."""

    schema_version: Literal[1] = SCHEMA_VERSION
    run_id: _Id
    requests: Annotated[tuple[ProbeRequest, ...], Field(max_length=10_000)]
    # Response header a waypoint route adds to prove L7 processing (semantics §1.7a).
    marker_header: _HeaderName | None = None
    # Requests in flight at once; None lets the probe choose (sender.DEFAULT_CONCURRENCY).
    concurrency: Annotated[int, Field(ge=1, le=256)] | None = None

    @field_validator("requests")
    @classmethod
    def _ids_are_unique(cls, requests: tuple[ProbeRequest, ...]) -> tuple[ProbeRequest, ...]:
        seen: set[str] = set()
        for request in requests:
            if request.id in seen:
                raise ValueError(f"duplicate id {request.id!r}")
            # An earlier one only: the order is the plan's, so waiting can never form a cycle.
            if request.after is not None and request.after not in seen:
                raise ValueError(f"request {request.id!r}: after {request.after!r} names no earlier request")
            seen.add(request.id)
        return requests

    def marker_for(self, request: ProbeRequest) -> str | None:
        """The marker header that applies to ``request``: its own, else the plan's."""
        return request.marker_header or self.marker_header


class _Result(BaseModel):
    # Ignore unknown keys so a newer probe image can add evidence without breaking the auditor.
    model_config = ConfigDict(frozen=True, extra="ignore")


class ErrorInfo(_Result):
    """The exception that ended an exchange, with its causes (``Type: message``) outermost first."""

    type: str
    message: str
    chain: tuple[str, ...] = ()


class Evidence(_Result):
    """What the client saw; every field is null when not observed (e.g. no response)."""

    status: int | None = None
    connect_ms: float | None = None  # TCP handshake only
    first_byte_ms: float | None = None  # request start -> response headers parsed
    total_ms: float | None = None  # request start -> body prefix read or failure
    headers: dict[str, str] = Field(default_factory=dict)  # only the evidence headers, lower-case
    body_prefix: str | None = None  # first 256 bytes, undecodable bytes replaced
    error: ErrorInfo | None = None


class ProbeResult(_Result):
    """One request's outcome and why."""

    id: str
    outcome: Outcome
    evidence: Evidence


class RunResult(_Result):
    """The full result, as printed on stdout."""

    schema_version: Literal[1] = SCHEMA_VERSION
    run_id: str
    results: tuple[ProbeResult, ...]


class CompactResult(_Result):
    """One request's outcome without evidence, for the size-capped termination message."""

    id: str
    outcome: Outcome
    status: int | None = None


class CompactRunResult(_Result):
    """The termination-message form when the full result exceeds 4096 bytes.

    ``complete`` is false when even the compact list did not fit and trailing results were
    dropped: the auditor must then read stdout (pod logs) or treat the missing ids as unknown.
    """

    schema_version: Literal[1] = SCHEMA_VERSION
    run_id: str
    truncated: Literal[True]  # required: it is what tells this form from the full one
    complete: bool = True
    results: tuple[CompactResult, ...]


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors()[:_MAX_ERRORS_SHOWN]:
        where = ".".join(str(loc) for loc in item["loc"]) or "(document)"
        parts.append(f"{where}: {item['msg']}")
    hidden = error.error_count() - _MAX_ERRORS_SHOWN
    if hidden > 0:
        parts.append(f"... and {hidden} more")
    return "; ".join(parts)


def parse_plan(data: str | bytes) -> ProbePlan:
    """Parse a JSON plan; raise ``PlanError`` naming each bad field."""
    try:
        return ProbePlan.model_validate_json(data)
    except ValidationError as exc:
        raise PlanError(_describe(exc)) from None


def with_header_values(plan: ProbePlan, environ: Mapping[str, str]) -> ProbePlan:
    """``plan`` with every ``header_refs`` entry replaced by its value from ``environ``.

    Raises ``PlanError`` naming the request, header and variable (never the value) when the
    variable is unset, empty, or not printable ASCII (a Secret written with a trailing newline).
    """
    requests = []
    for request in plan.requests:
        headers = dict(request.headers)
        for name, variable in request.header_refs.items():
            value = environ.get(variable, "")
            if not value or not _HEADER_VALUE.fullmatch(value):
                state = "unset or empty" if not value else "not printable ASCII (a trailing newline?)"
                raise PlanError(f"requests[{request.id}].header_refs.{name}: {variable} is {state}")
            headers[name] = value + request.header_ref_suffixes.get(name, "")
        requests.append(request.model_copy(update={"headers": headers, "header_refs": {}, "header_ref_suffixes": {}}))
    return plan.model_copy(update={"requests": tuple(requests)})


def parse_result(data: str | bytes) -> RunResult | CompactRunResult:
    """Parse a full (stdout) or compact (termination message) result; raise ``ResultError``."""
    try:
        return CompactRunResult.model_validate_json(data)
    except ValidationError:
        pass  # not the compact form: the full form's errors are the useful ones
    try:
        return RunResult.model_validate_json(data)
    except ValidationError as exc:
        raise ResultError(_describe(exc)) from None
