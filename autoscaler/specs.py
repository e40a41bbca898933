"""Turn configuration rules and discovered Grove objects into engine target specs.

The live controller discovers objects through the Kubernetes API, replay takes them from the
recorded file and the backtest from its simulated cluster. All three build specs here, so a
rule means the same thing everywhere.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Mapping, Sequence

from autoscaler.config import Config, TargetConfig
from autoscaler.coordination import RatioBand, pair_bands
from autoscaler.engine import TargetSpec
from autoscaler.targets import Kind, TargetRef
from policies.registry import PolicyRegistry, default_registry

# Series labels that a PodMonitor with a labelmap of the pods' Grove labels produces. A rule or
# the top-level seriesLabels overrides them for other scrape setups (Dynamo's frontend, say).
DEFAULT_SERIES_LABELS: Mapping[Kind, Mapping[str, str]] = {
    Kind.PODCLIQUESET: {"namespace": "{namespace}", "app_kubernetes_io_part_of": "{pcs}"},
    Kind.PODCLIQUESCALINGGROUP: {"namespace": "{namespace}", "grove_io_podcliquescalinggroup": "{name}"},
    Kind.PODCLIQUE: {"namespace": "{namespace}", "grove_io_podclique": "{name}"},
}

LEVEL_KINDS = {
    "podcliqueset": Kind.PODCLIQUESET,
    "scalingGroup": Kind.PODCLIQUESCALINGGROUP,
    "clique": Kind.PODCLIQUE,
}

TEMPLATE_FIELDS = ("namespace", "name", "pcs", "index", "scalingGroup", "clique")


@dataclass(frozen=True)
class DiscoveredTarget:
    """A live (or simulated) `/scale` object that a configuration rule selected.

    `index` is the PodCliqueSet replica index (None at the PodCliqueSet level); `floor` is
    the object's minAvailable, 0 where the kind has none.
    """

    ref: TargetRef
    rule: str
    pcs: str
    index: int | None = None
    floor: int = 0
    template_replicas: int | None = None
    scaling_group: str | None = None
    clique: str | None = None
    gpus_per_replica: float | None = None


class SeriesLabelError(ValueError):
    pass


def check_series_template(template: str, where: str) -> None:
    """Raise SeriesLabelError when a label template uses an unknown `{field}`."""
    for _, field_name, _, _ in string.Formatter().parse(template):
        if field_name is not None and field_name not in TEMPLATE_FIELDS:
            allowed = ", ".join("{" + name + "}" for name in TEMPLATE_FIELDS)
            raise SeriesLabelError(f"{where}: unknown placeholder {{{field_name}}} in {template!r}; allowed: {allowed}")


def render_series_labels(templates: Mapping[str, str], target: DiscoveredTarget) -> dict[str, str]:
    values = {
        "namespace": target.ref.namespace,
        "name": target.ref.name,
        "pcs": target.pcs,
        "index": "" if target.index is None else str(target.index),
        "scalingGroup": target.scaling_group or "",
        "clique": target.clique or "",
    }
    return {label: template.format(**values) for label, template in templates.items()}


def series_labels_for(config: Config, rule: TargetConfig, target: DiscoveredTarget, signals: Sequence[str]) -> dict[str, dict[str, str]]:
    """Return, per signal, the label values that identify this target's series.

    Precedence: the rule's signalLabels for that signal, then the rule's seriesLabels, then the
    top-level seriesLabels for the level, then the defaults above.
    """
    level_templates = config.series_labels.get(rule.level) or DEFAULT_SERIES_LABELS[target.ref.kind]
    base = rule.series_labels or level_templates
    return {signal: render_series_labels(rule.signal_labels.get(signal, base), target) for signal in signals}


def build_specs(
    config: Config,
    discovered: Sequence[DiscoveredTarget],
    registry: PolicyRegistry | None = None,
) -> list[TargetSpec]:
    """Build one engine spec per discovered target, in the order given."""
    registry = registry or default_registry()
    rules = {rule.name: rule for rule in config.targets}
    # Policies keep their per-target state in the engine, so one instance serves every target of a rule.
    policies_by_rule: dict[str, tuple] = {}
    specs = []
    for target in discovered:
        rule = rules[target.rule]
        if rule.name not in policies_by_rule:
            policies_by_rule[rule.name] = tuple(registry.create(policy.name, policy.params) for policy in rule.policies)
        policies = policies_by_rule[rule.name]
        signals = [signal for policy in policies for signal in policy.signals()]
        specs.append(
            TargetSpec(
                target=str(target.ref),
                rule=rule.name,
                policies=policies,
                min_replicas=rule.min_replicas,
                max_replicas=rule.max_replicas,
                floor=target.floor,
                behavior=rule.behavior,
                series_labels=series_labels_for(config, rule, target, signals),
                gpus_per_replica=target.gpus_per_replica,
                priority=rule.priority,
                budget_scopes=tuple(budget.name for budget in config.budgets if budget.covers(target.ref.namespace, rule.name)),
            )
        )
    return specs


def build_bands(config: Config, discovered: Sequence[DiscoveredTarget]) -> list[RatioBand]:
    """Expand every configured ratio band into one band per PodCliqueSet replica."""
    bands: list[RatioBand] = []
    for band in config.ratio_bands:
        bands.extend(
            pair_bands(
                name=band.name,
                numerator_rule=band.numerator,
                denominator_rule=band.denominator,
                min_ratio=band.min_ratio,
                max_ratio=band.max_ratio,
                targets=discovered,
            )
        )
    return bands


def budget_limits(config: Config) -> dict[str, float]:
    return {budget.name: budget.max_gpus for budget in config.budgets}
