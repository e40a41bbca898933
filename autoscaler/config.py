"""Configuration file: typed, validated, and every error names the field path and the bad value."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(Exception):
    """An invalid configuration; `problems` contains one message per invalid field."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: invalid configuration:\n" + "\n".join(f"  {p}" for p in problems))


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _reject_booleans_for_numbers(cls, data: Any) -> Any:
        """Reject `true`/`false` where a number is expected; pydantic would read them as 1 and 0."""
        if not isinstance(data, dict):
            return data
        for name, field_info in cls.model_fields.items():
            key = field_info.alias if field_info.alias in data else name
            value = data.get(key)
            if isinstance(value, bool) and field_info.annotation in (int, float, int | None, float | None):
                raise ValueError(f"{key}: expected a number, got {value!r}")
        return data


# --- HPA-shaped behavior (autoscaling/v2 HorizontalPodAutoscalerBehavior) ---------------------


class ScalingPolicy(Strict):
    """One rate limit: at most `value` pods or percent of change per `periodSeconds`."""

    type: Literal["Pods", "Percent"]
    value: int = Field(gt=0)
    period_seconds: int = Field(alias="periodSeconds", gt=0, le=1800)


class ScalingRules(Strict):
    """Rules for one direction; unset fields take the HPA defaults for that direction."""

    stabilization_window_seconds: int | None = Field(default=None, alias="stabilizationWindowSeconds", ge=0, le=3600)
    select_policy: Literal["Max", "Min", "Disabled"] = Field(default="Max", alias="selectPolicy")
    policies: list[ScalingPolicy] | None = Field(default=None, min_length=1)


class Behavior(Strict):
    """HPA `behavior`. Absent on a target means the HPA's legacy limits, as an HPA without one."""

    scale_up: ScalingRules | None = Field(default=None, alias="scaleUp")
    scale_down: ScalingRules | None = Field(default=None, alias="scaleDown")


# --- Metric source --------------------------------------------------------------------------


class PrometheusConfig(Strict):
    url: str
    bearer_token_file: Path | None = Field(default=None, alias="bearerTokenFile")
    ca_file: Path | None = Field(default=None, alias="caFile")
    insecure_skip_verify: bool = Field(default=False, alias="insecureSkipVerify")
    timeout_seconds: float = Field(default=5.0, alias="timeoutSeconds", gt=0, le=120)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https://, got {value!r}")
        return value.rstrip("/")


class CustomSignal(Strict):
    """A signal defined by a PromQL template.

    `{selector}` is replaced by the label matchers of the tick's targets and `{by}` by the
    grouping labels, so the query still runs once per tick for all targets.
    """

    query: str
    idle_when_absent: bool = Field(default=False, alias="idleWhenAbsent")

    @field_validator("query")
    @classmethod
    def _check_placeholders(cls, value: str) -> str:
        for placeholder in ("{selector}", "{by}"):
            if placeholder not in value:
                raise ValueError(f"must contain {placeholder}, got {value!r}")
        return value


class MetricsConfig(Strict):
    prometheus: PrometheusConfig | None = None
    preset: Literal["dynamo", "vllm", "sglang"] = "dynamo"
    window_seconds: int = Field(default=60, alias="windowSeconds", ge=10, le=3600)
    signals: dict[str, CustomSignal] = Field(default_factory=dict)


# --- Targets --------------------------------------------------------------------------------


class LabelSelectorRequirement(Strict):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_values(self) -> LabelSelectorRequirement:
        needs_values = self.operator in ("In", "NotIn")
        if needs_values and not self.values:
            raise ValueError(f"operator {self.operator} needs a non-empty values list")
        if not needs_values and self.values:
            raise ValueError(f"operator {self.operator} takes no values, got {self.values}")
        return self


