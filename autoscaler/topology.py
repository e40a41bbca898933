"""Discover the live `/scale` objects that configuration rules select.

Children are found through Grove's labels (part-of, replica index, scaling group) and the
names Grove gives them, so a PodCliqueSet that grows brings its new indices under their
rules on the next tick, and removed indices simply stop appearing.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

from kubernetes.client.exceptions import ApiException

from autoscaler.config import Config, TargetConfig
from autoscaler.gpus import TemplateError, gpus_per_replica
from autoscaler.kube import TRANSPORT_ERRORS, KubeClient
from autoscaler.specs import DiscoveredTarget
from autoscaler.targets import Kind, TargetRef

logger = logging.getLogger(__name__)

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_PCS_INDEX = "grove.io/podcliqueset-replica-index"
LABEL_PCSG = "grove.io/podcliquescalinggroup"
LABEL_PCSG_INDEX = "grove.io/podcliquescalinggroup-replica-index"
GROVE_CHILDREN = f"{LABEL_MANAGED_BY}=grove-operator"


@dataclass(frozen=True)
class LiveTarget:
    """A discovered target with its live `/scale` value and the resourceVersion it was read at."""

    target: DiscoveredTarget
    replicas: int
    ready_replicas: int | None
    resource_version: str | None
    uid: str | None
    podcliqueset: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)
    obj: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)


@dataclass
class Discovery:
    targets: list[LiveTarget] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _template(pcs: dict[str, Any]) -> dict[str, Any]:
    return pcs.get("spec", {}).get("template", {}) or {}


def _template_cliques(pcs: dict[str, Any]) -> list[dict[str, Any]]:
    return list(_template(pcs).get("cliques", []) or [])


def _template_groups(pcs: dict[str, Any]) -> list[dict[str, Any]]:
    return list(_template(pcs).get("podCliqueScalingGroups", []) or [])


def _selected_cliques(rule: TargetConfig, pcs: dict[str, Any]) -> list[dict[str, Any]]:
    assert rule.clique is not None
    if rule.clique.name is not None:
        return [clique for clique in _template_cliques(pcs) if clique.get("name") == rule.clique.name]
    return [clique for clique in _template_cliques(pcs) if clique.get("spec", {}).get("roleName") == rule.clique.role_name]


def _group_of(clique_name: str, pcs: dict[str, Any]) -> str | None:
    for group in _template_groups(pcs):
        if clique_name in (group.get("cliqueNames") or []):
            return group.get("name")
    return None


def _index(obj: dict[str, Any], label: str) -> int | None:
    value = obj.get("metadata", {}).get("labels", {}).get(label)
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _with_gpus(target: DiscoveredTarget, pcs: dict[str, Any], level: str, resources: Sequence[str]) -> DiscoveredTarget:
    """Fill GPUs per replica from the PodCliqueSet template; None when the template is invalid."""
    name = {"podcliqueset": None, "scalingGroup": target.scaling_group, "clique": target.clique}[level]
    try:
        gpus = gpus_per_replica(pcs, level, name, resource_names=tuple(resources))
    except TemplateError as error:
        logger.warning("%s: cannot count GPUs per replica, so no GPU budget applies to it: %s", target.ref, error)
        return target
    return dataclasses.replace(target, gpus_per_replica=float(gpus))


def _live(target: DiscoveredTarget, obj: dict[str, Any], pcs: dict[str, Any]) -> LiveTarget:
    metadata = obj.get("metadata", {})
    return LiveTarget(
        target=target,
        replicas=int(obj.get("spec", {}).get("replicas", 0)),
        ready_replicas=_ready(obj),
        resource_version=metadata.get("resourceVersion"),
        uid=metadata.get("uid"),
        podcliqueset=pcs,
        obj=obj,
    )


def _ready(obj: dict[str, Any]) -> int | None:
    """Return ready pods for a PodClique, available replicas for the other kinds, if reported."""
    status = obj.get("status") or {}
    value = status.get("readyReplicas", status.get("availableReplicas"))
    return None if value is None else int(value)


def _min_available(obj: dict[str, Any], template_spec: dict[str, Any], default: int) -> int:
    """Return the live minAvailable, else the template's, else Grove's default for the kind."""
    for source in (obj.get("spec", {}), template_spec):
        value = source.get("minAvailable")
        if value is not None:
            return int(value)
    return default


class _ListCache:
    """One list call per kind, namespace and selector per tick, with children grouped by owner."""

    def __init__(self, kube: KubeClient) -> None:
        self.kube = kube
        self._podcliquesets: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._children: dict[tuple[str, Kind], dict[str, list[dict[str, Any]]]] = {}

    def podcliquesets(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        key = (namespace, selector)
        if key not in self._podcliquesets:
            self._podcliquesets[key] = self.kube.list_objects(Kind.PODCLIQUESET, namespace, selector)
        return self._podcliquesets[key]

    def children(self, namespace: str, kind: Kind, pcs_name: str) -> list[dict[str, Any]]:
        """Return the Grove-managed objects of `kind` labelled as part of `pcs_name`."""
        key = (namespace, kind)
        if key not in self._children:
            grouped: dict[str, list[dict[str, Any]]] = {}
            for obj in self.kube.list_objects(kind, namespace, GROVE_CHILDREN):
                owner = obj.get("metadata", {}).get("labels", {}).get(LABEL_PART_OF)
                grouped.setdefault(owner, []).append(obj)
            self._children[key] = grouped
        return self._children[key].get(pcs_name, [])


class TopologyReader:
    """Lists the objects behind every rule, with one list call per kind and namespace per tick."""

    def __init__(self, kube: KubeClient) -> None:
        self.kube = kube

    def discover(self, config: Config) -> Discovery:
        discovery = Discovery()
        levels = {rule.name: rule.level for rule in config.targets}
        cache = _ListCache(self.kube)
        for rule in config.targets:
            try:
                self._discover_rule(rule, cache, discovery)
            except ApiException as error:
                message = f"target rule {rule.name!r}: listing objects in namespace {rule.pod_clique_sets.namespace!r} failed: HTTP {error.status} {error.reason}"
                logger.error(message)
                discovery.errors.append(message)
            except TRANSPORT_ERRORS as error:
                message = f"target rule {rule.name!r}: listing objects in namespace {rule.pod_clique_sets.namespace!r} failed: {type(error).__name__}: {error}"
                logger.error(message)
                discovery.errors.append(message)
        if config.budgets:
            # GPUs per replica matter only to budgets; counting them costs a template walk per target.
            discovery.targets = [
                dataclasses.replace(live, target=_with_gpus(live.target, live.podcliqueset, levels[live.target.rule], config.gpu_resources))
                for live in discovery.targets
            ]
        return discovery

    def _discover_rule(self, rule: TargetConfig, cache: _ListCache, discovery: Discovery) -> None:
        namespace = rule.pod_clique_sets.namespace
        podcliquesets = cache.podcliquesets(namespace, rule.pod_clique_sets.selector.to_string())
        if rule.pod_clique_sets.names:
            podcliquesets = [pcs for pcs in podcliquesets if pcs["metadata"]["name"] in rule.pod_clique_sets.names]
        for pcs in podcliquesets:
            pcs_name = pcs["metadata"]["name"]
            if rule.level == "podcliqueset":
                ref = TargetRef(namespace, Kind.PODCLIQUESET, pcs_name)
                discovery.targets.append(_live(DiscoveredTarget(ref=ref, rule=rule.name, pcs=pcs_name), pcs, pcs))
            elif rule.level == "scalingGroup":
                self._scaling_groups(rule, pcs, cache.children(namespace, Kind.PODCLIQUESCALINGGROUP, pcs_name), discovery)
            else:
                self._cliques(rule, pcs, cache.children(namespace, Kind.PODCLIQUE, pcs_name), discovery)

    def _scaling_groups(self, rule: TargetConfig, pcs: dict, groups: list[dict], discovery: Discovery) -> None:
        pcs_name = pcs["metadata"]["name"]
        template = next((group for group in _template_groups(pcs) if group.get("name") == rule.scaling_group), None)
        if template is None:
            message = f"target rule {rule.name!r}: PodCliqueSet {pcs_name} has no scaling group {rule.scaling_group!r} in its template"
            logger.warning(message)
            discovery.errors.append(message)
            return
        for group in groups:
            labels = group.get("metadata", {}).get("labels", {})
            index = _index(group, LABEL_PCS_INDEX)
            if labels.get(LABEL_PART_OF) != pcs_name or index is None:
                continue
            if group["metadata"]["name"] != f"{pcs_name}-{index}-{rule.scaling_group}":
                continue
            ref = TargetRef(pcs["metadata"]["namespace"], Kind.PODCLIQUESCALINGGROUP, group["metadata"]["name"])
            target = DiscoveredTarget(
                ref=ref,
                rule=rule.name,
                pcs=pcs_name,
                index=index,
                floor=_min_available(group, template, default=1),
                template_replicas=int(template.get("replicas", 1)),
                scaling_group=rule.scaling_group,
            )
            discovery.targets.append(_live(target, group, pcs))

    def _cliques(self, rule: TargetConfig, pcs: dict, cliques: list[dict], discovery: Discovery) -> None:
        pcs_name = pcs["metadata"]["name"]
        selected = _selected_cliques(rule, pcs)
        if not selected:
            message = f"target rule {rule.name!r}: PodCliqueSet {pcs_name} has no clique matching {rule.clique.model_dump(by_alias=True, exclude_none=True)}"
            logger.warning(message)
            discovery.errors.append(message)
            return
        for template in selected:
            clique_name = template["name"]
            group_name = _group_of(clique_name, pcs)
            if group_name is not None and not rule.allow_clique_in_scaling_group:
                message = (
                    f"target rule {rule.name!r}: clique {clique_name!r} of PodCliqueSet {pcs_name} is a member of scaling group "
                    f"{group_name!r}; scale the group, or set allowCliqueInScalingGroup: true"
                )
                logger.error(message)
                discovery.errors.append(message)
                continue
            for obj in cliques:
                index = _index(obj, LABEL_PCS_INDEX)
                if obj.get("metadata", {}).get("labels", {}).get(LABEL_PART_OF) != pcs_name or index is None:
                    continue
                if not _is_clique_instance(obj, pcs_name, index, group_name, clique_name):
                    continue
                spec = template.get("spec", {})
                ref = TargetRef(pcs["metadata"]["namespace"], Kind.PODCLIQUE, obj["metadata"]["name"])
                target = DiscoveredTarget(
                    ref=ref,
                    rule=rule.name,
                    pcs=pcs_name,
                    index=index,
                    floor=_min_available(obj, spec, default=int(spec.get("replicas", 1))),
                    template_replicas=int(spec.get("replicas", 1)),
                    scaling_group=group_name,
                    clique=clique_name,
                )
                discovery.targets.append(_live(target, obj, pcs))


def _is_clique_instance(obj: dict, pcs_name: str, index: int, group_name: str | None, clique_name: str) -> bool:
    name = obj["metadata"]["name"]
    if group_name is None:
        return name == f"{pcs_name}-{index}-{clique_name}"
    group_index = _index(obj, LABEL_PCSG_INDEX)
    return group_index is not None and name == f"{pcs_name}-{index}-{group_name}-{group_index}-{clique_name}"
