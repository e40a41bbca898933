"""Emulation of the Grove operator: the children of each PodCliqueSet, their status, HPAs and gang recovery.

Children per PodCliqueSet replica index i: standalone PodCliques `<pcs>-<i>-<clique>` and scaling groups
`<pcs>-<i>-<group>`; per scaling-group replica j the member PodCliques `<pcs>-<i>-<group>-<j>-<clique>`.
New children start at template values; live children keep their replicas (they are scaled through `/scale`).
No pods exist: a PodClique counts all its replicas as ready unless a test pins a lower number.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from .api import ResourceApi
from .resources import ResourceType
from .selectors import Selector
from .store import now_rfc3339

logger = logging.getLogger(__name__)

MANAGED_BY = "app.kubernetes.io/managed-by"
PART_OF = "app.kubernetes.io/part-of"
NAME = "app.kubernetes.io/name"
COMPONENT = "app.kubernetes.io/component"
PCS_REPLICA_INDEX = "grove.io/podcliqueset-replica-index"
PCSG_LABEL = "grove.io/podcliquescalinggroup"
PCSG_REPLICA_INDEX = "grove.io/podcliquescalinggroup-replica-index"
PODCLIQUE_LABEL = "grove.io/podclique"
OPERATOR = "grove-operator"

COMPONENT_PCS_PODCLIQUE = "pcs-podclique"
COMPONENT_PCSG_PODCLIQUE = "pcsg-podclique"
COMPONENT_PCSG = "pcs-podcliquescalinggroup"
COMPONENT_HPA = "pcs-hpa"

GROVE_API_VERSION = "grove.io/v1alpha1"


def selector_string(labels: dict[str, str]) -> str:
    """Format labels as a selector with keys sorted, as labels.SelectorFromSet(...).String() does."""
    return ",".join(f"{key}={labels[key]}" for key in sorted(labels))


def _owner_reference(owner: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


def _owned_by(obj: dict[str, Any], owner: dict[str, Any]) -> bool:
    return any(reference.get("uid") == owner["metadata"]["uid"]
               for reference in obj["metadata"].get("ownerReferences") or [])


def _condition(previous: dict[str, Any] | None, condition_type: str, is_true: bool, reason_true: str,
               reason_false: str, message: str) -> dict[str, Any]:
    """Build a condition, keeping lastTransitionTime when the status did not change."""
    status = "True" if is_true else "False"
    old = next((c for c in (previous or {}).get("conditions") or [] if c.get("type") == condition_type), None)
    transition = old["lastTransitionTime"] if old and old.get("status") == status else now_rfc3339()
    return {"type": condition_type, "status": status, "reason": reason_true if is_true else reason_false,
            "message": message, "lastTransitionTime": transition}


class GroveController:
    """Reconciles Grove objects in the store the way the operator would, one full pass per `reconcile()`."""

    def __init__(self, api: ResourceApi) -> None:
        self.api = api
        self.store = api.store
        registry = api.registry
        self.pcs_type = registry.resolve("podcliquesets.grove.io")
        self.pcsg_type = registry.resolve("podcliquescalinggroups.grove.io")
        self.pclq_type = registry.resolve("podcliques.grove.io")
        self.hpa_type = registry.resolve("horizontalpodautoscalers.autoscaling")
        self._ready_pins: dict[tuple[str, str], int] = {}

    @property
    def grove_types(self) -> tuple[ResourceType, ...]:
        return (self.pcs_type, self.pcsg_type, self.pclq_type)

    def pin_ready_replicas(self, namespace: str, podclique: str, ready: int | None) -> None:
        """Report at most `ready` ready pods for a PodClique from now on (None: all replicas are ready again)."""
        with self.store.condition:
            if ready is None:
                self._ready_pins.pop((namespace, podclique), None)
            else:
                self._ready_pins[(namespace, podclique)] = ready

    def reconcile(self, only: tuple[str, str] | None = None) -> None:
        """Create and delete children to match every spec, then bring all statuses and HPAs up to date.

        `only` (namespace, name) limits the pass to one PodCliqueSet; a set that no longer
        exists needs nothing, because deleting it cascades to its children.
        """
        with self.store.condition:
            if only is None:
                podcliquesets, _ = self.store.list(self.pcs_type, None)
            else:
                found = self.store.try_get(self.pcs_type, *only)
                podcliquesets = [] if found is None else [found]
            for pcs in podcliquesets:
                self._sync_podcliqueset_children(pcs)
            for pcs in podcliquesets:
                for group in self._owned(self.pcsg_type, pcs):
                    self._sync_scaling_group_members(pcs, group)
            for pcs in podcliquesets:
                self._sync_statuses(pcs)

    def recover(self, namespace: str, pcs_name: str, replica_index: int | None = None) -> None:
        """Recreate the children of one PodCliqueSet replica (or all) at template values, as after gang termination."""
        with self.store.condition:
            pcs = self.store.get(self.pcs_type, namespace, pcs_name)
            for resource_type in (self.pclq_type, self.pcsg_type):
                for child in self._owned(resource_type, pcs):
                    index = child["metadata"]["labels"].get(PCS_REPLICA_INDEX)
                    if replica_index is None or index == str(replica_index):
                        self.store.delete(resource_type, namespace, child["metadata"]["name"],
                                          registry_types=self.api.registry.types)
            logger.info("recovered podcliqueset %s/%s replica index %s", namespace, pcs_name,
                        "all" if replica_index is None else replica_index)
            self.reconcile()

    def _owned(self, resource_type: ResourceType, owner: dict[str, Any]) -> list[dict[str, Any]]:
        namespace = owner["metadata"]["namespace"]
        pcs_name = owner["metadata"]["name"]
        if owner["kind"] != "PodCliqueSet":
            pcs_name = owner["metadata"]["labels"][PART_OF]
        selector = Selector.parse(f"{MANAGED_BY}={OPERATOR},{PART_OF}={pcs_name}", None)
        items, _ = self.store.list(resource_type, namespace, selector)
        return [item for item in items if _owned_by(item, owner)]

    def _base_labels(self, pcs_name: str, own_name: str, component: str) -> dict[str, str]:
        return {MANAGED_BY: OPERATOR, PART_OF: pcs_name, NAME: own_name, COMPONENT: component}

    def _create_child(self, resource_type: ResourceType, owner: dict[str, Any], name: str, labels: dict[str, str],
                      spec: dict[str, Any], annotations: dict[str, str] | None = None) -> None:
        metadata: dict[str, Any] = {"name": name, "namespace": owner["metadata"]["namespace"], "labels": labels,
                                    "ownerReferences": [_owner_reference(owner)]}
        if annotations:
            metadata["annotations"] = dict(annotations)
        obj = {"metadata": metadata, "spec": spec}
        self.store.create(resource_type, obj)
        logger.info("created %s %s/%s", resource_type.kind, metadata["namespace"], name)

    def _delete_unexpected(self, resource_type: ResourceType, owner: dict[str, Any], expected: set[str],
                           component: str) -> None:
        for child in self._owned(resource_type, owner):
            if child["metadata"]["labels"].get(COMPONENT) == component and child["metadata"]["name"] not in expected:
                self.store.delete(resource_type, child["metadata"]["namespace"], child["metadata"]["name"],
                                  registry_types=self.api.registry.types)
                logger.info("deleted %s %s/%s", resource_type.kind, child["metadata"]["namespace"],
                            child["metadata"]["name"])

    def _sync_podcliqueset_children(self, pcs: dict[str, Any]) -> None:
        name, namespace = pcs["metadata"]["name"], pcs["metadata"]["namespace"]
        template = pcs["spec"]["template"]
        groups = template.get("podCliqueScalingGroups") or []
        grouped = {clique for group in groups for clique in group.get("cliqueNames") or []}
        standalone = [clique for clique in template.get("cliques") or [] if clique["name"] not in grouped]
        expected_cliques: set[str] = set()
        expected_groups: set[str] = set()
        expected_hpas: set[str] = set()

        for index in range(pcs["spec"].get("replicas", 0)):
            for clique in standalone:
                child_name = f"{name}-{index}-{clique['name']}"
                expected_cliques.add(child_name)
                if self.store.try_get(self.pclq_type, namespace, child_name) is None:
                    labels = self._base_labels(name, child_name, COMPONENT_PCS_PODCLIQUE)
                    labels |= {PCS_REPLICA_INDEX: str(index)} | (clique.get("labels") or {})
                    self._create_child(self.pclq_type, pcs, child_name, labels, copy.deepcopy(clique["spec"]),
                                       clique.get("annotations"))
                if clique["spec"].get("autoScalingConfig"):
                    expected_hpas.add(child_name)
            for group in groups:
                group_name = f"{name}-{index}-{group['name']}"
                expected_groups.add(group_name)
                if self.store.try_get(self.pcsg_type, namespace, group_name) is None:
                    labels = self._base_labels(name, group_name, COMPONENT_PCSG) | {PCS_REPLICA_INDEX: str(index)}
                    spec = {"replicas": group.get("replicas", 1), "minAvailable": group.get("minAvailable", 1),
                            "cliqueNames": list(group.get("cliqueNames") or [])}
                    self._create_child(self.pcsg_type, pcs, group_name, labels, spec, group.get("annotations"))
                if group.get("scaleConfig"):
                    expected_hpas.add(group_name)

        self._delete_unexpected(self.pclq_type, pcs, expected_cliques, COMPONENT_PCS_PODCLIQUE)
        self._delete_unexpected(self.pcsg_type, pcs, expected_groups, COMPONENT_PCSG)
        self._sync_hpas(pcs, standalone, groups, expected_hpas)

    def _sync_scaling_group_members(self, pcs: dict[str, Any], group: dict[str, Any]) -> None:
        pcs_name, namespace = pcs["metadata"]["name"], pcs["metadata"]["namespace"]
        group_name = group["metadata"]["name"]
        templates = {clique["name"]: clique for clique in pcs["spec"]["template"].get("cliques") or []}
        index = group["metadata"]["labels"][PCS_REPLICA_INDEX]
        expected: set[str] = set()
        for member_index in range(group["spec"].get("replicas", 0)):
            for clique_name in group["spec"].get("cliqueNames") or []:
                member_name = f"{group_name}-{member_index}-{clique_name}"
                expected.add(member_name)
                if self.store.try_get(self.pclq_type, namespace, member_name) is not None:
                    continue
                clique = templates[clique_name]
                labels = self._base_labels(pcs_name, member_name, COMPONENT_PCSG_PODCLIQUE) | {
                    PCS_REPLICA_INDEX: index, PCSG_LABEL: group_name, PCSG_REPLICA_INDEX: str(member_index)}
                labels |= clique.get("labels") or {}
                self._create_child(self.pclq_type, group, member_name, labels, copy.deepcopy(clique["spec"]),
                                   clique.get("annotations"))
        self._delete_unexpected(self.pclq_type, group, expected, COMPONENT_PCSG_PODCLIQUE)

    def _sync_hpas(self, pcs: dict[str, Any], standalone: list[dict[str, Any]], groups: list[dict[str, Any]],
                   expected: set[str]) -> None:
        name, namespace = pcs["metadata"]["name"], pcs["metadata"]["namespace"]
        configs = {f"{name}-{index}-{clique['name']}": ("PodClique", clique["spec"]["autoScalingConfig"])
                   for index in range(pcs["spec"].get("replicas", 0)) for clique in standalone
                   if clique["spec"].get("autoScalingConfig")}
        configs |= {f"{name}-{index}-{group['name']}": ("PodCliqueScalingGroup", group["scaleConfig"])
                    for index in range(pcs["spec"].get("replicas", 0)) for group in groups
                    if group.get("scaleConfig")}
        for hpa_name in sorted(expected):
            target_kind, config = configs[hpa_name]
            spec = {"scaleTargetRef": {"apiVersion": GROVE_API_VERSION, "kind": target_kind, "name": hpa_name},
                    "minReplicas": config.get("minReplicas", 1), "maxReplicas": config["maxReplicas"]}
            if config.get("metrics"):
                spec["metrics"] = copy.deepcopy(config["metrics"])
            existing = self.store.try_get(self.hpa_type, namespace, hpa_name)
            if existing is None:
                self._create_child(self.hpa_type, pcs, hpa_name, self._base_labels(name, hpa_name, COMPONENT_HPA),
                                   spec)
            elif existing["spec"] != spec:
                existing["spec"] = spec
                self.store.update(self.hpa_type, existing, precondition_version=None)
        self._delete_unexpected(self.hpa_type, pcs, expected, COMPONENT_HPA)

    def _ready(self, clique: dict[str, Any]) -> int:
        replicas = clique["spec"].get("replicas", 0)
        pin = self._ready_pins.get((clique["metadata"]["namespace"], clique["metadata"]["name"]))
        return replicas if pin is None else min(pin, replicas)

    def _write_status(self, resource_type: ResourceType, obj: dict[str, Any], status: dict[str, Any]) -> None:
        if obj.get("status") != status:
            obj["status"] = status
            self.store.update(resource_type, obj, precondition_version=None)

    def _clique_available(self, clique: dict[str, Any]) -> bool:
        min_available = clique["spec"].get("minAvailable", clique["spec"].get("replicas", 0))
        return self._ready(clique) >= min_available

    def _sync_clique_status(self, pcs_name: str, clique: dict[str, Any]) -> None:
        replicas = clique["spec"].get("replicas", 0)
        ready = self._ready(clique)
        previous = clique.get("status")
        status: dict[str, Any] = {
            "replicas": replicas, "readyReplicas": ready, "scheduledReplicas": replicas,
            "scheduleGatedReplicas": 0, "updatedReplicas": replicas,
            "observedGeneration": clique["metadata"]["generation"],
            "conditions": [
                _condition(previous, "MinAvailableBreached", not self._clique_available(clique),
                           "InsufficientReadyPods", "SufficientReadyPods",
                           f"ready {ready}, minAvailable {clique['spec'].get('minAvailable', replicas)}"),
                _condition(previous, "PodCliqueScheduled", True, "SufficientScheduledPods",
                           "InsufficientScheduledPods", f"scheduled {replicas}"),
            ],
        }
        if clique["metadata"]["labels"].get(COMPONENT) == COMPONENT_PCS_PODCLIQUE:
            status["hpaPodSelector"] = selector_string(
                {MANAGED_BY: OPERATOR, PART_OF: pcs_name, PODCLIQUE_LABEL: clique["metadata"]["name"]})
        self._write_status(self.pclq_type, clique, status)

    def _sync_statuses(self, pcs: dict[str, Any]) -> None:
        pcs_name, namespace = pcs["metadata"]["name"], pcs["metadata"]["namespace"]
        cliques = {clique["metadata"]["name"]: clique
                   for clique in self.store.list(self.pclq_type, namespace,
                                                 Selector.parse(f"{PART_OF}={pcs_name}", None))[0]}
        for clique in cliques.values():
            self._sync_clique_status(pcs_name, clique)

        # Whether each scaling group meets its minAvailable, keyed by the PodCliqueSet replica index label.
        available_groups: dict[str, list[bool]] = {}
        for group in self._owned(self.pcsg_type, pcs):
            available = sum(
                all(self._clique_available(cliques[name]) for name in
                    (f"{group['metadata']['name']}-{j}-{c}" for c in group["spec"]["cliqueNames"]) if name in cliques)
                for j in range(group["spec"].get("replicas", 0)))
            min_available = group["spec"].get("minAvailable", 1)
            group_index = group["metadata"]["labels"][PCS_REPLICA_INDEX]
            available_groups.setdefault(group_index, []).append(available >= min_available)
            status = {
                "replicas": group["spec"].get("replicas", 0), "availableReplicas": available,
                "scheduledReplicas": group["spec"].get("replicas", 0),
                "updatedReplicas": group["spec"].get("replicas", 0),
                "observedGeneration": group["metadata"]["generation"],
                "selector": selector_string({MANAGED_BY: OPERATOR, PART_OF: pcs_name,
                                             PCSG_LABEL: group["metadata"]["name"]}),
                "conditions": [_condition(group.get("status"), "MinAvailableBreached", available < min_available,
                                          "InsufficientAvailablePCSGReplicas", "SufficientAvailablePCSGReplicas",
                                          f"available {available}, minAvailable {min_available}")],
            }
            self._write_status(self.pcsg_type, group, status)

        replicas = pcs["spec"].get("replicas", 0)
        available_indices = 0
        for index in range(replicas):
            members = [clique for clique in cliques.values()
                       if clique["metadata"]["labels"].get(PCS_REPLICA_INDEX) == str(index)
                       and clique["metadata"]["labels"].get(COMPONENT) == COMPONENT_PCS_PODCLIQUE]
            groups_available = available_groups.get(str(index), [])
            if all(self._clique_available(clique) for clique in members) and all(groups_available):
                available_indices += 1
        status = {"replicas": replicas, "availableReplicas": available_indices, "updatedReplicas": replicas,
                  "observedGeneration": pcs["metadata"]["generation"],
                  "hpaPodSelector": selector_string({MANAGED_BY: OPERATOR, PART_OF: pcs_name})}
        self._write_status(self.pcs_type, self.store.get(self.pcs_type, namespace, pcs_name), status)
        self._sync_hpa_statuses(pcs)

    def _sync_hpa_statuses(self, pcs: dict[str, Any]) -> None:
        for hpa in self._owned(self.hpa_type, pcs):
            target_ref = hpa["spec"]["scaleTargetRef"]
            target_type = self.pclq_type if target_ref["kind"] == "PodClique" else self.pcsg_type
            target = self.store.try_get(target_type, hpa["metadata"]["namespace"], target_ref["name"])
            if target is None:
                continue
            replicas = target["spec"].get("replicas", 0)
            # NOTE: no HPA controller runs; status only mirrors the target, desiredReplicas included.
            self._write_status(self.hpa_type, hpa, {"currentReplicas": replicas, "desiredReplicas": replicas})
