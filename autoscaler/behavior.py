"""The behaviour layer: Kubernetes HPA scaling semantics, applied once per target after every policy.

`apply_behavior` turns the raw desires of a target's policies into the replica count to
write, in the order of the Kubernetes HPA controller (pkg/controller/podautoscaler/horizontal.go):

1. A live count outside [minimum, maxReplicas] moves straight to the violated bound, whatever
   the desires are (the minimum is max(minReplicas, gang floor)).
2. Combine: the largest REPLICAS desire wins and an IDLE desire votes for the minimum. If a
   policy is UNKNOWN and the combined value is below the live count, the count is held, so a
   failing signal never lets another signal scale down. Scale-up stays allowed.
3. Stabilisation: the unbounded recommendation is recorded. Scale-up takes the lowest
   recommendation of the up-window and scale-down the highest of the down-window.
4. Rate limits: Pods/Percent policies per period, counted from the recorded scale events.
5. Bounds: clamp to [minimum, maxReplicas].

Without a behavior the HPA's legacy rules apply instead of 3 and 4: the highest
recommendation of the last 300 s, and a scale-up limit of max(2 * current, 4).

State lives in `ScaleHistory`, a plain value: `apply_behavior` never mutates its input and
returns the next history. It records the returned count as applied (a scale event) when it
differs from the live count, because the engine writes every change it decides. A caller
that overrides the count afterwards must record its own change with `record_scale` on the
input history instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

from autoscaler.config import Behavior, ScalingRules
from policies.base import Desire, DesireKind

STEP_BOUNDS = "bounds"
STEP_UNKNOWN = "unknown"
STEP_STABILIZATION = "stabilization"
STEP_RATE_LIMIT = "rate-limit"

LEGACY_DOWN_WINDOW_SECONDS = 300
LEGACY_SCALE_UP_FACTOR = 2
LEGACY_SCALE_UP_MINIMUM = 4


@dataclass(frozen=True)
class RateLimit:
    """One HPA scaling policy: at most `value` pods or percent of change per `period_seconds`."""

    kind: Literal["Pods", "Percent"]
    value: int
    period_seconds: int

    def __str__(self) -> str:
        unit = "%" if self.kind == "Percent" else " pods"
        return f"{self.value}{unit} per {self.period_seconds}s"


@dataclass(frozen=True)
class DirectionRules:
    """Scaling rules for one direction with every HPA default filled in."""

    stabilization_window_seconds: int
    select_policy: Literal["Max", "Min", "Disabled"]
    policies: tuple[RateLimit, ...]

    def longest_period_seconds(self) -> int:
        return max((policy.period_seconds for policy in self.policies), default=0)


# The HPA's defaults for a behavior whose direction leaves a field unset.
DEFAULT_SCALE_UP_RULES = DirectionRules(0, "Max", (RateLimit("Pods", 4, 15), RateLimit("Percent", 100, 15)))
DEFAULT_SCALE_DOWN_RULES = DirectionRules(300, "Max", (RateLimit("Percent", 100, 15),))


def resolve_rules(rules: ScalingRules | None, defaults: DirectionRules) -> DirectionRules:
    """Fill every unset field of `rules` from `defaults`, field by field as the HPA API does."""
    # NOTE: `rules.tolerance` is not applied in this layer, because a tolerance acts on a
    # metric ratio that only the policies see. Each policy has its own tolerance parameters.
    if rules is None:
        return defaults
    window = rules.stabilization_window_seconds
    policies = defaults.policies
    if rules.policies is not None:
        policies = tuple(RateLimit(policy.type, policy.value, policy.period_seconds) for policy in rules.policies)
    return DirectionRules(
        stabilization_window_seconds=defaults.stabilization_window_seconds if window is None else window,
        select_policy=rules.select_policy,
        policies=policies,
    )


@dataclass
class ScaleHistory:
    """Per-target memory of the behaviour layer, serialisable as plain JSON types.

    `recommendations` contains (time in seconds, unbounded recommendation) pairs for the
    stabilisation windows. `scale_events` contains (time in seconds, signed replica change)
    pairs of every decided change, for the rate-limit periods.
    """

    recommendations: list[tuple[float, int]] = field(default_factory=list)
    scale_events: list[tuple[float, int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "recommendations": [[time, count] for time, count in self.recommendations],
            "scale_events": [[time, change] for time, change in self.scale_events],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScaleHistory:
        """Rebuild a history from `to_dict` output; raise ValueError naming the invalid entry."""
        if not isinstance(data, Mapping):
            raise ValueError(f"scale history must be a mapping, got {type(data).__name__}")
        return cls(
            recommendations=_parse_pairs(data, "recommendations"),
            scale_events=_parse_pairs(data, "scale_events"),
        )


def _parse_pairs(data: Mapping[str, Any], key: str) -> list[tuple[float, int]]:
    items = data.get(key, [])
    if not isinstance(items, (list, tuple)):
        raise ValueError(f"scale history {key} must be a list of [time, replicas] pairs, got {items!r}")

    pairs = []
    for index, item in enumerate(items):
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise ValueError(f"scale history {key}[{index}] must be a [time, replicas] pair, got {item!r}")
        time, count = item
        if isinstance(time, bool) or not isinstance(time, (int, float)) or not math.isfinite(time):
            raise ValueError(f"scale history {key}[{index}] has an invalid time {time!r}; expected finite seconds")
        if isinstance(count, bool) or not isinstance(count, int):
            raise ValueError(f"scale history {key}[{index}] has an invalid replica count {count!r}; expected an integer")
        pairs.append((float(time), count))
    return pairs


@dataclass(frozen=True)
class Adjustment:
    """One step of the behaviour layer that changed the count, for `explain` output."""

    step: str
    before: int
    after: int
    reason: str


@dataclass(frozen=True)
class BehaviorOutcome:
    """The count to write, why, every step that changed it, and the next history."""

    desired: int
    reason: str
    adjustments: tuple[Adjustment, ...]
    history: ScaleHistory


def record_scale(history: ScaleHistory, *, now: float, old: int, new: int) -> ScaleHistory:
    """Return a copy of `history` with the change old -> new recorded at `now` (no-op when equal)."""
    events = list(history.scale_events)
    if new != old:
        events.append((float(now), new - old))
    return ScaleHistory(recommendations=list(history.recommendations), scale_events=events)


def apply_behavior(
    *,
    now: float,
    current: int,
    desires: Sequence[tuple[str, Desire]],
    min_replicas: int,
    max_replicas: int,
    floor: int,
    behavior: Behavior | None,
    history: ScaleHistory,
) -> BehaviorOutcome:
    """Combine the desires of one target and apply stabilisation, rate limits and bounds.

    `desires` pairs each policy's key with its desire. `floor` is the gang's minAvailable (0
    for none). A floor above `max_replicas` is a configuration error that the caller should
    report. Here the count is clamped to `max_replicas` and the reason notes it. The result is
    deterministic in its arguments. Raise ValueError on negative counts, min_replicas above
    max_replicas, or an empty `desires`.
    """
    _validate_arguments(now, current, desires, min_replicas, max_replicas, floor)
    lower, upper, bounds_note = _effective_bounds(min_replicas, max_replicas, floor)
    history = _prune(history, now, behavior)

    if not lower <= current <= upper:
        return _move_into_bounds(now, current, lower, upper, bounds_note, history)

    combined, base_reason, unknown = _combine(desires, lower)
    if unknown and (combined is None or combined < current):
        return _hold_for_unknown(current, combined, unknown, history)

    adjustments: list[Adjustment] = []
    if behavior is None:
        value, history = _stabilize_legacy(now, current, combined, history, adjustments)
        value = _limit_rate_legacy(current, value, adjustments)
    else:
        up_rules = resolve_rules(behavior.scale_up, DEFAULT_SCALE_UP_RULES)
        down_rules = resolve_rules(behavior.scale_down, DEFAULT_SCALE_DOWN_RULES)
        value, history = _stabilize(now, current, combined, up_rules, down_rules, history, adjustments)
        value = _limit_rate(now, current, value, up_rules, down_rules, history, adjustments)
    value = _clamp(value, lower, upper, min_replicas, floor, bounds_note, adjustments)

    reason = "; ".join([base_reason] + [adjustment.reason for adjustment in adjustments])
    if bounds_note and bounds_note not in reason:
        reason += f"; {bounds_note}"
    history = record_scale(history, now=now, old=current, new=value)
    return BehaviorOutcome(value, reason, tuple(adjustments), history)


def _validate_arguments(
    now: float,
    current: int,
    desires: Sequence[tuple[str, Desire]],
    min_replicas: int,
    max_replicas: int,
    floor: int,
) -> None:
    if not math.isfinite(now):
        raise ValueError(f"now must be finite seconds, got {now!r}")
    for name, count in (("current", current), ("min_replicas", min_replicas), ("max_replicas", max_replicas), ("floor", floor)):
        if count < 0:
            raise ValueError(f"{name} must be >= 0, got {count}")
    if min_replicas > max_replicas:
        raise ValueError(f"min_replicas {min_replicas} is greater than max_replicas {max_replicas}")
    if not desires:
        raise ValueError("desires is empty; every target needs at least one policy")


def _effective_bounds(min_replicas: int, max_replicas: int, floor: int) -> tuple[int, int, str]:
    lower = max(min_replicas, floor)
    if lower > max_replicas:
        return max_replicas, max_replicas, f"gang floor {floor} is above maxReplicas {max_replicas}; capped at {max_replicas}"
    return lower, max_replicas, ""


def _prune(history: ScaleHistory, now: float, behavior: Behavior | None) -> ScaleHistory:
    """Drop entries that no window or period of `behavior` can count any more."""
    if behavior is None:
        keep_recommendations = LEGACY_DOWN_WINDOW_SECONDS
        keep_events = 0
    else:
        up_rules = resolve_rules(behavior.scale_up, DEFAULT_SCALE_UP_RULES)
        down_rules = resolve_rules(behavior.scale_down, DEFAULT_SCALE_DOWN_RULES)
        keep_recommendations = max(up_rules.stabilization_window_seconds, down_rules.stabilization_window_seconds)
        keep_events = max(up_rules.longest_period_seconds(), down_rules.longest_period_seconds())

    recommendations = [(time, count) for time, count in history.recommendations if time >= now - keep_recommendations]
    events = [(time, change) for time, change in history.scale_events if keep_events and time >= now - keep_events]
    return ScaleHistory(recommendations=recommendations, scale_events=events)


def _move_into_bounds(
    now: float, current: int, lower: int, upper: int, bounds_note: str, history: ScaleHistory
) -> BehaviorOutcome:
    # As in the HPA, a count outside the bounds goes to the bound without looking at the
    # desires or recording a recommendation, because the bounds are configuration.
    if current > upper:
        target, reason = upper, f"live count {current} is above maxReplicas {upper}"
    else:
        target, reason = lower, f"live count {current} is below the minimum {lower}"
    if bounds_note:
        reason += f" ({bounds_note})"
    adjustment = Adjustment(STEP_BOUNDS, current, target, reason)
    return BehaviorOutcome(target, reason, (adjustment,), record_scale(history, now=now, old=current, new=target))


def _combine(desires: Sequence[tuple[str, Desire]], lower: int) -> tuple[int | None, str, list[str]]:
    """Return the largest vote (None when every desire is unknown), its reason, and the unknowns."""
    votes: list[tuple[int, str]] = []
    unknown: list[str] = []
    for name, desire in desires:
        if desire.kind is DesireKind.REPLICAS and isinstance(desire.replicas, int) and desire.replicas >= 0:
            votes.append((desire.replicas, f"{name}: {desire.reason}"))
        elif desire.kind is DesireKind.IDLE:
            votes.append((lower, f"{name}: idle ({desire.reason}), minimum {lower}"))
        elif desire.kind is DesireKind.UNKNOWN:
            unknown.append(f"{name}: {desire.reason}")
        else:
            unknown.append(f"{name}: invalid desire {desire!r}")

    if not votes:
        return None, "", unknown
    replicas, reason = max(votes, key=lambda vote: vote[0])
    return replicas, reason, unknown


def _hold_for_unknown(current: int, combined: int | None, unknown: list[str], history: ScaleHistory) -> BehaviorOutcome:
    # As in the HPA, a blocked tick records no recommendation, so it cannot hold up a later
    # scale-down through the stabilisation window either.
    details = "; ".join(unknown)
    if combined is None:
        reason = f"hold at {current}: no policy has data: {details}"
        return BehaviorOutcome(current, reason, (), history)
    reason = f"scale-down blocked: {details}"
    return BehaviorOutcome(current, reason, (Adjustment(STEP_UNKNOWN, combined, current, reason),), history)


def _stabilize(
    now: float,
    current: int,
    desired: int,
    up_rules: DirectionRules,
    down_rules: DirectionRules,
    history: ScaleHistory,
    adjustments: list[Adjustment],
) -> tuple[int, ScaleHistory]:
    # A recommendation exactly one window old no longer counts (the HPA compares with After).
    up_window = up_rules.stabilization_window_seconds
    down_window = down_rules.stabilization_window_seconds
    up_recommendation = desired
    down_recommendation = desired
    for time, recommendation in history.recommendations:
        if time > now - up_window:
            up_recommendation = min(up_recommendation, recommendation)
        if time > now - down_window:
            down_recommendation = max(down_recommendation, recommendation)
    stabilized = min(max(current, up_recommendation), down_recommendation)

    if stabilized < desired:
        reason = f"scale-up stabilized at {stabilized}: lowest recommendation in the last {up_window}s is {up_recommendation}"
        adjustments.append(Adjustment(STEP_STABILIZATION, desired, stabilized, reason))
    elif stabilized > desired:
        reason = (
            f"scale-down stabilized at {stabilized}: highest recommendation in the last {down_window}s is {down_recommendation}"
        )
        adjustments.append(Adjustment(STEP_STABILIZATION, desired, stabilized, reason))
    return stabilized, _with_recommendation(history, now, desired)


def _stabilize_legacy(
    now: float, current: int, desired: int, history: ScaleHistory, adjustments: list[Adjustment]
) -> tuple[int, ScaleHistory]:
    # The legacy HPA path takes the highest recommendation of the window without comparing it
    # with the live count, and counts a recommendation exactly 300 s old (it compares with Before).
    cutoff = now - LEGACY_DOWN_WINDOW_SECONDS
    stabilized = max([desired] + [count for time, count in history.recommendations if time >= cutoff])
    if stabilized != desired:
        reason = (
            f"scale-down stabilized at {stabilized}: highest recommendation in the last "
            f"{LEGACY_DOWN_WINDOW_SECONDS}s (no behavior set)"
        )
        adjustments.append(Adjustment(STEP_STABILIZATION, desired, stabilized, reason))
    return stabilized, _with_recommendation(history, now, desired)


def _with_recommendation(history: ScaleHistory, now: float, recommendation: int) -> ScaleHistory:
    return ScaleHistory(
        recommendations=list(history.recommendations) + [(float(now), recommendation)],
        scale_events=list(history.scale_events),
    )


def _limit_rate(
    now: float,
    current: int,
    value: int,
    up_rules: DirectionRules,
    down_rules: DirectionRules,
    history: ScaleHistory,
    adjustments: list[Adjustment],
) -> int:
    if value > current:
        limit = max(_scale_up_limit(now, current, up_rules, history), current)
        if value > limit:
            reason = f"scale-up limited to {limit} ({_describe_rules(up_rules)})"
            adjustments.append(Adjustment(STEP_RATE_LIMIT, value, limit, reason))
            return limit
    elif value < current:
        limit = min(_scale_down_limit(now, current, down_rules, history), current)
        if value < limit:
            reason = f"scale-down limited to {limit} ({_describe_rules(down_rules)})"
            adjustments.append(Adjustment(STEP_RATE_LIMIT, value, limit, reason))
            return limit
    return value


def _limit_rate_legacy(current: int, value: int, adjustments: list[Adjustment]) -> int:
    limit = max(LEGACY_SCALE_UP_FACTOR * current, LEGACY_SCALE_UP_MINIMUM)
    if value > limit:
        reason = f"scale-up limited to {limit}: max(2 * {current}, 4) when no behavior is set"
        adjustments.append(Adjustment(STEP_RATE_LIMIT, value, limit, reason))
        return limit
    return value


def _period_start(now: float, current: int, period_seconds: int, history: ScaleHistory) -> int:
    """Return the count at the start of the period: current minus additions plus removals in it."""
    change = sum(delta for time, delta in history.scale_events if time > now - period_seconds)
    return current - change


def _scale_up_limit(now: float, current: int, rules: DirectionRules, history: ScaleHistory) -> int:
    # NOTE: an empty policy list allows no change in that direction, as Disabled does. The HPA
    # API rejects an empty list, so the HPA defines no behaviour to copy.
    if rules.select_policy == "Disabled" or not rules.policies:
        return current
    proposals = []
    for policy in rules.policies:
        start = _period_start(now, current, policy.period_seconds, history)
        if policy.kind == "Pods":
            proposals.append(start + policy.value)
        else:
            # Integer ceil(start * (1 + value/100)): the HPA's float form rounds 10 * 1.1 up to 12.
            proposals.append(-(-start * (100 + policy.value) // 100))
    return min(proposals) if rules.select_policy == "Min" else max(proposals)


def _scale_down_limit(now: float, current: int, rules: DirectionRules, history: ScaleHistory) -> int:
    if rules.select_policy == "Disabled" or not rules.policies:
        return current
    proposals = []
    for policy in rules.policies:
        start = _period_start(now, current, policy.period_seconds, history)
        if policy.kind == "Pods":
            proposals.append(start - policy.value)
        else:
            # start * (1 - value/100) truncated toward zero, in integers.
            product = start * (100 - policy.value)
            proposals.append(abs(product) // 100 * (1 if product >= 0 else -1))
    return max(proposals) if rules.select_policy == "Min" else min(proposals)


def _describe_rules(rules: DirectionRules) -> str:
    if rules.select_policy == "Disabled":
        return "selectPolicy Disabled"
    if not rules.policies:
        return "no rate-limit policies"
    policies = ", ".join(str(policy) for policy in rules.policies)
    return f"{policies}, selectPolicy {rules.select_policy}"


def _clamp(
    value: int,
    lower: int,
    upper: int,
    min_replicas: int,
    floor: int,
    bounds_note: str,
    adjustments: list[Adjustment],
) -> int:
    if value > upper:
        reason = f"capped at maxReplicas {upper}"
        adjustments.append(Adjustment(STEP_BOUNDS, value, upper, reason))
        return upper
    if value < lower:
        if bounds_note:
            reason = f"raised to {lower}: {bounds_note}"
        elif floor > min_replicas:
            reason = f"raised to gang floor {lower} (minReplicas {min_replicas})"
        else:
            reason = f"raised to minReplicas {lower}"
        adjustments.append(Adjustment(STEP_BOUNDS, value, lower, reason))
        return lower
    return value
