"""Resource types the emulated API server serves: the Grove CRDs plus the built-in kinds the product uses."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CRD_FILE_PATTERN = "grove.io_*.yaml"


def split_field_path(path: str) -> tuple[str, ...]:
    """Split a CRD field path such as `.spec.replicas` into its keys."""
    if not path.startswith("."):
        raise ValueError(f"invalid field path {path!r}: expected a leading dot, as in .spec.replicas")
    return tuple(path[1:].split("."))


@dataclass(frozen=True)
class ScalePaths:
    """Where the `/scale` subresource of a custom resource reads and writes, as keys from the object root."""

    spec_replicas: tuple[str, ...]
    status_replicas: tuple[str, ...]
    label_selector: tuple[str, ...] | None


@dataclass(frozen=True)
class ResourceType:
    """One served resource: its REST names, scope, subresources and (for custom resources) its schema."""

    group: str
    version: str
    kind: str
    plural: str
    singular: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
    custom: bool = False
    has_status: bool = False
    scale: ScalePaths | None = None
    schema: dict[str, Any] | None = field(default=None, compare=False, repr=False)
    printer_columns: tuple[dict[str, Any], ...] = field(default=(), compare=False, repr=False)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def prefix(self) -> str:
        """URL path of the group version, `/api/v1` for the core group."""
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    @property
    def qualified_plural(self) -> str:
        """Resource name as the real server writes it in error messages (`podcliques.grove.io`)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def create_only(self) -> bool:
        """True for review kinds (TokenReview, SubjectAccessReview) that are computed, never stored."""
        return self.verbs == ("create",)


def resource_type_from_crd(crd: dict[str, Any]) -> list[ResourceType]:
    """Build one ResourceType per served version of an apiextensions.k8s.io/v1 CustomResourceDefinition."""
    spec = crd["spec"]
    names = spec["names"]
    types = []
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        subresources = version.get("subresources") or {}
        scale = None
        if "scale" in subresources:
            scale_spec = subresources["scale"]
            selector_path = scale_spec.get("labelSelectorPath")
            scale = ScalePaths(
                spec_replicas=split_field_path(scale_spec["specReplicasPath"]),
                status_replicas=split_field_path(scale_spec["statusReplicasPath"]),
                label_selector=split_field_path(selector_path) if selector_path else None,
            )
        types.append(
            ResourceType(
                group=spec["group"],
                version=version["name"],
                kind=names["kind"],
                plural=names["plural"],
                singular=names.get("singular", names["kind"].lower()),
                namespaced=spec["scope"] == "Namespaced",
                short_names=tuple(names.get("shortNames", ())),
                categories=tuple(names.get("categories", ())),
                custom=True,
                has_status="status" in subresources,
                scale=scale,
                schema=version["schema"]["openAPIV3Schema"],
                printer_columns=tuple(version.get("additionalPrinterColumns", ())),
            )
        )
    return types


@functools.cache
def _load_crds_cached(directory: str) -> tuple[ResourceType, ...]:
    paths = sorted(Path(directory).glob(CRD_FILE_PATTERN))
    if not paths:
        raise FileNotFoundError(f"no CRD files matching {CRD_FILE_PATTERN} in {directory}")
    types: list[ResourceType] = []
    for path in paths:
        # libyaml parsed grove.io_podcliquesets.yaml in 0.10 s, the pure-Python loader in 1.27 s (one run, 2 cores).
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        for document in yaml.load_all(path.read_text(), Loader=loader):
            if document and document.get("kind") == "CustomResourceDefinition":
                types.extend(resource_type_from_crd(document))
    return tuple(types)


def load_crds(directory: Path) -> tuple[ResourceType, ...]:
    """Load the CRDs in `directory` (files named grove.io_*.yaml), parsing each directory once per process."""
    return _load_crds_cached(str(Path(directory).resolve()))


BUILTIN_TYPES: tuple[ResourceType, ...] = (
    ResourceType(group="", version="v1", kind="Namespace", plural="namespaces", singular="namespace",
                 namespaced=False, short_names=("ns",), has_status=True),
    ResourceType(group="", version="v1", kind="ConfigMap", plural="configmaps", singular="configmap",
                 namespaced=True, short_names=("cm",)),
    ResourceType(group="", version="v1", kind="Event", plural="events", singular="event",
                 namespaced=True, short_names=("ev",)),
    ResourceType(group="events.k8s.io", version="v1", kind="Event", plural="events", singular="event",
                 namespaced=True, short_names=("ev",)),
    ResourceType(group="coordination.k8s.io", version="v1", kind="Lease", plural="leases", singular="lease",
                 namespaced=True),
    ResourceType(group="autoscaling", version="v2", kind="HorizontalPodAutoscaler",
                 plural="horizontalpodautoscalers", singular="horizontalpodautoscaler", namespaced=True,
                 short_names=("hpa",), categories=("all",), has_status=True),
    ResourceType(group="authentication.k8s.io", version="v1", kind="TokenReview", plural="tokenreviews",
                 singular="tokenreview", namespaced=False, verbs=("create",)),
    ResourceType(group="authorization.k8s.io", version="v1", kind="SubjectAccessReview",
                 plural="subjectaccessreviews", singular="subjectaccessreview", namespaced=False,
                 verbs=("create",)),
)


class ResourceRegistry:
    """Lookup of served resource types by URL (group version and plural) and by the names kubectl accepts."""

    def __init__(self, types: tuple[ResourceType, ...]) -> None:
        self.types = types
        self._by_path = {(t.prefix, t.plural): t for t in types}

    def by_path(self, prefix: str, plural: str) -> ResourceType | None:
        return self._by_path.get((prefix, plural))

    def group_versions(self) -> dict[str, list[str]]:
        """Return the served versions of each named group (the core group excluded), in first-seen order."""
        groups: dict[str, list[str]] = {}
        for resource_type in self.types:
            if resource_type.group:
                versions = groups.setdefault(resource_type.group, [])
                if resource_type.version not in versions:
                    versions.append(resource_type.version)
        return groups

    def in_group_version(self, prefix: str) -> list[ResourceType]:
        return [t for t in self.types if t.prefix == prefix]

    def resolve(self, name: str) -> ResourceType:
        """Find a type by plural, singular, short name or kind, optionally qualified with `.group`.

        Ambiguous names resolve to the first match, core group first, as kubectl does for `events`.
        """
        lowered = name.lower()
        for resource_type in self.types:
            aliases = {resource_type.plural, resource_type.singular, resource_type.kind.lower(),
                       *resource_type.short_names}
            qualified = {f"{alias}.{resource_type.group}" for alias in aliases} if resource_type.group else set()
            if lowered in aliases or lowered in qualified:
                return resource_type
        known = ", ".join(sorted({t.plural for t in self.types}))
        raise KeyError(f"unknown resource {name!r}; served resources: {known}")