class LabelSelector(Strict):
    match_labels: dict[str, str] = Field(default_factory=dict, alias="matchLabels")
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list, alias="matchExpressions")

    def to_string(self) -> str:
        """Render as a Kubernetes label selector string for list calls."""
        parts = [f"{key}={value}" for key, value in sorted(self.match_labels.items())]
        for requirement in self.match_expressions:
            if requirement.operator == "Exists":
                parts.append(requirement.key)
            elif requirement.operator == "DoesNotExist":
                parts.append(f"!{requirement.key}")
            else:
                operator = "in" if requirement.operator == "In" else "notin"
                parts.append(f"{requirement.key} {operator} ({','.join(requirement.values)})")
        return ",".join(parts)


class PodCliqueSetSelector(Strict):
    namespace: str
    selector: LabelSelector = Field(default_factory=LabelSelector)
    names: list[str] = Field(default_factory=list)


class CliqueSelector(Strict):
    """A clique of the PodCliqueSet template, by template name or by roleName (exactly one)."""

    name: str | None = None
    role_name: str | None = Field(default=None, alias="roleName")

    @model_validator(mode="after")
    def _one_of(self) -> CliqueSelector:
        if (self.name is None) == (self.role_name is None):
            raise ValueError(f"set exactly one of name or roleName, got name={self.name!r} roleName={self.role_name!r}")
        return self


class PolicyConfig(Strict):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


SeriesLabels = dict[str, str]


class TargetConfig(Strict):
    """One rule: which objects it selects, how they are scaled, and how series map to them."""

    name: str
    pod_clique_sets: PodCliqueSetSelector = Field(alias="podCliqueSets")
    level: Literal["podcliqueset", "scalingGroup", "clique"]
    scaling_group: str | None = Field(default=None, alias="scalingGroup")
    clique: CliqueSelector | None = None
    allow_clique_in_scaling_group: bool = Field(default=False, alias="allowCliqueInScalingGroup")
    policies: list[PolicyConfig] = Field(min_length=1)
    min_replicas: int = Field(default=1, alias="minReplicas", ge=0, le=100_000)
    max_replicas: int = Field(alias="maxReplicas", ge=1, le=100_000)
    behavior: Behavior | None = None
    series_labels: SeriesLabels | None = Field(default=None, alias="seriesLabels")
    signal_labels: dict[str, SeriesLabels] = Field(default_factory=dict, alias="signalLabels")
    priority: int = 0
    ignore_other_autoscalers: bool = Field(default=False, alias="ignoreOtherAutoscalers")
    publish_only: bool = Field(default=False, alias="publishOnly")

    @model_validator(mode="after")
    def _check_level(self) -> TargetConfig:
        if self.level == "scalingGroup" and not self.scaling_group:
            raise ValueError("level scalingGroup needs scalingGroup (the group's name in the template)")
        if self.level == "clique" and self.clique is None:
            raise ValueError("level clique needs clique (name or roleName)")
        if self.level == "podcliqueset" and (self.scaling_group or self.clique):
            raise ValueError("level podcliqueset takes neither scalingGroup nor clique")
        if self.level == "scalingGroup" and self.clique is not None:
            raise ValueError("level scalingGroup takes no clique; scaling a group scales all its member cliques")
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"minReplicas {self.min_replicas} is greater than maxReplicas {self.max_replicas}")
        if self.min_replicas == 0 and self.level != "podcliqueset":
            raise ValueError(f"minReplicas 0 is allowed only at level podcliqueset; Grove supports scale-to-zero for the PodCliqueSet only (level {self.level})")
        return self


class BudgetConfig(Strict):
    """A GPU budget shared by the targets of `rules` in `namespaces` (each list: all when empty)."""

    name: str
    max_gpus: float = Field(alias="maxGpus", gt=0, le=10_000_000)
    namespaces: list[str] = Field(default_factory=list)
    rules: list[str] = Field(default_factory=list)

    def covers(self, namespace: str, rule: str) -> bool:
        return (not self.namespaces or namespace in self.namespaces) and (not self.rules or rule in self.rules)


