"""A simulated Grove deployment: which `/scale` objects exist, what a replica costs, and replica lifecycle.

The topology comes from a PodCliqueSet manifest. Each configuration rule is matched against
it the way the live controller matches live objects, giving one `DiscoveredTarget` per
scalable object of PodCliqueSet replica 0: a scaling group (`<pcs>-0-<group>`) or a standalone
clique (`<pcs>-0-<clique>`). Every target serves either prefill or decode, and its name or
roleName must contain that word. GPUs per replica come from the pod templates' GPU requests; when a template requests
none, each pod counts `gpus_per_pod` GPUs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import yaml

from autoscaler.manifests import selector_matches
from autoscaler.config import Config, TargetConfig
from autoscaler.gpus import TemplateError, gpus_per_replica
from autoscaler.specs import DiscoveredTarget
from autoscaler.targets import Kind, TargetRef
from autoscaler.backtest.signals import DECODE, PREFILL


class TopologyError(ValueError):
    """A manifest or rule that the simulated cluster cannot represent; the message names the field."""


@dataclass(frozen=True)
class SimTarget:
    """One simulated `/scale` object: its discovered form, role, and template replicas."""

    discovered: DiscoveredTarget
    role: str
    gpus_per_replica: float
    template_replicas: int

    @property
    def name(self) -> str:
        return str(self.discovered.ref)


@dataclass(frozen=True)
class Topology:
    pcs: Mapping[str, Any] = field(repr=False)
    targets: tuple[SimTarget, ...]

    def by_role(self, role: str) -> SimTarget:
        for target in self.targets:
            if target.role == role:
                return target
        raise TopologyError(f"no target serves {role}")


def default_manifest() -> dict[str, Any]:
    """Return the bundled multi-node disaggregated PodCliqueSet (prefill and decode scaling groups)."""
    text = resources.files("autoscaler.data").joinpath("multi-node-disaggregated.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def load_manifest(path: str | Path) -> dict[str, Any]:
    """Read the first PodCliqueSet document of a YAML file; raise TopologyError."""
    path = Path(path)
    try:
        documents = list(yaml.safe_load_all(read_text(path)))
    except OSError as error:
        raise TopologyError(f"{path}: cannot read file: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise TopologyError(describe_decode_error(path, error)) from None
    except yaml.YAMLError as error:
        raise TopologyError(describe_yaml_error(path, error)) from None
    for document in documents:
        if isinstance(document, dict) and document.get("kind") == "PodCliqueSet":
            return document
    raise TopologyError(f"{path}: no document with kind: PodCliqueSet")


def read_text(path: Path) -> str:
    """Return a file's text decoded as UTF-8; raise OSError or UnicodeDecodeError."""
    return path.read_bytes().decode("utf-8")


def describe_decode_error(path: Path, error: UnicodeDecodeError) -> str:
    """Return a one-line message naming the file and the first byte that is not UTF-8."""
    line = error.object.count(b"\n", 0, error.start) + 1
    return f"{path}:{line}: not UTF-8 text (invalid byte 0x{error.object[error.start]:02x} at byte offset {error.start})"


def describe_yaml_error(path: Path, error: yaml.YAMLError) -> str:
    """Return a one-line message naming the file, the line and column of the YAML mark, and the problem.

    PyYAML's own text names the stream `<unicode string>` when it parsed a string, and spans lines.
    """
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    context = getattr(error, "context", None)
    detail = f"{context}, {problem}" if context else problem
    if mark is None:
        return f"{path}: invalid YAML: {detail}"
    return f"{path}:{mark.line + 1}:{mark.column + 1}: invalid YAML: {detail}"


def build_topology(config: Config, manifest: Mapping[str, Any], *, gpus_per_pod: float = 1.0) -> Topology:
    """Match every rule of `config` against the manifest; raise TopologyError unless exactly one prefill and one decode target result."""
    targets = discover_targets(config, manifest, gpus_per_pod=gpus_per_pod)
    roles = [target.role for target in targets]
    for role in (PREFILL, DECODE):
        if roles.count(role) != 1:
            found = ", ".join(f"{t.name} ({t.role or 'no role'})" for t in targets) or "none"
            raise TopologyError(
                "the backtest needs exactly one prefill and one decode target in the manifest's PodCliqueSet; "
                f"the configuration selects: {found}"
            )
    return Topology(pcs=manifest, targets=tuple(targets))


