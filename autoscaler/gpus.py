"""GPUs one replica of a scaling target takes, read from the PodCliqueSet's pod templates.

A replica means what the target's `/scale` counts: one pod for a PodClique, one whole gang
of member cliques for a PodCliqueScalingGroup, one copy of the whole template for a
PodCliqueSet. Counts come from the template, because Grove creates every new replica (a new
PodCliqueSet index, a new scaling-group index) with template values.

NOTE: GPUs allocated through dynamic resource allocation (`resourceClaims`, including the
scaling group's `resourceSharing`) are not counted. Only extended resources in container
requests and limits are counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Mapping, Sequence

from kubernetes.utils import parse_quantity

DEFAULT_GPU_RESOURCES: tuple[str, ...] = ("nvidia.com/gpu", "amd.com/gpu")

LEVELS = ("podcliqueset", "scalingGroup", "clique")


@dataclass(frozen=True)
class _Clique:
    path: str
    replicas: int
    pod_spec: Mapping[str, Any]


@dataclass(frozen=True)
class _Group:
    path: str
    replicas: int
    clique_names: tuple[str, ...]


class TemplateError(ValueError):
    """A PodCliqueSet template with a missing or invalid field; the message names the field path."""


def gpus_per_pod(
    pod_spec: Mapping[str, Any],
    resource_names: Sequence[str] = DEFAULT_GPU_RESOURCES,
    *,
    path: str = "podSpec",
) -> float:
    """Return the GPUs the scheduler reserves for one pod of this spec (its effective request).

    Kubernetes' effective request per resource is the larger of two phases: while running,
    the sum of the regular containers plus every sidecar (an init container with
    `restartPolicy: Always`); during initialisation, each init container's request plus the
    sidecars listed before it. A container's request falls back to its limit when the
    request is absent, as the API server defaults it. `path` prefixes error messages.
    """
    return float(_pod_gpus(pod_spec, resource_names, path))


def _pod_gpus(pod_spec: Mapping[str, Any], resource_names: Sequence[str], path: str) -> Decimal:
    if not isinstance(pod_spec, Mapping):
        raise TemplateError(f"{path}: expected a mapping, got {type(pod_spec).__name__}")

    containers = _container_list(pod_spec, "containers", path)
    init_containers = _container_list(pod_spec, "initContainers", path)

    running = sum(
        (_container_gpus(container, resource_names, f"{path}.containers[{index}]") for index, container in enumerate(containers)),
        Decimal(0),
    )

    sidecars = Decimal(0)
    initialising = Decimal(0)
    for index, container in enumerate(init_containers):
        gpus = _container_gpus(container, resource_names, f"{path}.initContainers[{index}]")
        if container.get("restartPolicy") == "Always":
            sidecars += gpus
            initialising = max(initialising, sidecars)
        else:
            initialising = max(initialising, gpus + sidecars)

    return max(running + sidecars, initialising)


def gpus_per_replica(
    pcs: Mapping[str, Any],
    level: str,
    name: str | None = None,
    *,
    resource_names: Sequence[str] = DEFAULT_GPU_RESOURCES,
) -> float:
    """Return the GPUs one replica of a target takes, computed from the PodCliqueSet template.

    `level` is podcliqueset, scalingGroup or clique, and `name` the scaling group's or
    clique's template name (ignored at the podcliqueset level). A clique replica is one pod,
    because a PodClique's `/scale` counts pods. A scaling-group replica contains every member
    clique at its template replicas. A PodCliqueSet replica contains every standalone clique
    and every scaling group at their template replicas.
    """
    template = _template(pcs)
    cliques = _cliques_by_name(template)
    groups = _groups_by_name(template)

    if level == "clique":
        clique_name = _required_name(level, name)
        if clique_name not in cliques:
            raise TemplateError(f"{_pcs_label(pcs)}: clique {clique_name!r} not found in spec.template.cliques; known: {sorted(cliques)}")
        return float(_clique_pod_gpus(cliques, clique_name, resource_names))

    if level == "scalingGroup":
        group_name = _required_name(level, name)
        if group_name not in groups:
            raise TemplateError(
                f"{_pcs_label(pcs)}: scaling group {group_name!r} not found in spec.template.podCliqueScalingGroups; known: {sorted(groups)}"
            )
        return float(_group_replica_gpus(cliques, groups, group_name, resource_names))

    if level == "podcliqueset":
        return float(_pcs_replica_gpus(cliques, groups, resource_names))

    raise TemplateError(f"invalid level {level!r}: expected one of {', '.join(LEVELS)}")


def _pcs_replica_gpus(
    cliques: Mapping[str, _Clique],
    groups: Mapping[str, _Group],
    resource_names: Sequence[str],
) -> Decimal:
    members = {clique for group in groups.values() for clique in group.clique_names}
    total = Decimal(0)
    for name, clique in cliques.items():
        if name not in members:
            total += _clique_pod_gpus(cliques, name, resource_names) * clique.replicas
    for name, group in groups.items():
        total += _group_replica_gpus(cliques, groups, name, resource_names) * group.replicas
    return total


def _group_replica_gpus(
    cliques: Mapping[str, _Clique],
    groups: Mapping[str, _Group],
    group_name: str,
    resource_names: Sequence[str],
) -> Decimal:
    group = groups[group_name]
    total = Decimal(0)
    for clique_name in group.clique_names:
        if clique_name not in cliques:
            raise TemplateError(
                f"{group.path}.cliqueNames: clique {clique_name!r} of scaling group {group_name!r} "
                f"not found in spec.template.cliques; known: {sorted(cliques)}"
            )
        total += _clique_pod_gpus(cliques, clique_name, resource_names) * cliques[clique_name].replicas
    return total


def _clique_pod_gpus(cliques: Mapping[str, _Clique], name: str, resource_names: Sequence[str]) -> Decimal:
    clique = cliques[name]
    return _pod_gpus(clique.pod_spec, resource_names, f"{clique.path}.spec.podSpec")


# --- Template reading -----------------------------------------------------------------------


def _pcs_label(pcs: Mapping[str, Any]) -> str:
    metadata = pcs.get("metadata") or {}
    return f"PodCliqueSet {metadata.get('name', '<unnamed>')!r}"


def _template(pcs: Mapping[str, Any]) -> Mapping[str, Any]:
    if not isinstance(pcs, Mapping):
        raise TemplateError(f"PodCliqueSet: expected a mapping, got {type(pcs).__name__}")
    template = (pcs.get("spec") or {}).get("template")
    if not isinstance(template, Mapping):
        raise TemplateError(f"{_pcs_label(pcs)}: spec.template is missing or not a mapping")
    return template


def _cliques_by_name(template: Mapping[str, Any]) -> dict[str, _Clique]:
    cliques: dict[str, _Clique] = {}
    for index, entry in enumerate(template.get("cliques") or []):
        path = f"spec.template.cliques[{index}]"
        name = _string_field(entry, "name", path)
        spec = entry.get("spec")
        if not isinstance(spec, Mapping):
            raise TemplateError(f"{path}.spec: missing or not a mapping")
        replicas = _int_field(spec.get("replicas"), f"{path}.spec.replicas", minimum=1)
        pod_spec = spec.get("podSpec")
        if not isinstance(pod_spec, Mapping):
            raise TemplateError(f"{path}.spec.podSpec: missing or not a mapping")
        cliques[name] = _Clique(path, replicas, pod_spec)
    return cliques


def _groups_by_name(template: Mapping[str, Any]) -> dict[str, _Group]:
    groups: dict[str, _Group] = {}
    for index, entry in enumerate(template.get("podCliqueScalingGroups") or []):
        path = f"spec.template.podCliqueScalingGroups[{index}]"
        name = _string_field(entry, "name", path)
        # Grove defaults a scaling group's template replicas to 1.
        replicas = _int_field(entry.get("replicas", 1), f"{path}.replicas", minimum=0)
        clique_names = entry.get("cliqueNames")
        if not isinstance(clique_names, list) or not all(isinstance(item, str) for item in clique_names):
            raise TemplateError(f"{path}.cliqueNames: expected a list of clique names, got {clique_names!r}")
        groups[name] = _Group(path, replicas, tuple(clique_names))
    return groups


def _required_name(level: str, name: str | None) -> str:
    if not name:
        raise TemplateError(f"level {level} needs the template name of the {level}, got {name!r}")
    return name


def _string_field(entry: Any, field: str, path: str) -> str:
    if not isinstance(entry, Mapping):
        raise TemplateError(f"{path}: expected a mapping, got {type(entry).__name__}")
    value = entry.get(field)
    if not isinstance(value, str) or not value:
        raise TemplateError(f"{path}.{field}: expected a non-empty string, got {value!r}")
    return value


def _int_field(value: Any, path: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise TemplateError(f"{path}: expected an integer >= {minimum}, got {value!r}")
    return value


def _container_list(pod_spec: Mapping[str, Any], field: str, path: str) -> list[Mapping[str, Any]]:
    containers = pod_spec.get(field) or []
    if not isinstance(containers, list):
        raise TemplateError(f"{path}.{field}: expected a list, got {type(containers).__name__}")
    for index, container in enumerate(containers):
        if not isinstance(container, Mapping):
            raise TemplateError(f"{path}.{field}[{index}]: expected a mapping, got {type(container).__name__}")
    return containers


def _container_gpus(container: Mapping[str, Any], resource_names: Sequence[str], path: str) -> Decimal:
    resources = container.get("resources") or {}
    requests = resources.get("requests") or {}
    limits = resources.get("limits") or {}
    total = Decimal(0)
    for resource in resource_names:
        if resource in requests:
            total += _quantity(requests[resource], f"{path}.resources.requests[{resource!r}]")
        elif resource in limits:
            total += _quantity(limits[resource], f"{path}.resources.limits[{resource!r}]")
    return total


def _quantity(value: Any, path: str) -> Decimal:
    if isinstance(value, bool):
        raise TemplateError(f"{path}: invalid quantity {value!r}")
    try:
        quantity = parse_quantity(value)
    except (ValueError, TypeError, ArithmeticError):
        raise TemplateError(f"{path}: invalid quantity {value!r}; expected a Kubernetes quantity such as 1 or \"2\"") from None
    if quantity < 0:
        raise TemplateError(f"{path}: quantity must not be negative, got {value!r}")
    return quantity