class RatioBandConfig(Strict):
    """Keep replicas(numerator rule) / replicas(denominator rule) within [minRatio, maxRatio] per PodCliqueSet replica."""

    name: str
    numerator: str
    denominator: str
    min_ratio: float = Field(alias="minRatio", gt=0)
    max_ratio: float = Field(alias="maxRatio", gt=0)

    @model_validator(mode="after")
    def _check_order(self) -> RatioBandConfig:
        if self.min_ratio > self.max_ratio:
            raise ValueError(f"minRatio {self.min_ratio} is greater than maxRatio {self.max_ratio}")
        if self.numerator == self.denominator:
            raise ValueError(f"numerator and denominator name the same rule {self.numerator!r}")
        return self


LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
SERIES_LEVELS = ("podcliqueset", "scalingGroup", "clique")


def _series_label_problems(labels: dict[str, str], path: str) -> list[str]:
    from autoscaler.specs import SeriesLabelError, check_series_template

    problems = []
    for label, template in labels.items():
        if not LABEL_NAME.match(label):
            problems.append(f"{path}.{label}: invalid Prometheus label name {label!r}; use letters, digits and _")
            continue
        try:
            check_series_template(template, f"{path}.{label}")
        except SeriesLabelError as error:
            problems.append(str(error))
        except ValueError as error:
            problems.append(f"{path}.{label}: invalid template {template!r}: {error}")
    return problems


class Config(Strict):
    interval_seconds: float = Field(default=15.0, alias="intervalSeconds", ge=1, le=3600)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    series_labels: dict[str, SeriesLabels] = Field(default_factory=dict, alias="seriesLabels")
    targets: list[TargetConfig] = Field(min_length=1)
    budgets: list[BudgetConfig] = Field(default_factory=list)
    ratio_bands: list[RatioBandConfig] = Field(default_factory=list, alias="ratioBands")
    gpu_resources: list[str] = Field(default_factory=lambda: ["nvidia.com/gpu", "amd.com/gpu"], alias="gpuResources", min_length=1)

    def series_label_problems(self) -> list[str]:
        """Return one message per invalid label name or template in every seriesLabels block."""
        problems = []
        for level, labels in self.series_labels.items():
            if level not in SERIES_LEVELS:
                problems.append(f"seriesLabels.{level}: unknown level; expected one of {', '.join(SERIES_LEVELS)}")
                continue
            problems.extend(_series_label_problems(labels, f"seriesLabels.{level}"))
        for index, target in enumerate(self.targets):
            if target.series_labels is not None:
                problems.extend(_series_label_problems(target.series_labels, f"targets[{index}].seriesLabels"))
            for signal, labels in target.signal_labels.items():
                problems.extend(_series_label_problems(labels, f"targets[{index}].signalLabels.{signal}"))
        return problems

    def reference_problems(self) -> list[str]:
        """Return one message per duplicate name or reference to a missing rule."""
        problems = []
        seen: set[str] = set()
        for index, target in enumerate(self.targets):
            if target.name in seen:
                problems.append(f"targets[{index}].name: {target.name!r} is used twice; rule names must be unique")
            seen.add(target.name)
        for index, band in enumerate(self.ratio_bands):
            for side in ("numerator", "denominator"):
                rule = getattr(band, side)
                if rule not in seen:
                    problems.append(f"ratioBands[{index}].{side}: no target rule named {rule!r}")
        budget_names: set[str] = set()
        for index, budget in enumerate(self.budgets):
            if budget.name in budget_names:
                problems.append(f"budgets[{index}].name: {budget.name!r} is used twice; budget names must be unique")
            budget_names.add(budget.name)
            for rule in budget.rules:
                if rule not in seen:
                    problems.append(f"budgets[{index}].rules: no target rule named {rule!r}")
        return problems


def _field_path(location: tuple[Any, ...]) -> str:
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("." if path else "") + str(part)
    return path or "(top level)"