def discover_targets(
    config: Config, manifest: Mapping[str, Any], *, gpus_per_pod: float = 1.0, require_role: bool = True
) -> list[SimTarget]:
    """Return the targets every rule selects in the manifest.

    With `require_role=False`, a target whose name shows neither role gets the role "" instead
    of an error.
    """
    if gpus_per_pod <= 0 or not math.isfinite(gpus_per_pod):
        raise TopologyError(f"invalid gpus per pod {gpus_per_pod!r}: must be a positive number")
    metadata = manifest.get("metadata") or {}
    pcs_name = metadata.get("name")
    namespace = metadata.get("namespace", "default")
    if not pcs_name:
        raise TopologyError("manifest: metadata.name is missing")

    targets = []
    for rule in config.targets:
        if not _rule_selects(rule, pcs_name, namespace, metadata.get("labels") or {}):
            continue
        targets.append(_target_for_rule(rule, manifest, pcs_name, namespace, gpus_per_pod, require_role))
    return targets


def _rule_selects(rule: TargetConfig, pcs_name: str, namespace: str, labels: Mapping[str, str]) -> bool:
    selector = rule.pod_clique_sets
    if selector.namespace != namespace:
        return False
    if selector.names and pcs_name not in selector.names:
        return False
    return selector_matches(selector.selector, dict(labels))


def _target_for_rule(
    rule: TargetConfig, manifest: Mapping[str, Any], pcs_name: str, namespace: str, gpus_per_pod: float, require_role: bool
) -> SimTarget:
    template = (manifest.get("spec") or {}).get("template") or {}
    cliques = {clique.get("name"): clique for clique in template.get("cliques") or []}
    groups = {group.get("name"): group for group in template.get("podCliqueScalingGroups") or []}

    if rule.level == "podcliqueset":
        # NOTE: a PodCliqueSet replica contains prefill and decode together, but the serving
        # model scales the two roles separately, so this level is not simulated.
        raise TopologyError(f"target rule {rule.name!r}: level podcliqueset is not supported by the backtest; use scalingGroup or clique rules")

    if rule.level == "scalingGroup":
        group = groups.get(rule.scaling_group)
        if group is None:
            raise TopologyError(f"target rule {rule.name!r}: scalingGroup {rule.scaling_group!r} not found in the manifest; known: {sorted(groups)}")
        member_names = list(group.get("cliqueNames") or [])
        pods = sum(int((cliques.get(name) or {}).get("spec", {}).get("replicas", 1)) for name in member_names)
        role = _role_of(rule, [str(rule.scaling_group)] + member_names + [_role_name(cliques.get(n)) for n in member_names], require_role)
        ref = TargetRef(namespace, Kind.PODCLIQUESCALINGGROUP, f"{pcs_name}-0-{rule.scaling_group}")
        gpus = _gpus(manifest, "scalingGroup", str(rule.scaling_group), pods, gpus_per_pod, rule)
        replicas = int(group.get("replicas", 1))
        floor = int(group.get("minAvailable", 1))
        discovered = DiscoveredTarget(
            ref=ref, rule=rule.name, pcs=pcs_name, index=0, floor=floor, template_replicas=replicas,
            scaling_group=rule.scaling_group, gpus_per_replica=gpus,
        )
        return SimTarget(discovered, role, gpus, replicas)

    assert rule.clique is not None
    if rule.clique.name is not None:
        matches = [clique for name, clique in cliques.items() if name == rule.clique.name]
    else:
        matches = [clique for clique in cliques.values() if _role_name(clique) == rule.clique.role_name]
    if len(matches) != 1:
        selected = rule.clique.name or rule.clique.role_name
        raise TopologyError(f"target rule {rule.name!r}: clique {selected!r} matches {len(matches)} cliques in the manifest; known: {sorted(cliques)}")
    clique = matches[0]
    name = str(clique.get("name"))
    in_group = [group_name for group_name, group in groups.items() if name in (group.get("cliqueNames") or [])]
    if in_group:
        raise TopologyError(
            f"target rule {rule.name!r}: clique {name!r} belongs to scaling group {in_group[0]!r}; "
            "the backtest scales whole gangs, so target the scaling group"
        )
    role = _role_of(rule, [name, _role_name(clique)], require_role)
    ref = TargetRef(namespace, Kind.PODCLIQUE, f"{pcs_name}-0-{name}")
    gpus = _gpus(manifest, "clique", name, 1, gpus_per_pod, rule)
    spec = clique.get("spec") or {}
    replicas = int(spec.get("replicas", 1))
    discovered = DiscoveredTarget(
        ref=ref, rule=rule.name, pcs=pcs_name, index=0, floor=int(spec.get("minAvailable", replicas)),
        template_replicas=replicas, clique=name, gpus_per_replica=gpus,
    )
    return SimTarget(discovered, role, gpus, replicas)


