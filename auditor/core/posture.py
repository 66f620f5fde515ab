"""The declarative posture a platform team writes (``rules/*.yaml``), as validated models.

The JSON Schema in ``rules/schema.json`` is generated from ``PostureDocument`` (``auditor rules
schema``) and a test keeps the two identical. Field names are camelCase in YAML, like Kubernetes.
"""

from __future__ import annotations

import re
import types
from typing import Annotated, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

API_VERSION = "mesh-auditor.dev/v1alpha1"
KIND = "MeshPosture"
_PRINCIPAL = re.compile(r"^[^/\s*]+/ns/[^/\s*]+/sa/[^/\s*]+$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9a-z-]+$")
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class _Model(BaseModel):
    # defer_build: the validators are built by the first validation, for the models it uses
    # (a rules file builds ``PostureDocument``'s), not one per class at import (#16: start-up).
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True, defer_build=True
    )


Name = Annotated[str, Field(pattern=_DNS_LABEL, max_length=253, description="A Kubernetes object name.")]


class LabelSelector(_Model):
    """Selects Services by their labels (equality only, like ``matchLabels``)."""

    match_labels: dict[str, str] = Field(default_factory=dict, description="Labels a Service must carry, all of them.")


class ScopeEntry(_Model):
    """Services that must be in the ambient mesh and refuse plaintext (the strict-mtls promise)."""

    namespace: Name = Field(description="Namespace whose Services are in scope.")
    selector: LabelSelector | None = Field(default=None, description="Only Services with these labels.")
    services: list[Name] | None = Field(default=None, description="Only these Services, by name.")
    exclude_services: list[Name] = Field(
        default_factory=list,
        description="Services left out, e.g. `kubernetes`, the API server's own Service.",
    )
    require_strict_mtls: bool = Field(
        default=True,
        description="Plaintext from outside the mesh must be refused. false: the Services still must be "
        "captured, but their PeerAuthentication mode is not asserted (strict-mtls.peer-authentication is "
        "skipped) unless another scope entry or protectedServices requires it.",
    )


class WaypointRef(_Model):
    """The waypoint Gateway that must serve a protected Service: ``name`` and ``namespace`` (default: the Service's)."""

    name: Name = Field(description="Name of the waypoint Gateway (class istio-waypoint).")
    namespace: Name | None = Field(default=None, description="Its namespace; defaults to the Service's.")


class SecretKeyRef(_Model):
    """A Secret key the auditor reads for a required header's value: ``name``, ``key`` and ``namespace`` (default:
    the protected Service's).
    """

    name: Name = Field(description="Secret name.")
    key: str = Field(min_length=1, description="Key in the Secret's data.")
    namespace: Name | None = Field(default=None, description="Defaults to the protected Service's namespace.")


class ProbeSecretRef(_Model):
    """A Secret key in a probe pod's own namespace, read by the kubelet (``secretKeyRef``)."""

    name: Name = Field(description="Secret name, in every namespace a probe pod sending this header runs in.")
    key: str = Field(min_length=1, max_length=253, description="Key in the Secret's data.")


