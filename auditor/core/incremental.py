"""Incremental re-evaluation for the daemon (#16): one changed object re-audits what it affects.

``IncrementalAudit`` holds the watched objects and the last findings, kept in blocks, one per
namespace (a finding's target is ``namespace/name`` or ``namespace/*``). ``apply`` takes the
changes the watches saw, works out which blocks they can affect (``reach_of``) and recomputes
only those:

- the strict-mTLS findings of a namespace (``audit.scoped_findings``) read only that namespace,
  the root namespace, Namespaces and Gateways: they are recomputed from a snapshot of just those
  objects, a few milliseconds for 100 Services;
- the findings of protected Services (allow-list, waypoint, headers) read callers from every
  namespace: they are recomputed from the whole snapshot, and only when the change can matter to
  them (an AuthorizationPolicy, a ServiceAccount, a Namespace, a Gateway, an object in the
  namespace of a protected Service or of its waypoint, a workload whose change alters a caller).

When it cannot tell (a GatewayClass, an HTTPRoute, a ServiceEntry, anything in the root
namespace, an object of an unknown type) it re-audits everything: a re-evaluation may be larger
than needed, never stale. The invariant, tested on every fixture with every single-object
change: ``apply`` gives exactly ``run_static_audit`` of the snapshot after the change.

Pure: no clock, no I/O. Not thread-safe: the daemon calls it from one job at a time.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from auditor.core.audit import protected_findings, run_static_audit, scoped_findings
from auditor.core.checks.context import AuditContext
from auditor.core.decode import Decoded, build_snapshot
from auditor.core.mesh import ClientKind, client_of, is_auditor_probe
from auditor.core.model import Finding
from auditor.core.posture import Posture
from auditor.core.snapshot import (
    AuthorizationPolicy,
    Gateway,
    Namespace,
    PeerAuthentication,
    Service,
    ServiceAccount,
    Snapshot,
    SnapshotIndex,
    Workload,
    selector_matches,
)

# (watched resource, namespace, name): one object as the watches key it (a Deployment and the
# Workload it decodes to share a key). The resource is any stable string, e.g. its kind.
ObjectKey = tuple[str, str, str]

_BYPASS_KINDS = frozenset({ClientKind.SIDECAR, ClientKind.GATEWAY})  # witnesses.bypass_callers


@dataclass(frozen=True, slots=True)
class Change:
    """One object as it was (``before``) and is (``after``) in decoded form; empty when absent."""

    key: ObjectKey
    before: tuple[Decoded, ...]
    after: tuple[Decoded, ...]


@dataclass(frozen=True, slots=True)
class Reach:
    """What a change can affect: the namespaces whose strict-mTLS findings it can change, the
    protected Services (``namespace/name``) whose findings it can change, or all of them
    (``protected``), or (``everything``) anything at all."""

    namespaces: frozenset[str] = frozenset()
    targets: frozenset[str] = frozenset()
    protected: bool = False
    everything: bool = False

    def __or__(self, other: Reach) -> Reach:
        return Reach(
            self.namespaces | other.namespaces,
            self.targets | other.targets,
            self.protected or other.protected,
            self.everything or other.everything,
        )


EVERYTHING = Reach(everything=True)
NOTHING = Reach()


@dataclass(frozen=True, slots=True)
class Update:
    """The findings after ``apply`` (sorted as ``run_static_audit`` sorts them) and what was
    re-evaluated: the namespaces re-audited, whether the protected Services were, whether all was."""

    findings: tuple[Finding, ...]
    namespaces: frozenset[str]
    targets: frozenset[str]  # protected Services re-evaluated
    everything: bool


class IncrementalAudit:
    """The watched objects and their findings, re-evaluated change by change (module docstring).

    ``objects`` maps each watched object's key to what it decodes to. ``live`` is the snapshot's
    ``live`` flag. Read problems are not taken: a snapshot that is not in sync is not audited.
    """

    def __init__(
        self,
        objects: Mapping[ObjectKey, tuple[Decoded, ...]],
        posture: Posture,
        header_values: Mapping[tuple[str, str], str | None],
        *,
        live: bool = False,
    ) -> None:
        self._posture, self._values, self._live = posture, header_values, live
        self._by_ns: dict[str, dict[ObjectKey, tuple[Decoded, ...]]] = {}
        self._gateways: dict[ObjectKey, tuple[Decoded, ...]] = {}  # every namespace's: waypoints
        for key, decoded in objects.items():
            self._put(key, decoded)
        self._root = posture.mesh.root_namespace
        self._protected_in: dict[str, list[str]] = {}  # namespace -> protected Services there or waypointed there
        for p in posture.protected:
            for ns in dict.fromkeys([p.namespace, p.waypoint_namespace or p.namespace]):
                self._protected_in.setdefault(ns, []).append(p.target)
        self._all_targets = frozenset(p.target for p in posture.protected)
        self._scoped: dict[str, list[Finding]] = {}
        self._protected: dict[str, list[Finding]] = {}
        self._blocks: dict[str, tuple[Finding, ...]] = {}
        self._findings: tuple[Finding, ...] = ()
        self._evaluate_everything()

    @property
    def findings(self) -> tuple[Finding, ...]:
        return self._findings

    def snapshot(self) -> Snapshot:
        """The whole snapshot the findings are about (what ``run_static_audit`` would be given)."""
        return build_snapshot(
            [o for objs in self._by_ns.values() for group in objs.values() for o in group], live=self._live
        )

    def apply(self, changes: Sequence[Change]) -> Update:
        """Apply the changes in order and re-evaluate what they reach; returns the new findings."""
        reach = NOTHING
        for change in changes:
            reach |= self._reach_and_store(change)
        if reach.everything:
            self._evaluate_everything()
            return Update(self._findings, frozenset(self._blocks), self._all_targets, True)
        touched = set(reach.namespaces)
        for namespace in reach.namespaces:
            self._scoped[namespace] = self._scoped_in(namespace)
        targets = self._all_targets if reach.protected else reach.targets & self._all_targets
        if targets:
            touched |= self._evaluate_protected(SnapshotIndex(self.snapshot()), targets)
        for namespace in touched:
            self._rebuild_block(namespace)
        if touched:
            self._join()
        return Update(self._findings, frozenset(reach.namespaces), frozenset(targets), False)

    # --- what a change reaches ---------------------------------------------------------------

    def _reach_and_store(self, change: Change) -> Reach:
        namespaces = {o.meta.namespace for o in change.before + change.after} | {change.key[1]}
        before = {ns: self._sub_index(ns) for ns in namespaces if _needs_index(change)}
        self._drop(change.key)
        self._put(change.key, change.after)
        after = {ns: self._sub_index(ns) for ns in namespaces if _needs_index(change)}
        reach = NOTHING
        for obj in change.before:
            reach |= self._reach_of(obj, before[obj.meta.namespace] if before else None, before, after)
        for obj in change.after:
            reach |= self._reach_of(obj, after[obj.meta.namespace] if after else None, before, after)
        return reach

    def _reach_of(
        self,
        obj: Decoded,
        index: SnapshotIndex | None,
        before: Mapping[str, SnapshotIndex],
        after: Mapping[str, SnapshotIndex],
    ) -> Reach:
        """Which findings one version of an object can change (module docstring for the why)."""
        ns = obj.meta.namespace
        if ns == self._root and isinstance(obj, PeerAuthentication | AuthorizationPolicy | Workload | Service):
            return EVERYTHING  # mesh-wide policy, or the root namespace's own Services
        here = frozenset({ns})
        if isinstance(obj, Namespace):
            if obj.meta.name == self._root:
                return EVERYTHING
            return Reach(frozenset({obj.meta.name}), protected=True)  # its labels decide capture of clients too
        if isinstance(obj, Service):
            # A protected Service's checks read no other Service than their own.
            return Reach(here, targets=frozenset({obj.meta.key}))
        if isinstance(obj, PeerAuthentication):
            # It decides mTLS at the backends of the protected Services of its namespace.
            return Reach(here, targets=frozenset(self._protected_in.get(ns, ())))
        if isinstance(obj, AuthorizationPolicy | ServiceAccount):
            return Reach(protected=True)  # the strict-mTLS checks read neither; callers are built from both
        if isinstance(obj, Gateway):
            return Reach(here, protected=True)
        if isinstance(obj, Workload):
            assert index is not None  # noqa: S101 - _needs_index is true for workloads
            if self._caller_changed(obj, index, before[ns], after[ns]):
                return Reach(here, protected=True)
            return Reach(here, targets=self._backend_of(obj, index))
        return EVERYTHING  # GatewayClass, HTTPRoute, ServiceEntry, anything new: do not guess

    def _backend_of(self, workload: Workload, index: SnapshotIndex) -> frozenset[str]:
        """The protected Services of the workload's namespace that select it (it is their backend),
        and those waypointed there (their waypoint's pods)."""
        found = set()
        for target in self._protected_in.get(workload.meta.namespace, ()):
            service = index.services.get(target)
            if service is None or target.partition("/")[0] != workload.meta.namespace:
                found.add(target)  # waypointed here, or not there yet: do not guess
            elif service.selector and selector_matches(service.selector, workload.pod_labels):
                found.add(target)
        return frozenset(found)

    def _caller_changed(
        self, workload: Workload, index: SnapshotIndex, before: SnapshotIndex, after: SnapshotIndex
    ) -> bool:
        """Whether a workload's change can alter what the protected Services' checks see of their
        callers (``auditor.core.checks.witnesses``): the bypass callers (sidecars and gateways),
        the accounts of its namespace, the kinds of client its account's workloads are."""
        if client_of(workload, index).kind in _BYPASS_KINDS:
            return True
        ns = workload.meta.namespace
        if before.accounts_by_ns.get(ns, set()) != after.accounts_by_ns.get(ns, set()):
            return True
        account = (ns, workload.service_account)
        return _client_kinds(before, account) != _client_kinds(after, account)

    # --- evaluation ---------------------------------------------------------------------------

    def _evaluate_everything(self) -> None:
        snapshot = self.snapshot()
        ctx = AuditContext(index=SnapshotIndex(snapshot), posture=self._posture, header_values=self._values)
        self._scoped = _by_namespace(scoped_findings(ctx))
        self._protected = _by_namespace(protected_findings(ctx, self._posture.protected))
        self._blocks = {}
        for namespace in self._scoped.keys() | self._protected.keys():
            self._rebuild_block(namespace)
        self._join()

    def _evaluate_protected(self, index: SnapshotIndex, targets: frozenset[str]) -> set[str]:
        """Re-evaluate the given protected Services; returns the namespaces whose findings changed."""
        ctx = AuditContext(index=index, posture=self._posture, header_values=self._values)
        fresh = _by_namespace(protected_findings(ctx, [p for p in self._posture.protected if p.target in targets]))
        touched = {t.partition("/")[0] for t in targets}
        for namespace in touched:
            kept = [f for f in self._protected.get(namespace, []) if f.target not in targets]
            self._protected[namespace] = kept + fresh.get(namespace, [])
        return touched

    def _scoped_in(self, namespace: str) -> list[Finding]:
        """``scoped_findings`` of one namespace, from a snapshot of what they read."""
        posture = self._posture.model_copy(
            update={
                "scope": tuple(e for e in self._posture.scope if e.namespace == namespace),
                "protected": tuple(p for p in self._posture.protected if p.namespace == namespace),
            }
        )
        ctx = AuditContext(index=self._sub_index(namespace), posture=posture, header_values=self._values)
        return [f for f in scoped_findings(ctx) if _namespace_of(f) == namespace]

    def _sub_index(self, namespace: str) -> SnapshotIndex:
        """An index of one namespace, the root namespace, Namespaces and every Gateway."""
        groups = [self._by_ns.get(namespace, {}), self._by_ns.get("", {}), self._gateways]
        if namespace != self._root:
            groups.append(self._by_ns.get(self._root, {}))
        seen: dict[ObjectKey, tuple[Decoded, ...]] = {}
        for group in groups:
            seen.update(group)
        return SnapshotIndex(build_snapshot([o for objs in seen.values() for o in objs], live=self._live))

    def _rebuild_block(self, namespace: str) -> None:
        found = self._scoped.get(namespace, []) + self._protected.get(namespace, [])
        if found:
            self._blocks[namespace] = tuple(sorted(found, key=Finding.sort_key))
        else:
            self._blocks.pop(namespace, None)

    def _join(self) -> None:
        # Targets are "namespace/...": ordering blocks by "namespace/" orders their findings as
        # one global sort would (a namespace name has no "/").
        order = sorted(self._blocks, key=lambda ns: ns + "/")
        self._findings = tuple(itertools.chain.from_iterable(self._blocks[ns] for ns in order))

    # --- the object store ---------------------------------------------------------------------

    def _put(self, key: ObjectKey, decoded: tuple[Decoded, ...]) -> None:
        if not decoded:
            return
        self._by_ns.setdefault(key[1], {})[key] = decoded
        if any(isinstance(o, Gateway) for o in decoded):
            self._gateways[key] = decoded

    def _drop(self, key: ObjectKey) -> None:
        objects = self._by_ns.get(key[1])
        if objects is not None:
            objects.pop(key, None)
            if not objects:
                del self._by_ns[key[1]]
        self._gateways.pop(key, None)


def _needs_index(change: Change) -> bool:
    return any(isinstance(o, Workload) for o in change.before + change.after)


def _client_kinds(index: SnapshotIndex, account: tuple[str, str]) -> tuple[ClientKind, ...]:
    """The kinds of client an account's workloads are, as ``witnesses.callers_as`` lists them."""
    workloads = index.workloads_by_account.get(account, [])
    return tuple(dict.fromkeys(client_of(w, index).kind for w in workloads if not is_auditor_probe(w)))


def _namespace_of(finding: Finding) -> str:
    return finding.target.partition("/")[0]


def _by_namespace(findings: Iterable[Finding]) -> dict[str, list[Finding]]:
    grouped: dict[str, list[Finding]] = {}
    for found in findings:
        grouped.setdefault(_namespace_of(found), []).append(found)
    return grouped


def full_audit(
    objects: Mapping[ObjectKey, tuple[Decoded, ...]],
    posture: Posture,
    header_values: Mapping[tuple[str, str], str | None],
    *,
    live: bool = False,
) -> tuple[Finding, ...]:
    """``run_static_audit`` of the same objects: what ``IncrementalAudit`` must always equal."""
    snapshot = build_snapshot([o for group in objects.values() for o in group], live=live)
    return run_static_audit(snapshot, posture, header_values)