def _role_name(clique: Mapping[str, Any] | None) -> str:
    return str(((clique or {}).get("spec") or {}).get("roleName") or "")


def _role_of(rule: TargetConfig, names: list[str], require_role: bool) -> str:
    text = " ".join(names).lower()
    is_prefill = "prefill" in text
    is_decode = "decode" in text
    if is_prefill != is_decode:
        return PREFILL if is_prefill else DECODE
    if not require_role:
        return ""
    raise TopologyError(
        f"target rule {rule.name!r}: cannot tell whether {', '.join(n for n in names if n)} serves prefill or decode; "
        "the scaling group, clique or roleName must contain 'prefill' or 'decode'"
    )


def _gpus(manifest: Mapping[str, Any], level: str, name: str, pods: int, gpus_per_pod: float, rule: TargetConfig) -> float:
    try:
        requested = gpus_per_replica(manifest, level, name)
    except TemplateError as error:
        raise TopologyError(f"target rule {rule.name!r}: {error}") from None
    return requested if requested > 0 else pods * gpus_per_pod


@dataclass
class Replica:
    """One simulated replica; times are seconds of simulated time."""

    id: int
    created: float
    ready_at: float
    draining: bool = False
    gone_at: float | None = None

    def exists_at(self, time: float) -> bool:
        return self.created <= time and (self.gone_at is None or time < self.gone_at)


class ReplicaPool:
    """Replicas of one role: new ones serve after the cold start, removed ones drain first.

    Scale-down removes the newest replicas first, as Grove removes the highest indices. A
    replica still starting is deleted at once. A serving one takes no new work and is deleted
    when its in-flight work ends, at the `gone_at` that the serving model sets.
    """

    def __init__(self, role: str, gpus_per_replica: float, cold_start_s: float) -> None:
        self.role = role
        self.gpus_per_replica = gpus_per_replica
        self.cold_start_s = cold_start_s
        self.replicas: list[Replica] = []
        self._current: list[Replica] = []
        self._pruned_at = -math.inf
        self._live_count = 0

    @property
    def current(self) -> list[Replica]:
        """Replicas not yet deleted for good: `replicas` keeps every replica ever created for
        accounting, and scanning it on every tick would grow with the length of the run."""
        if len(self._current) > 4 * self._live_count + 8:
            self._current = [replica for replica in self._current if replica.gone_at is None or replica.gone_at > self._pruned_at]
        return self._current

    def prune(self, now: float) -> None:
        """Forget, for scans, the replicas deleted at or before `now`."""
        self._pruned_at = now
        self._current = [replica for replica in self._current if replica.gone_at is None or replica.gone_at > now]

    def live(self) -> list[Replica]:
        return [replica for replica in self.current if not replica.draining and replica.gone_at is None]

    @property
    def live_count(self) -> int:
        """Replicas the `/scale` object counts: starting and serving, not draining."""
        return self._live_count

    def start_warm(self, count: int) -> list[Replica]:
        return [self._add(0.0, 0.0) for _ in range(count)]

    def scale_to(self, count: int, now: float) -> tuple[list[Replica], list[Replica]]:
        """Return (added, removed); removed ones still starting are gone at `now`."""
        live = self.live()
        added: list[Replica] = []
        removed: list[Replica] = []
        if count > len(live):
            added = [self._add(now, now + self.cold_start_s) for _ in range(count - len(live))]
        elif count < len(live):
            for replica in sorted(live, key=lambda r: r.id, reverse=True)[: len(live) - count]:
                replica.draining = True
                if replica.ready_at > now:
                    replica.gone_at = now
                removed.append(replica)
        self._live_count = count
        return added, removed

    def ready(self, now: float) -> list[Replica]:
        return [r for r in self.current if r.ready_at <= now and r.gone_at is None and not r.draining]

    def gpu_seconds(self, start: float, end: float) -> float:
        total = 0.0
        for replica in self.replicas:
            gone = end if replica.gone_at is None else min(replica.gone_at, end)
            total += max(0.0, gone - max(replica.created, start))
        return total * self.gpus_per_replica

    def count_timeline(self, times: np.ndarray) -> np.ndarray:
        """Return the number of existing replicas (starting, serving or draining) at each time."""
        created = np.sort([replica.created for replica in self.replicas])
        gone = np.sort([np.inf if replica.gone_at is None else replica.gone_at for replica in self.replicas])
        return np.searchsorted(created, times, side="right") - np.searchsorted(gone, times, side="right")

    def _add(self, created: float, ready_at: float) -> Replica:
        replica = Replica(id=len(self.replicas), created=created, ready_at=ready_at)
        self.replicas.append(replica)
        self._current.append(replica)
        self._live_count += 1
        return replica