class HeaderValue(_Model):
    """Exactly one source for the header's required value, and how probe pods get it.

    Probe pods never carry a ``secretRef`` or ``fromEnv`` value in their spec: the kubelet puts it
    in their environment from a Secret in the pod's own namespace (``secretKeyRef``), named by
    ``probeSecretRef`` or, for ``secretRef``, the same name and key. ``fromEnv`` values need a
    ``probeSecretRef`` to be probed. A ``literal`` is not secret (it is in the rules file) and
    travels in the probe plan unless a ``probeSecretRef`` is given. docs/probes.md.
    """

    literal: str | None = Field(default=None, min_length=1, description="The value itself.")
    from_env: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable holding the value.",
    )
    secret_ref: SecretKeyRef | None = Field(default=None, description="Kubernetes Secret key holding the value.")
    probe_secret_ref: ProbeSecretRef | None = Field(
        default=None,
        description="Secret key, in the probe pods' namespaces, that holds the same value for active probes "
        "(the platform team provides it; the auditor never reads it). Defaults to secretRef's name and key.",
    )

    @property
    def probe_secret(self) -> ProbeSecretRef | None:
        """Where probe pods read the value (None: a literal, in the plan; or a fromEnv that cannot be probed)."""
        if self.probe_secret_ref is not None:
            return self.probe_secret_ref
        if self.secret_ref is not None:
            return ProbeSecretRef(name=self.secret_ref.name, key=self.secret_ref.key)
        return None

    @model_validator(mode="after")
    def _exactly_one_source(self) -> HeaderValue:
        given = [name for name in ("literal", "from_env", "secret_ref") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of literal, fromEnv, secretRef")
        return self

    @property
    def kind(self) -> str:
        """``"literal"``, ``"env"`` or ``"secret"``: which source gives the value. Never raises."""
        return "literal" if self.literal is not None else "env" if self.from_env is not None else "secret"


class RequiredHeader(_Model):
    """A header every allowed request to a protected Service must carry: ``name`` (lower case) and ``value``."""

    name: str = Field(description="Header name, lower case (HTTP/2 and Envoy lower-case header names).")
    value: HeaderValue

    @field_validator("name")
    @classmethod
    def _lower_case_token(cls, name: str) -> str:
        if not _HEADER_NAME.match(name):
            raise ValueError("must be a lower-case HTTP header name such as x-auth-token")
        return name


HttpMethod = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class ProbeTarget(_Model):
    """What a probe request sends to prove the promise with real traffic."""

    port: int = Field(ge=1, le=65535, description="Service port (not the container port).")
    path: str = Field(default="/", pattern=r"^/", description="Request path, starting with /.")
    method: HttpMethod = "GET"
    expect_status: int = Field(default=200, ge=200, le=399, description="Status the allowed request must get.")


class ControlProbe(_Model):
    """The positive control: a probe pod running as an allowed ServiceAccount.

    Off by default: it creates a pod with that ServiceAccount in the Service's namespace, which
    the platform team must consent to (docs/probes.md).
    """

    enabled: bool = False
    service_account: Name | None = Field(default=None, description="Allowed ServiceAccount to run the control as.")


class ProtectedService(_Model):
    """A Service whose callers, waypoint and headers are promised."""

    name: Name
    namespace: Name = "default"
    allowed_principals: list[str] = Field(
        min_length=1,
        description="SPIFFE identities allowed in, e.g. cluster.local/ns/default/sa/ui.",
    )
    waypoint: WaypointRef | None = Field(default=None, description="Waypoint the Service must use for L7 policy.")
    required_headers: list[RequiredHeader] = Field(default_factory=list)
    probe: ProbeTarget | None = None
    control: ControlProbe = Field(default_factory=ControlProbe)

    @field_validator("allowed_principals")
    @classmethod
    def _principal_form(cls, principals: list[str]) -> list[str]:
        normalized = [p.removeprefix("spiffe://") for p in principals]
        for principal in normalized:
            if not _PRINCIPAL.match(principal):
                raise ValueError(f"{principal!r} is not <trust-domain>/ns/<namespace>/sa/<service-account>")
        return normalized

    @model_validator(mode="after")
    def _headers_need_waypoint(self) -> ProtectedService:
        if self.required_headers and self.waypoint is None:
            # semantics §4.6: only a waypoint sees headers; ztunnel drops L7 rules (§4.3).
            raise ValueError("requiredHeaders need a waypoint (only waypoints enforce L7); add waypoint: {name: ...}")
        return self

    @property
    def target(self) -> str:
        """``"namespace/name"`` of the protected Service: the finding's target. Never raises."""
        return f"{self.namespace}/{self.name}"

    @property
    def waypoint_namespace(self) -> str | None:
        """The namespace of the required waypoint (default: the Service's); None when no waypoint is required."""
        return None if self.waypoint is None else self.waypoint.namespace or self.namespace


class MeshSettings(_Model):
    """The mesh the rules describe: ``rootNamespace`` (Istio's root namespace, where mesh-wide policies live) and
    ``trustDomain`` (of the SPIFFE principals).
    """

    root_namespace: Name = Field(default="istio-system", description="Istio's root namespace (mesh-wide policies).")
    trust_domain: str = Field(default="cluster.local", min_length=1, description="The mesh trust domain.")


class PostureSpec(_Model):
    """The body of a rules file: ``mesh`` settings, the ``scope`` to audit and the ``protectedServices``."""

    mesh: MeshSettings = Field(default_factory=MeshSettings)
    scope: list[ScopeEntry] = Field(default_factory=list)
    protected_services: list[ProtectedService] = Field(default_factory=list)


class PostureMetadata(_Model):
    """The rules file's ``metadata``: its ``name``."""

    name: Name


class PostureDocument(_Model):
    """One rules file."""

    api_version: Literal["mesh-auditor.dev/v1alpha1"]
    kind: Literal["MeshPosture"]
    metadata: PostureMetadata
    spec: PostureSpec


def field_names_at(location: tuple[int | str, ...]) -> tuple[str, ...]:
    """The YAML (camelCase) field names allowed in the mapping at ``location`` of a rules document.

    ``location`` is a pydantic error location by alias (``("spec", "protectedServices", 0)``);
    list indexes are skipped. Empty when the location is not a model (a map of labels, a list).
    Used to suggest the intended name for a misspelt field.
    """
    model: type[BaseModel] | None = PostureDocument
    for part in location:
        if model is None:
            return ()
        if isinstance(part, int):
            continue
        field = next((f for name, f in model.model_fields.items() if (f.alias or name) == part), None)
        model = None if field is None else _model_in(field.annotation)
    if model is None:
        return ()
    return tuple(f.alias or name for name, f in model.model_fields.items())


def _model_in(annotation: object) -> type[BaseModel] | None:
    """The model class inside ``X``, ``X | None``, ``list[X]``; None for anything else."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in {list, Union, types.UnionType}:
        for argument in get_args(annotation):
            found = _model_in(argument)
            if found is not None:
                return found
    return None


class Posture(BaseModel):
    """All rules files merged: what the audit checks."""

    # Built on first use: ``merge`` constructs it from models validated already (#16).
    model_config = ConfigDict(frozen=True, defer_build=True)

    mesh: MeshSettings
    scope: tuple[ScopeEntry, ...]
    protected: tuple[ProtectedService, ...]
    names: tuple[str, ...]

    def protected_service(self, target: str) -> ProtectedService | None:
        """The protected Service whose ``target`` is ``namespace/name``; None when none is."""
        return next((p for p in self.protected if p.target == target), None)


class PostureConflictError(ValueError):
    """Two rules files disagree (mesh settings, or the same protected Service twice)."""


def merge(documents: list[tuple[str, PostureDocument]]) -> Posture:
    """Merge rules files; ``documents`` pairs each with its file name for error messages."""
    if not documents:
        raise PostureConflictError("no rules given; pass --rules FILE")
    mesh = documents[0][1].spec.mesh
    seen: dict[str, str] = {}
    for origin, document in documents:
        if document.spec.mesh != mesh:
            raise PostureConflictError(f"{origin}: spec.mesh differs from {documents[0][0]}; use one mesh block")
        for service in document.spec.protected_services:
            if service.target in seen:
                raise PostureConflictError(
                    f"{origin}: protected service {service.target} is also in {seen[service.target]}; keep one"
                )
            seen[service.target] = origin
    # Every part was validated with its document and the fields are already tuples: validating
    # them again would only build Posture's own validator, at every start (#16).
    return Posture.model_construct(
        mesh=mesh,
        scope=tuple(e for _, d in documents for e in d.spec.scope),
        protected=tuple(p for _, d in documents for p in d.spec.protected_services),
        names=tuple(d.metadata.name for _, d in documents),
    )
