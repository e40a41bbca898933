"""Render engine decisions for people: every input, every policy's desire, every adjustment.

The text form is for logs and `explain` output. The JSON form carries the same facts as
plain JSON types for tools and report files. Both read any object shaped like the engine's
`Decision` (time, target, rule, current, desired, reason, desires, adjustments, samples), so
this module imports nothing from the engine.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Protocol, Sequence

from autoscaler.targets import Kind, TargetRef
from metrics.sample import Sample
from policies.base import Desire, DesireKind

_LEVEL_ORDER = {Kind.PODCLIQUESET: 0, Kind.PODCLIQUESCALINGGROUP: 1, Kind.PODCLIQUE: 2}


class AdjustmentLike(Protocol):
    step: str
    before: int
    after: int
    reason: str


class DecisionLike(Protocol):
    time: float
    target: str
    rule: str
    current: int | None
    desired: int | None
    reason: str
    desires: Sequence[tuple[str, Desire]]
    adjustments: Sequence[AdjustmentLike]
    samples: Mapping[str, Sample]


def explain_text(decision: DecisionLike) -> str:
    """Render one decision as indented plain text, one fact per line, without a trailing newline."""
    lines = [_headline(decision)]

    lines.append("  inputs:")
    if decision.samples:
        for signal in sorted(decision.samples):
            lines.append(f"    {signal}: {_sample_text(decision.samples[signal])}")
    else:
        lines.append("    none")

    lines.append("  policies:")
    if decision.desires:
        for key, desire in decision.desires:
            lines.append(f"    {key}: {_desire_text(desire)}")
    else:
        lines.append("    none evaluated")

    lines.append("  adjustments:")
    if decision.adjustments:
        for adjustment in decision.adjustments:
            lines.append(f"    {adjustment.step}: {adjustment.before} -> {adjustment.after} ({adjustment.reason})")
    else:
        lines.append("    none")

    lines.append(f"  decision: {_outcome_text(decision)}")
    return "\n".join(lines)


def explain_json(decision: DecisionLike) -> dict[str, Any]:
    """Return one decision as a mapping of plain JSON types, with the same facts as the text form."""
    ref = _parse_target(decision.target)
    return {
        "time": decision.time,
        "timestamp": _timestamp(decision.time),
        "target": decision.target,
        "level": ref.kind.value if ref else None,
        "namespace": ref.namespace if ref else None,
        "name": ref.name if ref else None,
        "rule": decision.rule,
        "current": decision.current,
        "desired": decision.desired,
        "changes_scale": _changes_scale(decision),
        "reason": decision.reason,
        "samples": {signal: _sample_json(decision.samples[signal]) for signal in sorted(decision.samples)},
        "desires": [_desire_json(key, desire) for key, desire in decision.desires],
        "adjustments": [
            {"step": item.step, "before": item.before, "after": item.after, "reason": item.reason}
            for item in decision.adjustments
        ],
    }


def explain_decisions_text(decisions: Iterable[DecisionLike]) -> str:
    """Render a tick's decisions, ordered by namespace, level (set, group, clique) and name."""
    return "\n\n".join(explain_text(decision) for decision in _ordered(decisions))


def explain_decisions_json(decisions: Iterable[DecisionLike]) -> list[dict[str, Any]]:
    """Return a tick's decisions as JSON mappings, in the order of `explain_decisions_text`."""
    return [explain_json(decision) for decision in _ordered(decisions)]


# --- Pieces ---------------------------------------------------------------------------------


def _headline(decision: DecisionLike) -> str:
    ref = _parse_target(decision.target)
    subject = f"{ref.kind.value} {ref.namespace}/{ref.name}" if ref else decision.target
    return f"{subject} (rule {decision.rule}) at {_timestamp(decision.time)}"


def _outcome_text(decision: DecisionLike) -> str:
    if decision.desired is None:
        return f"no write: {decision.reason}"
    if decision.current is None:
        change = f"set {decision.desired}"
    elif decision.desired == decision.current:
        change = f"keep {decision.current}"
    else:
        change = f"{decision.current} -> {decision.desired}"
    return f"{change}: {decision.reason}" if decision.reason else change


def _changes_scale(decision: DecisionLike) -> bool:
    return decision.current is not None and decision.desired is not None and decision.desired != decision.current


def _sample_text(sample: Sample) -> str:
    if sample.is_value:
        return f"{sample.value:g}"
    label = "idle" if sample.is_idle else "unknown"
    return f"{label} ({sample.reason})" if sample.reason else label


def _sample_json(sample: Sample) -> dict[str, Any]:
    return {"kind": sample.kind.value, "value": sample.value, "reason": sample.reason}


def _desire_text(desire: Desire) -> str:
    if desire.kind is DesireKind.REPLICAS:
        head = f"{desire.replicas} replicas"
    elif desire.kind is DesireKind.IDLE:
        head = "idle, may go to the floor"
    else:
        head = "unknown, blocks scale-down"
    return f"{head} ({desire.reason})" if desire.reason else head


def _desire_json(key: str, desire: Desire) -> dict[str, Any]:
    return {"policy": key, "kind": desire.kind.value, "replicas": desire.replicas, "reason": desire.reason}


def _timestamp(seconds: float) -> str:
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    text = moment.isoformat(timespec="milliseconds" if seconds % 1 else "seconds")
    return text.replace("+00:00", "Z")


def _parse_target(target: str) -> TargetRef | None:
    try:
        return TargetRef.parse(target)
    except ValueError:
        return None


def _ordered(decisions: Iterable[DecisionLike]) -> list[DecisionLike]:
    def key(decision: DecisionLike) -> tuple[str, int, str]:
        ref = _parse_target(decision.target)
        if ref is None:
            return ("", len(_LEVEL_ORDER), decision.target)
        return (ref.namespace, _LEVEL_ORDER[ref.kind], ref.name)

    return sorted(decisions, key=key)
