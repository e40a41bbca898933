"""Grove's PodCliqueSet defaulting and validating webhooks, reduced to the fields that matter for scaling."""

from __future__ import annotations

from typing import Any

from .errors import ApiError
from .resources import ResourceType

PODCLIQUESET_KIND = "PodCliqueSet"


def default_podcliqueset(pcs: dict[str, Any]) -> None:
    """Fill in what Grove's defaulting webhook sets: clique minAvailable and autoScalingConfig.minReplicas.

    Both default to max(1, replicas) of the clique; scaling groups get replicas 1 and minAvailable 1, as the CRD
    defaults would.
    """
    template = (pcs.get("spec") or {}).get("template") or {}
    for clique in template.get("cliques") or []:
        spec = clique.get("spec") or {}
        replicas = spec.get("replicas", 0)
        # The webhook returns the object re-encoded from Go structs, where roleName has no omitempty, so a
        # missing roleName comes back as "" and passes the CRD's `required` (the user guide samples rely on it).
        spec.setdefault("roleName", "")
        if spec.get("minAvailable") is None:
            spec["minAvailable"] = max(1, replicas)
        scaling = spec.get("autoScalingConfig")
        if scaling is not None and scaling.get("minReplicas") is None:
            scaling["minReplicas"] = max(1, replicas)
    for group in template.get("podCliqueScalingGroups") or []:
        group.setdefault("replicas", 1)
        group.setdefault("minAvailable", 1)
        scaling = group.get("scaleConfig")
        if scaling is not None and scaling.get("minReplicas") is None:
            scaling["minReplicas"] = max(1, group["replicas"])


def _check_bounds(field_path: str, replicas: int, min_available: int, scaling: dict[str, Any] | None,
                  errors: list[str]) -> None:
    if not 0 < min_available <= replicas:
        errors.append(f"{field_path}.minAvailable: Invalid value: {min_available}: must be greater than 0 and "
                      f"less than or equal to replicas ({replicas})")
    if scaling is None:
        return
    min_replicas = scaling.get("minReplicas", 1)
    max_replicas = scaling.get("maxReplicas")
    scaling_path = f"{field_path}.{'autoScalingConfig' if 'spec' in field_path else 'scaleConfig'}"
    if min_replicas < min_available:
        errors.append(f"{scaling_path}.minReplicas: Invalid value: {min_replicas}: must be greater than or equal "
                      f"to minAvailable ({min_available})")
    if max_replicas is not None and max_replicas < min_replicas:
        errors.append(f"{scaling_path}.maxReplicas: Invalid value: {max_replicas}: must be greater than or equal "
                      f"to minReplicas ({min_replicas})")


def validate_podcliqueset(pcs: dict[str, Any]) -> list[str]:
    """Return the scaling-related errors Grove's validating webhook reports for a PodCliqueSet.

    NOTE: immutability of minAvailable, cliqueNames and startsAfter on update is not checked.
    """
    errors: list[str] = []
    template = (pcs.get("spec") or {}).get("template") or {}
    cliques = template.get("cliques") or []
    clique_names = [clique.get("name") for clique in cliques]
    grouped: set[str] = set()
    for index, group in enumerate(template.get("podCliqueScalingGroups") or []):
        path = f"spec.template.podCliqueScalingGroups[{index}]"
        for name in group.get("cliqueNames") or []:
            if name not in clique_names:
                errors.append(f"{path}.cliqueNames: Invalid value: {name!r}: no clique with this name in "
                              "spec.template.cliques")
            grouped.add(name)
        _check_bounds(path, group.get("replicas", 1), group.get("minAvailable", 1), group.get("scaleConfig"), errors)
    for index, clique in enumerate(cliques):
        path = f"spec.template.cliques[{index}].spec"
        spec = clique.get("spec") or {}
        replicas = spec.get("replicas", 0)
        _check_bounds(path, replicas, spec.get("minAvailable", replicas), spec.get("autoScalingConfig"), errors)
        if clique.get("name") in grouped and spec.get("autoScalingConfig") is not None:
            errors.append(f"{path}.autoScalingConfig: Forbidden: a clique in a scaling group cannot have its own "
                          "autoScalingConfig")
    return errors


def _is_podcliqueset(resource_type: ResourceType) -> bool:
    return resource_type.custom and resource_type.kind == PODCLIQUESET_KIND


def mutate(resource_type: ResourceType, obj: dict[str, Any]) -> None:
    """Run the defaulting webhook on a PodCliqueSet; other kinds pass unchanged."""
    if _is_podcliqueset(resource_type):
        default_podcliqueset(obj)


def validate(resource_type: ResourceType, obj: dict[str, Any]) -> None:
    """Run the validating webhook on a PodCliqueSet; raise 422 Invalid listing every error."""
    if not _is_podcliqueset(resource_type):
        return
    errors = validate_podcliqueset(obj)
    if errors:
        name = obj.get("metadata", {}).get("name", "")
        raise ApiError(422, "Invalid", f'admission webhook denied the request: PodCliqueSet "{name}" is invalid: '
                                       + "; ".join(errors))
