"""Prefill/decode coordination: keep the replica ratio of two targets inside a band.

A band links two targets, for example prefill and decode of one PodCliqueSet replica, and
requires numerator replicas / denominator replicas to stay within [min_ratio, max_ratio].
Coordination only raises: when the pair is out of band, the side that is too small grows to
the smallest count that brings the ratio back, capped at that side's maximum. No side ever
ends below its own proposal, because lowering one side would override the policy that
asked for its capacity. When a narrow band has no integer solution at the current counts,
both sides grow to the smallest pair inside the band. When the cap makes the band
unreachable, the small side stops at its maximum and the reason states that the pair is
still out of band.

The reason is recorded on both targets. Bands that share a target are applied repeatedly
until no band raises anything. This always ends, because counts only grow and are capped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Iterable, Mapping, Sequence

from autoscaler.behavior import Adjustment

STEP_RATIO = "ratio"


class CoordinationError(ValueError):
    """An invalid ratio band or input; the message names the band and the value."""


@dataclass(frozen=True)
class RatioBand:
    """A required range for numerator replicas / denominator replicas: [min_ratio, max_ratio]."""

    name: str
    numerator: str
    denominator: str
    min_ratio: float
    max_ratio: float

    def __post_init__(self) -> None:
        for field_name in ("min_ratio", "max_ratio"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise CoordinationError(f"ratio band {self.name}: {field_name} must be a finite number >= 0, got {value!r}")
        if self.max_ratio == 0:
            raise CoordinationError(f"ratio band {self.name}: max_ratio must be greater than 0, got {self.max_ratio!r}")
        if self.min_ratio > self.max_ratio:
            raise CoordinationError(f"ratio band {self.name}: min_ratio {self.min_ratio} is greater than max_ratio {self.max_ratio}")
        if self.numerator == self.denominator:
            raise CoordinationError(f"ratio band {self.name}: numerator and denominator are both {self.numerator}")

    @property
    def low(self) -> Fraction:
        return _exact(self.min_ratio)

    @property
    def high(self) -> Fraction:
        return _exact(self.max_ratio)

    def contains(self, numerator: int, denominator: int) -> bool:
        """Return whether the pair is in band; 0 : 0 is in band, n : 0 with n > 0 is above it."""
        if denominator == 0:
            return numerator == 0
        return self.low <= Fraction(numerator, denominator) <= self.high


@dataclass(frozen=True)
class CoordinationResult:
    """A target's replicas after coordination, with one reason per band that touched it."""

    target: str
    proposed: int
    replicas: int
    reasons: tuple[str, ...] = ()

    @property
    def raised(self) -> bool:
        return self.replicas > self.proposed

    def as_adjustment(self) -> Adjustment | None:
        """Return the `ratio` step for a decision's adjustments, or None when nothing was raised."""
        if not self.raised:
            return None
        return Adjustment(STEP_RATIO, self.proposed, self.replicas, "; ".join(self.reasons))


def apply_ratio_bands(
    bands: Sequence[RatioBand],
    proposals: Mapping[str, int | None],
    maxima: Mapping[str, int],
) -> dict[str, CoordinationResult]:
    """Raise the small side of every out-of-band pair; return a result per proposed target.

    `proposals` maps each target to its proposed replicas, or None when it has no decision
    this tick (its `/scale` could not be read). A band with a side that is None or missing
    is skipped, and the other side records why. `maxima` maps each target to its maxReplicas. A
    proposal above its maximum is kept, and that side is then not raised.
    """
    levels: dict[str, int] = {}
    for target, value in proposals.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise CoordinationError(f"target {target}: proposed replicas must be an integer >= 0, got {value!r}")
        levels[target] = value
    caps = {target: max(levels[target], _maximum(maxima, target)) for target in levels if _has_band(bands, target)}
    reasons: dict[str, list[str]] = {target: [] for target in levels}

    active = _skip_incomplete(bands, levels, reasons)
    changed = True
    while changed:
        changed = False
        for band in active:
            if _apply_band(band, levels, caps, reasons):
                changed = True

    return {
        target: CoordinationResult(target, proposals[target], levels[target], tuple(reasons[target]))  # type: ignore[arg-type]
        for target in levels
    }


def pair_bands(
    *,
    name: str,
    numerator_rule: str,
    denominator_rule: str,
    min_ratio: float,
    max_ratio: float,
    targets: Iterable[Any],
) -> list[RatioBand]:
    """Expand a band between two configuration rules into one band per PodCliqueSet replica.

    `targets` are discovered targets (anything with `rule`, `ref`, `pcs` and `index`, such as
    `autoscaler.specs.DiscoveredTarget`). Targets of the two rules are paired by namespace,
    PodCliqueSet and replica index. A replica that has only one side gets no band. Raise
    CoordinationError when one rule selects two targets in the same replica.
    """
    sides: dict[str, dict[tuple[str, str, int | None], str]] = {numerator_rule: {}, denominator_rule: {}}
    for target in targets:
        if target.rule not in sides:
            continue
        key = (target.ref.namespace, target.pcs, target.index)
        chosen = sides[target.rule]
        if key in chosen:
            raise CoordinationError(
                f"ratio band {name}: rule {target.rule} selects both {chosen[key]} and {target.ref} "
                f"in PodCliqueSet {target.pcs} replica {target.index}; a band needs one target per side"
            )
        chosen[key] = str(target.ref)

    numerators, denominators = sides[numerator_rule], sides[denominator_rule]
    return [
        RatioBand(name, numerators[key], denominators[key], min_ratio, max_ratio)
        for key in sorted(numerators, key=_replica_order)
        if key in denominators
    ]


