"""Check configuration rules against PodCliqueSet manifests, without a cluster.

`grove-autoscaler validate CONFIG --manifest PCS.yaml` uses it to reject what discovery
would reject at run time (a missing scaling group or clique, a clique inside a scaling group)
and to warn about what would be skipped or clamped (Grove's own autoscaling, gang floors).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from autoscaler.config import Config, LabelSelector, TargetConfig, yaml_error_message


@dataclass
class ManifestReport:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def load_podcliquesets(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Read every PodCliqueSet document of the given YAML files; raise ValueError naming the file."""
    found = []
    for path in paths:
        try:
            documents = list(yaml.safe_load_all(Path(path).read_text(encoding="utf-8")))
        except UnicodeDecodeError as error:
            raise ValueError(f"{path}: not UTF-8 text: invalid byte at position {error.start}") from None
        except OSError as error:
            raise ValueError(f"{path}: cannot read file: {error.strerror}") from None
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: {yaml_error_message(error)}") from None
        podcliquesets = [doc for doc in documents if isinstance(doc, dict) and doc.get("kind") == "PodCliqueSet"]
        if not podcliquesets:
            raise ValueError(f"{path}: no document with kind: PodCliqueSet")
        for document in podcliquesets:
            metadata = document.setdefault("metadata", {})
            if not isinstance(metadata, dict) or not isinstance(metadata.get("name"), str):
                raise ValueError(f"{path}: a PodCliqueSet has no metadata.name")
            metadata.setdefault("namespace", "default")
            found.append(document)
    return found


def selector_matches(selector: LabelSelector, labels: dict[str, str]) -> bool:
    """Evaluate a Kubernetes label selector against an object's labels."""
    if any(labels.get(key) != value for key, value in selector.match_labels.items()):
        return False
    for requirement in selector.match_expressions:
        present = requirement.key in labels
        value = labels.get(requirement.key)
        if requirement.operator == "In" and value not in requirement.values:
            return False
        if requirement.operator == "NotIn" and present and value in requirement.values:
            return False
        if requirement.operator == "Exists" and not present:
            return False
        if requirement.operator == "DoesNotExist" and present:
            return False
    return True


def _selected(rule: TargetConfig, pcs: dict[str, Any]) -> bool:
    metadata = pcs.get("metadata", {})
    if metadata.get("namespace") != rule.pod_clique_sets.namespace:
        return False
    if rule.pod_clique_sets.names and metadata.get("name") not in rule.pod_clique_sets.names:
        return False
    return selector_matches(rule.pod_clique_sets.selector, metadata.get("labels") or {})


def check_manifests(config: Config, podcliquesets: list[dict[str, Any]]) -> ManifestReport:
    """Return the errors and warnings of every rule against the PodCliqueSets it selects."""
    report = ManifestReport()
    for index, rule in enumerate(config.targets):
        path = f"targets[{index}]"
        selected = [pcs for pcs in podcliquesets if _selected(rule, pcs)]
        if not selected:
            report.warnings.append(f"{path}: rule {rule.name!r} selects none of the given PodCliqueSets")
        for pcs in selected:
            _check_rule(path, rule, pcs, report)
    return report


def _check_rule(path: str, rule: TargetConfig, pcs: dict[str, Any], report: ManifestReport) -> None:
    name = pcs["metadata"]["name"]
    template = pcs.get("spec", {}).get("template", {}) or {}
    groups = {group.get("name"): group for group in template.get("podCliqueScalingGroups") or []}
    cliques = template.get("cliques") or []
    overridden = rule.ignore_other_autoscalers or rule.publish_only

    if rule.level == "scalingGroup":
        group = groups.get(rule.scaling_group)
        if group is None:
            report.errors.append(f"{path}.scalingGroup: PodCliqueSet {name} has no scaling group {rule.scaling_group!r}; it has {sorted(groups)}")
            return
        if group.get("scaleConfig") and not overridden:
            report.warnings.append(f"{path}: scaling group {rule.scaling_group!r} of {name} has scaleConfig, so Grove runs its own HPA; the target will be skipped")
        floor = int(group.get("minAvailable", 1))
        if floor > rule.max_replicas:
            report.errors.append(f"{path}.maxReplicas: {rule.max_replicas} is below minAvailable {floor} of {name}/{rule.scaling_group}; raise maxReplicas")
        elif rule.min_replicas < floor:
            report.warnings.append(f"{path}.minReplicas: {rule.min_replicas} is below minAvailable {floor} of {name}/{rule.scaling_group}; the floor applies")
        return

    if rule.level == "clique":
        wanted = [
            clique for clique in cliques
            if (rule.clique.name is not None and clique.get("name") == rule.clique.name)
            or (rule.clique.role_name is not None and (clique.get("spec") or {}).get("roleName") == rule.clique.role_name)
        ]
        if not wanted:
            selector = rule.clique.model_dump(by_alias=True, exclude_none=True)
            report.errors.append(f"{path}.clique: PodCliqueSet {name} has no clique matching {selector}; it has {[c.get('name') for c in cliques]}")
            return
        for clique in wanted:
            _check_clique(path, rule, name, clique, groups, report)


def _check_clique(path: str, rule: TargetConfig, pcs_name: str, clique: dict, groups: dict, report: ManifestReport) -> None:
    clique_name = clique.get("name")
    spec = clique.get("spec") or {}
    group = next((group_name for group_name, group in groups.items() if clique_name in (group.get("cliqueNames") or [])), None)
    if group is not None and not rule.allow_clique_in_scaling_group:
        report.errors.append(
            f"{path}.clique: clique {clique_name!r} of PodCliqueSet {pcs_name} is a member of scaling group {group!r}, "
            "whose members Grove scales together; scale the group, or set allowCliqueInScalingGroup: true"
        )
        return
    if spec.get("autoScalingConfig") and not (rule.ignore_other_autoscalers or rule.publish_only):
        report.warnings.append(f"{path}: clique {clique_name!r} of {pcs_name} has autoScalingConfig, so Grove runs its own HPA; the target will be skipped")
    floor = int(spec.get("minAvailable", spec.get("replicas", 1)))
    if floor > rule.max_replicas:
        report.errors.append(f"{path}.maxReplicas: {rule.max_replicas} is below minAvailable {floor} of {pcs_name}/{clique_name}; raise maxReplicas")
    elif rule.min_replicas < floor:
        report.warnings.append(f"{path}.minReplicas: {rule.min_replicas} is below minAvailable {floor} of {pcs_name}/{clique_name}; the floor applies")