def format_validation_error(error: ValidationError, prefix: tuple[Any, ...] = ()) -> list[str]:
    """Turn a pydantic error into one `field.path: message (got value)` line per problem."""
    problems = []
    for item in error.errors():
        location = prefix + tuple(part for part in item["loc"] if not str(part).startswith("function-"))
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        problem = f"{_field_path(location)}: {message}"
        if item["type"] not in ("missing",) and "input" in item and not isinstance(item["input"], dict):
            problem += f" (got {item['input']!r})"
        problems.append(problem)
    return problems


def _policy_problems(data: dict[str, Any]) -> list[str]:
    """Check every policy name and its params in the raw document, even when other fields are invalid."""
    from policies.registry import PolicyError, default_registry

    registry = default_registry()
    problems = []
    targets = data.get("targets")
    if not isinstance(targets, list):
        return problems
    for index, target in enumerate(targets):
        policies = target.get("policies") if isinstance(target, dict) else None
        if not isinstance(policies, list):
            continue
        for policy_index, policy in enumerate(policies):
            if not isinstance(policy, dict) or not isinstance(policy.get("name"), str):
                continue
            path = ("targets", index, "policies", policy_index)
            params = policy.get("params") or {}
            if not isinstance(params, dict):
                continue
            try:
                registry.create(policy["name"], params)
            except PolicyError as error:
                problems.append(f"{_field_path(path + ('name',))}: {error} (got {policy['name']!r})")
            except ValidationError as error:
                problems.extend(format_validation_error(error, path + ("params",)))
    return problems


def _signal_problems(config: Config) -> list[str]:
    """Check that every signal a policy reads exists in the catalog of the configured preset."""
    from metrics.catalog import SignalCatalog, UnknownSignalError
    from policies.registry import default_registry

    catalog = SignalCatalog.from_config(config.metrics)
    registry = default_registry()
    problems = []
    for index, target in enumerate(config.targets):
        read: set[str] = set()
        for policy_index, policy in enumerate(target.policies):
            for signal in registry.create(policy.name, policy.params).signals():
                read.add(signal)
                try:
                    catalog.resolve(signal)
                except UnknownSignalError as error:
                    problems.append(f"targets[{index}].policies[{policy_index}]: signal {signal!r}: {error}")
        for signal in target.signal_labels:
            if signal not in read:
                problems.append(f"targets[{index}].signalLabels.{signal}: no policy of this rule reads signal {signal!r}; it reads {sorted(read)}")
    return problems


def parse_config(data: Any, source: str = "<config>") -> Config:
    """Validate a parsed document, including every policy's parameters; raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(source, [f"(top level): expected a mapping, got {type(data).__name__}"])
    problems: list[str] = []
    config: Config | None = None
    try:
        config = Config.model_validate(data)
    except ValidationError as error:
        problems.extend(format_validation_error(error))
    if config is not None:
        problems.extend(config.reference_problems())
        problems.extend(config.series_label_problems())
    policy_problems = _policy_problems(data)
    problems.extend(policy_problems)
    if config is not None and not policy_problems:
        problems.extend(_signal_problems(config))
    if problems or config is None:
        raise ConfigError(source, problems)
    return config


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that rejects a mapping key written twice, which YAML would let the last win."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice (first on line {seen[key] + 1})", key_node.start_mark
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def yaml_error_message(error: yaml.YAMLError) -> str:
    """Describe a YAML error by line and column instead of PyYAML's multi-line text."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    context = getattr(error, "context", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"invalid YAML: {where}{problem}" + (f" ({context})" if context else "")


def load_yaml(path: Path) -> Any:
    """Read one YAML document; raise ConfigError naming the file for unreadable, non-UTF-8 or malformed input."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(str(path), [f"not UTF-8 text: invalid byte at position {error.start}"]) from None
    except OSError as error:
        raise ConfigError(str(path), [f"cannot read file: {error.strerror}"]) from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        raise ConfigError(str(path), [yaml_error_message(error)]) from None


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML configuration file; raise ConfigError with every problem."""
    path = Path(path)
    return parse_config(load_yaml(path), str(path))