def _replica_order(key: tuple[str, str, int | None]) -> tuple[str, str, int]:
    namespace, pcs, index = key
    return namespace, pcs, -1 if index is None else index


def _has_band(bands: Sequence[RatioBand], target: str) -> bool:
    return any(target in (band.numerator, band.denominator) for band in bands)


def _maximum(maxima: Mapping[str, int], target: str) -> int:
    if target not in maxima:
        raise CoordinationError(f"target {target}: no maxReplicas given for a target in a ratio band")
    value = maxima[target]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CoordinationError(f"target {target}: maxReplicas must be an integer >= 0, got {value!r}")
    return value


def _skip_incomplete(bands: Sequence[RatioBand], levels: Mapping[str, int], reasons: dict[str, list[str]]) -> list[RatioBand]:
    active = []
    for band in bands:
        missing = [side for side in (band.numerator, band.denominator) if side not in levels]
        if not missing:
            active.append(band)
            continue
        for side in (band.numerator, band.denominator):
            if side in levels:
                reasons[side].append(f"ratio band {band.name}: skipped, {_short(missing[0])} has no proposal this tick")
    return active


def _apply_band(band: RatioBand, levels: dict[str, int], caps: Mapping[str, int], reasons: dict[str, list[str]]) -> bool:
    """Bring one pair into its band by raising; return whether a count changed."""
    numerator, denominator = levels[band.numerator], levels[band.denominator]
    if band.contains(numerator, denominator):
        return False

    target_pair = _smallest_pair_in_band(band, numerator, denominator, caps[band.numerator], caps[band.denominator])
    reached = target_pair is not None
    if target_pair is None:
        target_pair = _closest_reachable(band, numerator, denominator, caps[band.numerator], caps[band.denominator])
    new_numerator, new_denominator = target_pair
    if (new_numerator, new_denominator) == (numerator, denominator):
        return False

    reason = _reason(band, numerator, denominator, new_numerator, new_denominator, reached)
    levels[band.numerator], levels[band.denominator] = new_numerator, new_denominator
    reasons[band.numerator].append(reason)
    reasons[band.denominator].append(reason)
    return True


def _smallest_pair_in_band(band: RatioBand, numerator: int, denominator: int, numerator_cap: int, denominator_cap: int) -> tuple[int, int] | None:
    """Return the in-band pair with the fewest added denominator replicas, then numerator ones."""
    for candidate_denominator in range(max(denominator, 1), denominator_cap + 1):
        candidate_numerator = max(numerator, math.ceil(band.low * candidate_denominator))
        if candidate_numerator > numerator_cap:
            return None
        if Fraction(candidate_numerator, candidate_denominator) <= band.high:
            return candidate_numerator, candidate_denominator
    return None


def _closest_reachable(band: RatioBand, numerator: int, denominator: int, numerator_cap: int, denominator_cap: int) -> tuple[int, int]:
    """Raise only the small side, as far as its cap allows."""
    if denominator > 0 and Fraction(numerator, denominator) < band.low:
        return min(numerator_cap, math.ceil(band.low * denominator)), denominator
    return numerator, min(denominator_cap, math.ceil(numerator / band.high))


def _reason(band: RatioBand, numerator: int, denominator: int, new_numerator: int, new_denominator: int, reached: bool) -> str:
    top, bottom = _short(band.numerator), _short(band.denominator)
    if denominator == 0:
        position = "has no denominator replicas"
    else:
        ratio = Fraction(numerator, denominator)
        position = f"= {float(ratio):.3g} is {'below' if ratio < band.low else 'above'} the band"
    raised = [
        f"{name} {before} -> {after}"
        for name, before, after in ((top, numerator, new_numerator), (bottom, denominator, new_denominator))
        if after != before
    ]
    text = (
        f"ratio band {band.name} [{band.min_ratio:g}, {band.max_ratio:g}]: "
        f"{top} {numerator} / {bottom} {denominator} {position}; raised {', '.join(raised)}"
    )
    if not reached:
        text += " (capped at maxReplicas, still outside the band)"
    return text


def _short(target: str) -> str:
    # Target ids are namespace/kind/name; the object name is enough inside one reason.
    return target.rsplit("/", 1)[-1]


def _exact(value: float) -> Fraction:
    return Fraction(repr(value)) if isinstance(value, float) else Fraction(value)
