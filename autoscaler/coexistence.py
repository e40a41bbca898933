"""Detect other autoscalers of a target, so that two controllers never write one `/scale`.

Two writers on one `/scale` fight: each tick one of them undoes the other. Grove creates an
HPA (same name as its target, label `app.kubernetes.io/component=pcs-hpa`) for every clique
with `autoScalingConfig` and every scaling group with `scaleConfig`, per PodCliqueSet
replica. Any other HPA (KEDA's included) may point at the same object. `find_conflicts`
reports all of these from the PodCliqueSet and the namespace's HPAs. `other_writers` reads
the object's `managedFields` to catch writers that leave no HPA behind, such as a person
running `kubectl scale` or another planner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from autoscaler.targets import GROUP, Kind

GROVE_HPA_LABEL = ("app.kubernetes.io/component", "pcs-hpa")
KEDA_MANAGER_LABEL = ("app.kubernetes.io/managed-by", "keda-operator")
DEFAULT_MANAGER = "grove-autoscaler"

_KIND_ALIASES = {
    "podcliqueset": Kind.PODCLIQUESET,
    "pcs": Kind.PODCLIQUESET,
    "podcliquescalinggroup": Kind.PODCLIQUESCALINGGROUP,
    "pcsg": Kind.PODCLIQUESCALINGGROUP,
    "podclique": Kind.PODCLIQUE,
    "pclq": Kind.PODCLIQUE,
}


class CoexistenceError(ValueError):
    """A target that does not belong to the given PodCliqueSet, or an invalid kind."""


@dataclass(frozen=True)
class TemplateMatch:
    """The PodCliqueSet template entry that a live object was created from.

    `template_name` is the clique or scaling-group name in the template (the PodCliqueSet's
    own name at that level). `scaling_group` is set for a clique that belongs to a group.
    """

    kind: Kind
    template_name: str
    pcs_index: int | None = None
    scaling_group: str | None = None
    group_index: int | None = None


@dataclass(frozen=True)
class FieldWriter:
    """One `metadata.managedFields` entry that owns `spec.replicas`."""

    manager: str
    operation: str
    subresource: str
    time: str

    def __str__(self) -> str:
        via = f" via /{self.subresource}" if self.subresource else ""
        when = f" at {self.time}" if self.time else ""
        return f"{self.manager} ({self.operation}{via}{when})"


def parse_kind(kind: Kind | str) -> Kind:
    """Accept a Kind, its lower-case id, its Kubernetes kind name or its short name."""
    if isinstance(kind, Kind):
        return kind
    try:
        return _KIND_ALIASES[str(kind).lower()]
    except KeyError:
        raise CoexistenceError(f"invalid target kind {kind!r}: expected PodCliqueSet, PodCliqueScalingGroup or PodClique") from None


def find_conflicts(
    target_kind: Kind | str,
    target_name: str,
    pcs: Mapping[str, Any],
    hpas: Sequence[Mapping[str, Any]],
    *,
    namespace: str | None = None,
) -> list[str]:
    """Return one reason per other autoscaler of the target; an empty list means none was found.

    `pcs` is the owning PodCliqueSet and `hpas` the autoscaling/v2 HPAs of its namespace.
    HPAs from another namespace are ignored. The namespace is `namespace` when given, else
    the PodCliqueSet's. Raise CoexistenceError when the target is not a child of `pcs`.
    """
    kind = parse_kind(target_kind)
    pcs_name = _pcs_name(pcs)
    namespace = namespace or (pcs.get("metadata") or {}).get("namespace")

    conflicts = []
    for match in match_template(kind, target_name, pcs):
        conflicts.extend(_template_conflicts(kind, target_name, match, pcs, pcs_name))
    for hpa in hpas:
        reason = _hpa_conflict(kind, target_name, hpa, namespace)
        if reason:
            conflicts.append(reason)
    return conflicts


def match_template(kind: Kind | str, name: str, pcs: Mapping[str, Any]) -> list[TemplateMatch]:
    """Return the template entries that a live object name belongs to, using Grove's naming.

    Names: standalone clique `<pcs>-<i>-<clique>`, scaling group `<pcs>-<i>-<group>`, clique in
    a group `<pcs>-<i>-<group>-<j>-<clique>`. Raise CoexistenceError when nothing matches.
    """
    kind = parse_kind(kind)
    pcs_name = _pcs_name(pcs)
    template = (pcs.get("spec") or {}).get("template") or {}
    cliques = [entry.get("name") for entry in template.get("cliques") or [] if isinstance(entry, Mapping)]
    groups = {
        entry.get("name"): list(entry.get("cliqueNames") or [])
        for entry in template.get("podCliqueScalingGroups") or []
        if isinstance(entry, Mapping)
    }
    members = {clique for names in groups.values() for clique in names}

    matches: list[TemplateMatch] = []
    if kind is Kind.PODCLIQUESET and name == pcs_name:
        matches.append(TemplateMatch(kind, pcs_name))
    # String slicing rather than a regular expression per name: a tick checks thousands of
    # objects, each with its own PodCliqueSet name, which would defeat the regex cache.
    rest = _after_index(name, f"{pcs_name}-")
    if rest is not None:
        index, tail = rest
        if kind is Kind.PODCLIQUESCALINGGROUP:
            matches.extend(TemplateMatch(kind, group, index) for group in groups if tail == group)
        if kind is Kind.PODCLIQUE:
            matches.extend(TemplateMatch(kind, clique, index) for clique in cliques if tail == clique and clique not in members)
            for group, group_cliques in groups.items():
                inner = _after_index(tail, f"{group}-")
                if inner is not None:
                    group_index, clique_name = inner
                    if clique_name in group_cliques:
                        matches.append(TemplateMatch(kind, clique_name, index, group, group_index))

    if not matches:
        raise CoexistenceError(f"{kind.kind_name} {name!r} is not a child of PodCliqueSet {pcs_name!r} by Grove's naming")
    return matches


def replica_writers(obj: Mapping[str, Any]) -> list[FieldWriter]:
    """Return every `managedFields` entry of the object that owns `spec.replicas`."""
    writers = []
    for entry in (obj.get("metadata") or {}).get("managedFields") or []:
        fields = entry.get("fieldsV1") or {}
        if "f:replicas" not in (fields.get("f:spec") or {}):
            continue
        writers.append(
            FieldWriter(
                manager=str(entry.get("manager", "")),
                operation=str(entry.get("operation", "")),
                subresource=str(entry.get("subresource", "")),
                time=str(entry.get("time", "")),
            )
        )
    return writers


def other_writers(obj: Mapping[str, Any], our_manager: str = DEFAULT_MANAGER, *, ignore: Iterable[str] = ()) -> list[str]:
    """Return the field managers other than ours that own `spec.replicas`, with operation and time.

    An Update that changes a field moves its ownership to the writer, so after another writer
    changes the replicas it is listed here until the next change by us. An Update that writes
    the same value moves nothing. Grove's operator owns the field of a child it created until
    someone changes it; pass its manager name in `ignore` to leave it out.

    NOTE: `/scale` writes to custom resources have been reported (Kubernetes, 2025) to leave
    managedFields unchanged, so a writer that only uses `/scale` may be missing here. A
    replica count that differs from our last write is the other sign of a second writer.
    """
    skipped = {our_manager, *ignore}
    return [str(writer) for writer in replica_writers(obj) if writer.manager not in skipped]


# --- Helpers --------------------------------------------------------------------------------


def _after_index(name: str, prefix: str) -> tuple[int, str] | None:
    """Split `<prefix><digits>-<tail>` into (digits, tail); None when the name has another shape."""
    if not name.startswith(prefix):
        return None
    digits, dash, tail = name[len(prefix):].partition("-")
    if not dash or not digits.isdigit() or not tail:
        return None
    return int(digits), tail


def _pcs_name(pcs: Mapping[str, Any]) -> str:
    name = (pcs.get("metadata") or {}).get("name") if isinstance(pcs, Mapping) else None
    if not isinstance(name, str) or not name:
        raise CoexistenceError(f"PodCliqueSet: metadata.name must be a non-empty string, got {name!r}")
    return name


def _template_conflicts(kind: Kind, target_name: str, match: TemplateMatch, pcs: Mapping[str, Any], pcs_name: str) -> list[str]:
    template = (pcs.get("spec") or {}).get("template") or {}
    label = f"{kind.value} {target_name}"
    if kind is Kind.PODCLIQUE:
        for entry in template.get("cliques") or []:
            if entry.get("name") == match.template_name and (entry.get("spec") or {}).get("autoScalingConfig") is not None:
                return [
                    f"PodCliqueSet {pcs_name} template clique {match.template_name} has autoScalingConfig, "
                    f"so Grove runs an HPA on {label}"
                ]
    if kind is Kind.PODCLIQUESCALINGGROUP:
        for entry in template.get("podCliqueScalingGroups") or []:
            if entry.get("name") == match.template_name and entry.get("scaleConfig") is not None:
                return [
                    f"PodCliqueSet {pcs_name} template scaling group {match.template_name} has scaleConfig, "
                    f"so Grove runs an HPA on {label}"
                ]
    return []


def _hpa_conflict(kind: Kind, target_name: str, hpa: Mapping[str, Any], namespace: str | None) -> str | None:
    metadata = hpa.get("metadata") or {}
    hpa_namespace = metadata.get("namespace")
    if namespace and hpa_namespace and hpa_namespace != namespace:
        return None

    reference = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
    if reference.get("kind") != kind.kind_name or reference.get("name") != target_name:
        return None
    api_version = reference.get("apiVersion")
    if api_version and api_version.split("/")[0] != GROUP:
        return None

    labels = metadata.get("labels") or {}
    hpa_label = f"{hpa_namespace}/{metadata.get('name')}" if hpa_namespace else str(metadata.get("name"))
    if labels.get(GROVE_HPA_LABEL[0]) == GROVE_HPA_LABEL[1]:
        owner = "Grove HPA"
    elif labels.get(KEDA_MANAGER_LABEL[0]) == KEDA_MANAGER_LABEL[1]:
        owner = "KEDA HPA"
    else:
        owner = "HPA"
    return f"{owner} {hpa_label} scales {kind.value} {target_name}"
