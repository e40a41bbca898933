"""GPU budgets: cap the GPUs that one tick's proposals may use in a scope, by priority.

A scope is an opaque key (a namespace, or "cluster" for all targets), and one target may
count against several scopes. `apply_budgets` takes every target's proposal of a tick at
once, so a rebalance (one target shrinks, another grows) is settled in one step. The shrink
frees its GPUs and the grow takes them in the same tick, so neither waits for the other.
`write_order` puts the shrinks first, so pods release GPUs as early as possible. Pods that
are still terminating hold their GPUs, so new pods may wait briefly for the scheduler.

Allocation starts every target at its floor and adds replicas back one at a time, in this
order, each only while it fits in every budgeted scope of the target:

1. up to min(current, proposed) (its floor when that is higher), highest priority first.
   A target is cut below that level only when these levels of all targets together exceed
   the budget, that is when the GPUs in use already exceed it or a target is below its floor.
2. up to the proposal, highest priority first. Growth is the first thing cut.

Inside one priority, targets take turns one replica at a time (in target order), so equals
share the cut. A lower-priority target can still grow when the next replica of every
higher-priority target is too large for the GPUs left. A larger priority number means more
important, as with Kubernetes PriorityClass values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Iterable, Mapping, Protocol, Sequence, TypeVar

from autoscaler.behavior import Adjustment

STEP_BUDGET = "budget"


class BudgetError(ValueError):
    """A budget input with a missing or invalid value; the message names the target or scope."""


@dataclass(frozen=True)
class BudgetRequest:
    """One target's proposal for this tick, as the budget needs it.

    `floor` is the lowest the target may go (max of minReplicas and the gang's minAvailable).
    `gpus_per_replica` is in GPUs, 0 for a target that uses none. A target counts against
    every scope in `scopes`; a scope without a budget does not limit it.
    """

    target: str
    scopes: tuple[str, ...]
    priority: int
    current: int
    proposed: int
    floor: int
    gpus_per_replica: float

    def __post_init__(self) -> None:
        if isinstance(self.scopes, str):
            object.__setattr__(self, "scopes", (self.scopes,))
        for name in ("current", "proposed", "floor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise BudgetError(f"target {self.target}: {name} must be an integer >= 0, got {value!r}")
        if isinstance(self.priority, bool) or not isinstance(self.priority, int):
            raise BudgetError(f"target {self.target}: priority must be an integer, got {self.priority!r}")
        gpus = self.gpus_per_replica
        if isinstance(gpus, bool) or not isinstance(gpus, (int, float)) or not math.isfinite(gpus) or gpus < 0:
            raise BudgetError(f"target {self.target}: gpus_per_replica must be a finite number >= 0, got {gpus!r}")


@dataclass(frozen=True)
class BudgetResult:
    """The replicas a target may have after the budget, with the reason when the budget cut it."""

    target: str
    proposed: int
    replicas: int
    reason: str = ""

    @property
    def cut(self) -> bool:
        return self.replicas < self.proposed

    def as_adjustment(self) -> Adjustment | None:
        """Return the `budget` step for a decision's adjustments, or None when nothing was cut."""
        if not self.cut:
            return None
        return Adjustment(STEP_BUDGET, self.proposed, self.replicas, self.reason)


@dataclass(frozen=True)
class ScopeUsage:
    """GPUs in one budgeted scope: in use now, proposed, needed by the floors, and granted."""

    scope: str
    budget: float
    current_gpus: float
    proposed_gpus: float
    floor_gpus: float
    final_gpus: float

    @property
    def floors_exceed_budget(self) -> bool:
        return self.floor_gpus > self.budget


@dataclass(frozen=True)
class BudgetOutcome:
    """The result per target id, and the GPU totals per budgeted scope that has members."""

    results: dict[str, BudgetResult] = field(default_factory=dict)
    scopes: dict[str, ScopeUsage] = field(default_factory=dict)


def apply_budgets(requests: Sequence[BudgetRequest], budgets: Mapping[str, float]) -> BudgetOutcome:
    """Cut the proposals of one tick so that no budgeted scope uses more GPUs than its budget.

    Guarantees: no target ends above its proposal, and none below its floor, except that a
    proposal below its floor is kept as is because the budget never raises a target. Every
    scope whose floors fit ends within its budget. When floors alone exceed a scope's budget,
    its targets stay at their floors and the reason says so. The result does not depend on
    the order of `requests`.
    """
    checked_budgets = _check_budgets(budgets)
    ordered = _check_requests(requests)
    allocation = _Allocation(ordered, checked_budgets)

    allocation.raise_to({item.target: _keep_level(item) for item in ordered})
    allocation.raise_to({item.target: item.proposed for item in ordered})

    usage = _scope_usage(ordered, checked_budgets, allocation.levels)
    results = {item.target: _result(item, allocation, usage) for item in ordered}
    return BudgetOutcome(results=results, scopes=usage)


class _HasScale(Protocol):
    current: int | None
    desired: int | None


ScaleChange = TypeVar("ScaleChange", bound=_HasScale)


def write_order(changes: Iterable[ScaleChange]) -> list[ScaleChange]:
    """Sort scale changes so that every shrink is written before any grow.

    Each item needs `current` and `desired` (an engine Decision has both). Shrinks come
    first, then unchanged or unread targets, then grows. The order is otherwise kept.
    """

    def rank(change: ScaleChange) -> int:
        if change.current is None or change.desired is None or change.desired == change.current:
            return 1
        return 0 if change.desired < change.current else 2

    return sorted(changes, key=rank)


# --- Allocation -----------------------------------------------------------------------------


def _hard_floor(item: BudgetRequest) -> int:
    return min(item.floor, item.proposed)


def _keep_level(item: BudgetRequest) -> int:
    return max(_hard_floor(item), min(item.current, item.proposed))


class _Allocation:
    """Replica levels and the GPUs they use per budgeted scope, raised one replica at a time."""

    def __init__(self, requests: Sequence[BudgetRequest], budgets: Mapping[str, Fraction]) -> None:
        self.requests = requests
        self.budgets = budgets
        self.gpus = {item.target: _exact(item.gpus_per_replica) for item in requests}
        self.scopes = {item.target: [scope for scope in item.scopes if scope in budgets] for item in requests}
        self.levels = {item.target: _hard_floor(item) for item in requests}
        self.used = {scope: Fraction(0) for scope in budgets}
        for item in requests:
            for scope in self.scopes[item.target]:
                self.used[scope] += self.levels[item.target] * self.gpus[item.target]

    def fits_one_more(self, target: str) -> bool:
        gpus = self.gpus[target]
        return all(self.used[scope] + gpus <= self.budgets[scope] for scope in self.scopes[target])

    def blocking_scopes(self, target: str) -> list[str]:
        gpus = self.gpus[target]
        return [scope for scope in self.scopes[target] if self.used[scope] + gpus > self.budgets[scope]]

    def raise_to(self, limits: Mapping[str, int]) -> None:
        """Raise levels toward `limits`, priority classes from highest, taking turns inside a class."""
        for priority in sorted({item.priority for item in self.requests}, reverse=True):
            members = [item.target for item in self.requests if item.priority == priority]
            self._raise_class(members, limits)

    def _raise_class(self, members: list[str], limits: Mapping[str, int]) -> None:
        waiting = [target for target in members if self.levels[target] < limits[target]]
        while waiting:
            still_waiting = []
            for target in waiting:
                if not self.fits_one_more(target):
                    continue
                self._add_replica(target)
                if self.levels[target] < limits[target]:
                    still_waiting.append(target)
            waiting = still_waiting

    def _add_replica(self, target: str) -> None:
        self.levels[target] += 1
        for scope in self.scopes[target]:
            self.used[scope] += self.gpus[target]


# --- Results and reasons --------------------------------------------------------------------


def _scope_usage(
    requests: Sequence[BudgetRequest],
    budgets: Mapping[str, Fraction],
    levels: Mapping[str, int],
) -> dict[str, ScopeUsage]:
    usage = {}
    for scope, budget in budgets.items():
        members = [item for item in requests if scope in item.scopes]
        if not members:
            continue

        def total(count: dict[str, int]) -> float:
            return float(sum((count[item.target] * _exact(item.gpus_per_replica) for item in members), Fraction(0)))

        usage[scope] = ScopeUsage(
            scope=scope,
            budget=float(budget),
            current_gpus=total({item.target: item.current for item in members}),
            proposed_gpus=total({item.target: item.proposed for item in members}),
            floor_gpus=total({item.target: _hard_floor(item) for item in members}),
            final_gpus=total(dict(levels)),
        )
    return usage


def _result(item: BudgetRequest, allocation: _Allocation, usage: Mapping[str, ScopeUsage]) -> BudgetResult:
    final = allocation.levels[item.target]
    if final >= item.proposed:
        return BudgetResult(item.target, item.proposed, final)

    # Name the scope that stopped the next replica, preferring one whose floors do not fit.
    blocking = [usage[name] for name in allocation.blocking_scopes(item.target)]
    scope = sorted(blocking, key=lambda entry: not entry.floors_exceed_budget)[0]
    head = f"budget {scope.scope}: {scope.budget:g} GPUs"
    if scope.floors_exceed_budget:
        reason = f"{head}; floors alone need {scope.floor_gpus:g} GPUs, kept at floor {final} (proposed {item.proposed}, priority {item.priority})"
    elif final < _keep_level(item):
        reason = (
            f"{head}, {scope.current_gpus:g} in use; cut {item.proposed} -> {final}"
            f", below current {item.current} (priority {item.priority})"
        )
    else:
        reason = f"{head}, {scope.proposed_gpus:g} proposed; cut {item.proposed} -> {final} (priority {item.priority})"
    return BudgetResult(item.target, item.proposed, final, reason)


def _exact(value: float) -> Fraction:
    # The decimal the user wrote, so 3 x 0.1 GPUs fits a budget of 0.3 exactly.
    return Fraction(repr(value)) if isinstance(value, float) else Fraction(value)


# --- Input checks ---------------------------------------------------------------------------


def _check_budgets(budgets: Mapping[str, float]) -> dict[str, Fraction]:
    checked = {}
    for scope, value in budgets.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise BudgetError(f"budget for scope {scope!r} must be a finite number of GPUs >= 0, got {value!r}")
        checked[scope] = _exact(value)
    return checked


def _check_requests(requests: Sequence[BudgetRequest]) -> list[BudgetRequest]:
    seen: set[str] = set()
    for item in requests:
        if item.target in seen:
            raise BudgetError(f"target {item.target} appears twice in one tick's budget requests")
        seen.add(item.target)
    return sorted(requests, key=lambda item: item.target)
