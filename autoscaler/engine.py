"""The pure decision engine shared by the live controller, replay and the backtest.

`decide` is a function of (time, observations, live scale, state): it runs every policy of
every target, applies the behaviour layer once per target, and returns one decision per
target with its reason plus the next state. It reads no clock, makes no query and writes
nothing. The callers differ only in where time, samples and the live `/scale` come from and
where decisions go.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from autoscaler.behavior import Adjustment, ScaleHistory, apply_behavior, record_scale
from autoscaler.budget import BudgetRequest, apply_budgets
from autoscaler.config import Behavior
from autoscaler.coordination import RatioBand, apply_ratio_bands
from autoscaler.targets import Kind, TargetRef
from metrics.sample import Sample, SignalRequest
from policies.base import Desire, Policy, PolicyContext

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TargetSpec:
    """One `/scale` object under one configuration rule, with everything needed to decide for it.

    `floor` is the gang floor (the object's minAvailable, 0 when it has none). `series_labels`
    maps each signal to the label values identifying this target's series.
    """

    target: str
    rule: str
    policies: tuple[Policy, ...]
    min_replicas: int
    max_replicas: int
    floor: int = 0
    behavior: Behavior | None = None
    series_labels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    gpus_per_replica: float | None = None
    priority: int = 0
    budget_scopes: tuple[str, ...] = ()

    @property
    def lower_bound(self) -> int:
        """Return the lowest count the target may have: max(minReplicas, gang floor), capped at max."""
        return min(max(self.min_replicas, self.floor), self.max_replicas)

    def policy_keys(self) -> list[str]:
        """Return one key per policy, unique even when a policy is used twice (`0:target`)."""
        return [f"{index}:{policy.name}" for index, policy in enumerate(self.policies)]

    def signals(self) -> list[str]:
        names: list[str] = []
        for policy in self.policies:
            for signal in policy.signals():
                if signal not in names:
                    names.append(signal)
        return names


@dataclass(frozen=True)
class Decision:
    """The engine's decision for one target at one tick, with the reason and every step.

    `desired` is None when nothing may be written (the live scale could not be read).
    """

    time: float
    target: str
    rule: str
    current: int | None
    desired: int | None
    reason: str
    desires: tuple[tuple[str, Desire], ...] = ()
    adjustments: tuple[Adjustment, ...] = ()
    samples: Mapping[str, Sample] = field(default_factory=dict)

    @property
    def changes_scale(self) -> bool:
        return self.current is not None and self.desired is not None and self.desired != self.current

    def to_record(self) -> dict[str, Any]:
        """Return the JSON-lines record of replay and dry-run output."""
        return {
            "time": self.time,
            "target": self.target,
            "current": self.current,
            "desired": self.desired,
            "reason": self.reason,
        }


@dataclass
class TargetState:
    history: ScaleHistory = field(default_factory=ScaleHistory)
    policy_state: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"history": self.history.to_dict(), "policy_state": self.policy_state}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TargetState:
        return cls(
            history=ScaleHistory.from_dict(data.get("history", {})),
            policy_state={key: dict(value) for key, value in data.get("policy_state", {}).items()},
        )


@dataclass
class EngineState:
    """Per-target memory between ticks (stabilisation and rate-limit history, policy state).

    It round-trips through `to_dict`/`from_dict` as plain JSON types.
    """

    targets: dict[str, TargetState] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"targets": {name: state.to_dict() for name, state in self.targets.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EngineState:
        return cls({name: TargetState.from_dict(value) for name, value in data.get("targets", {}).items()})


def signal_requests(specs: Sequence[TargetSpec]) -> list[SignalRequest]:
    """Return every signal every target needs this tick, with the labels of its series."""
    requests = []
    for spec in specs:
        for signal in spec.signals():
            labels = spec.series_labels.get(signal, {})
            requests.append(SignalRequest(spec.target, signal, dict(labels)))
    return requests


def decide(
    *,
    now: float,
    specs: Sequence[TargetSpec],
    observations: Mapping[str, Mapping[str, Sample]],
    live: Mapping[str, int | None],
    state: EngineState,
    ready: Mapping[str, int] | None = None,
    interval_seconds: float = 15.0,
    bands: Sequence[RatioBand] = (),
    budgets: Mapping[str, float] | None = None,
) -> tuple[list[Decision], EngineState]:
    """Decide every target for one tick; return the decisions and the next state.

    `live` maps each target to its current `/scale` replicas (None when the read failed) and
    `ready` its ready replicas where known. After each target's policies and behaviour, the
    ratio `bands` raise the smaller side of out-of-band pairs, then the GPU `budgets` (scope
    name -> GPUs) cut proposals by priority. A target missing from `specs` drops out of the
    state, so removed objects leave no memory behind.
    """
    ready = ready or {}
    next_state = EngineState()
    decisions = []
    for spec in specs:
        previous = state.targets.get(spec.target, TargetState())
        decision, target_state = _decide_target(
            now=now,
            spec=spec,
            samples=observations.get(spec.target, {}),
            current=live.get(spec.target),
            ready=ready.get(spec.target),
            interval_seconds=interval_seconds,
            previous=previous,
        )
        decisions.append(decision)
        next_state.targets[spec.target] = target_state

    by_target = {spec.target: spec for spec in specs}
    behaviour_desired = {decision.target: decision.desired for decision in decisions}
    if bands:
        decisions = _coordinate(decisions, by_target, bands)
    if budgets:
        decisions = _apply_budgets(decisions, by_target, budgets)
    for decision in decisions:
        if decision.desired != behaviour_desired[decision.target]:
            state = next_state.targets[decision.target]
            state.history = _rerecord(state.history, now, decision.current, behaviour_desired[decision.target], decision.desired)
    return decisions, next_state


def forget_scale(state: EngineState, decision: Decision) -> None:
    """Remove the scale event recorded for a decision that was not written.

    The engine records every change it decides as applied, so rate limits count it. A caller
    that did not write it (dry run, not the leader, a failed patch) calls this, so the next
    tick's limits count only what reached the cluster.
    """
    target_state = state.targets.get(decision.target)
    if target_state is None or not decision.changes_scale:
        return
    assert decision.current is not None and decision.desired is not None
    events = list(target_state.history.scale_events)
    if events and events[-1] == (decision.time, decision.desired - decision.current):
        events.pop()
    target_state.history = ScaleHistory(list(target_state.history.recommendations), events)


def _with_adjustment(decision: Decision, adjustment: Adjustment) -> Decision:
    return dataclasses.replace(
        decision,
        desired=adjustment.after,
        reason=f"{decision.reason}; {adjustment.reason}",
        adjustments=decision.adjustments + (adjustment,),
    )


def _coordinate(decisions: list[Decision], specs: Mapping[str, TargetSpec], bands: Sequence[RatioBand]) -> list[Decision]:
    proposals = {decision.target: decision.desired for decision in decisions}
    maxima = {name: spec.max_replicas for name, spec in specs.items()}
    results = apply_ratio_bands(bands, proposals, maxima)
    updated = []
    for decision in decisions:
        result = results.get(decision.target)
        adjustment = result.as_adjustment() if result is not None else None
        updated.append(decision if adjustment is None else _with_adjustment(decision, adjustment))
    return updated


def _budget_request(decision: Decision, spec: TargetSpec) -> BudgetRequest | None:
    """Describe one decision for the budget; None when it cannot be counted.

    A target with unknown GPUs or no scope is not counted. A target whose scale could not
    be read counts at its last known count. A PodCliqueSet counts only the replicas it
    would add, at template GPUs, because its existing replicas are counted through the
    targets of their children.
    """
    if spec.gpus_per_replica is None or not spec.budget_scopes or decision.current is None:
        return None
    proposed = decision.current if decision.desired is None else decision.desired
    if TargetRef.parse(spec.target).kind is Kind.PODCLIQUESET:
        current, proposed, floor = 0, max(0, proposed - decision.current), 0
    else:
        current, floor = decision.current, min(spec.lower_bound, proposed)
    return BudgetRequest(
        target=decision.target,
        scopes=spec.budget_scopes,
        priority=spec.priority,
        current=current,
        proposed=proposed,
        floor=floor,
        gpus_per_replica=spec.gpus_per_replica,
    )


def _apply_budgets(decisions: list[Decision], specs: Mapping[str, TargetSpec], budgets: Mapping[str, float]) -> list[Decision]:
    """Cut proposals to the GPU budgets, lowest priority first."""
    requests = [request for decision in decisions if (request := _budget_request(decision, specs[decision.target]))]
    if not requests:
        return decisions
    outcome = apply_budgets(requests, budgets)
    updated = []
    for decision in decisions:
        result = outcome.results.get(decision.target)
        adjustment = result.as_adjustment() if result is not None and decision.desired is not None else None
        if adjustment is not None and TargetRef.parse(decision.target).kind is Kind.PODCLIQUESET:
            # The request counted growth only; translate it back to replicas.
            adjustment = Adjustment(adjustment.step, decision.desired, decision.current + adjustment.after, adjustment.reason)
        updated.append(decision if adjustment is None else _with_adjustment(decision, adjustment))
    return updated


def _rerecord(history: ScaleHistory, now: float, current: int | None, behaviour_desired: int | None, final: int | None) -> ScaleHistory:
    """Replace the scale event the behaviour layer recorded with the final count's."""
    if current is None or final is None:
        return history
    events = list(history.scale_events)
    if behaviour_desired is not None and behaviour_desired != current and events and events[-1] == (now, behaviour_desired - current):
        events.pop()
    return record_scale(ScaleHistory(list(history.recommendations), events), now=now, old=current, new=final)


def _decide_target(
    *,
    now: float,
    spec: TargetSpec,
    samples: Mapping[str, Sample],
    current: int | None,
    ready: int | None,
    interval_seconds: float,
    previous: TargetState,
) -> tuple[Decision, TargetState]:
    if current is None:
        decision = Decision(now, spec.target, spec.rule, None, None, "hold: live /scale could not be read", samples=samples)
        return decision, previous

    context = PolicyContext(
        now=now,
        target=spec.target,
        current_replicas=current,
        samples={},
        ready_replicas=ready,
        interval_seconds=interval_seconds,
    )
    desires, policy_state = _evaluate_policies(spec=spec, samples=samples, base=context, previous=previous)
    outcome = apply_behavior(
        now=now,
        current=current,
        desires=desires,
        min_replicas=spec.min_replicas,
        max_replicas=spec.max_replicas,
        floor=spec.floor,
        behavior=spec.behavior,
        history=previous.history,
    )
    decision = Decision(
        time=now,
        target=spec.target,
        rule=spec.rule,
        current=current,
        desired=outcome.desired,
        reason=outcome.reason,
        desires=tuple(desires),
        adjustments=tuple(outcome.adjustments),
        samples=samples,
    )
    return decision, TargetState(history=outcome.history, policy_state=policy_state)


def _evaluate_policies(
    *,
    spec: TargetSpec,
    samples: Mapping[str, Sample],
    base: PolicyContext,
    previous: TargetState,
) -> tuple[list[tuple[str, Desire]], dict[str, dict[str, Any]]]:
    desires = []
    policy_state: dict[str, dict[str, Any]] = {}
    for key, policy in zip(spec.policy_keys(), spec.policies):
        policy_samples = {
            signal: samples.get(signal, Sample.unknown(f"no sample for signal {signal}")) for signal in policy.signals()
        }
        context = PolicyContext(
            now=base.now,
            target=base.target,
            current_replicas=base.current_replicas,
            samples=policy_samples,
            ready_replicas=base.ready_replicas,
            interval_seconds=base.interval_seconds,
            state=previous.policy_state.get(key, {}),
        )
        try:
            result = policy.evaluate(context)
        except Exception as error:  # a plugin bug must not stop other targets or read as zero
            logger.exception("policy %s failed on %s", key, spec.target)
            desires.append((key, Desire.unknown(f"policy {key} raised {type(error).__name__}: {error}")))
            continue
        desires.append((key, result.desire))
        policy_state[key] = dict(result.state)
    return desires, policy_state
