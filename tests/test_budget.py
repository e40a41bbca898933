"""GPU budgets: a table of named cases with expected replicas, and property tests for the invariants."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.budget import BudgetError, BudgetRequest, apply_budgets, write_order


def request(target, *, current, proposed, gpus=1, floor=0, priority=0, scopes=("llm",)) -> BudgetRequest:
    return BudgetRequest(
        target=target,
        scopes=scopes,
        priority=priority,
        current=current,
        proposed=proposed,
        floor=floor,
        gpus_per_replica=gpus,
    )


# Each case: name, requests, budgets, expected replicas per target.
CASES = [
    (
        "fits unchanged",
        [request("a", current=2, proposed=3), request("b", current=2, proposed=2)],
        {"llm": 8},
        {"a": 3, "b": 2},
    ),
    (
        "growth cut lowest priority first",
        [
            request("a", current=2, proposed=4, gpus=2, priority=2),
            request("b", current=2, proposed=4, gpus=2, priority=1),
        ],
        {"llm": 12},
        {"a": 4, "b": 2},
    ),
    (
        "equal priority shares growth",
        [request("a", current=2, proposed=5), request("b", current=2, proposed=5)],
        {"llm": 8},
        {"a": 4, "b": 4},
    ),
    (
        "rebalance shrink and grow land",
        [
            request("prefill", current=6, proposed=4, gpus=2, priority=1),
            request("decode", current=2, proposed=4, gpus=2, priority=2),
        ],
        {"llm": 16},
        {"prefill": 4, "decode": 4},
    ),
    (
        "rebalance grow takes freed GPUs",
        [
            request("prefill", current=6, proposed=4, gpus=2, priority=2),
            request("decode", current=2, proposed=6, gpus=2, priority=1),
        ],
        {"llm": 16},
        {"prefill": 4, "decode": 4},
    ),
    (
        "in use over budget cuts below current",
        [
            request("a", current=5, proposed=5, gpus=2, floor=1, priority=2),
            request("b", current=5, proposed=5, gpus=2, floor=1, priority=1),
        ],
        {"llm": 12},
        {"a": 5, "b": 1},
    ),
    (
        "floors exceed budget keep floors",
        [
            request("a", current=4, proposed=4, gpus=4, floor=3),
            request("b", current=2, proposed=2, gpus=4, floor=2),
        ],
        {"llm": 16},
        {"a": 3, "b": 2},
    ),
    (
        "large replica skipped small fills",
        [
            request("big", current=1, proposed=2, gpus=8, priority=2),
            request("small", current=1, proposed=4, gpus=1, priority=1),
        ],
        {"llm": 14},
        {"big": 1, "small": 4},
    ),
    (
        "zero gpu target never cut",
        [request("frontend", current=2, proposed=10, gpus=0)],
        {"llm": 0},
        {"frontend": 10},
    ),
    (
        "scope without budget unlimited",
        [request("a", current=1, proposed=50, scopes=("other",))],
        {"llm": 4},
        {"a": 50},
    ),
    (
        "nested scopes cluster binds",
        [
            request("a", current=1, proposed=8, priority=1, scopes=("ns-a", "cluster")),
            request("b", current=1, proposed=8, priority=2, scopes=("ns-b", "cluster")),
        ],
        {"ns-a": 10, "cluster": 12},
        {"a": 4, "b": 8},
    ),
    (
        "namespace binds before cluster",
        [
            request("a", current=1, proposed=8, priority=2, scopes=("ns-a", "cluster")),
            request("b", current=1, proposed=8, priority=1, scopes=("ns-b", "cluster")),
        ],
        {"ns-a": 3, "cluster": 12},
        {"a": 3, "b": 8},
    ),
    (
        "proposal below floor kept",
        [request("a", current=2, proposed=2, floor=3)],
        {"llm": 100},
        {"a": 2},
    ),
    (
        "floor protects low priority",
        [
            request("a", current=4, proposed=4, floor=2, priority=1),
            request("b", current=4, proposed=4, floor=1, priority=2),
        ],
        {"llm": 5},
        {"a": 2, "b": 3},
    ),
    (
        "fractional gpus exact",
        [request("a", current=1, proposed=10, gpus=0.1)],
        {"llm": 0.3},
        {"a": 3},
    ),
    (
        "scale to zero allowed",
        [request("pcs", current=2, proposed=0, gpus=8)],
        {"llm": 8},
        {"pcs": 0},
    ),
]


@pytest.mark.parametrize(("requests", "budgets", "expected"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_budget_table(requests, budgets, expected):
    outcome = apply_budgets(requests, budgets)
    assert {target: result.replicas for target, result in outcome.results.items()} == expected


# --- Reasons --------------------------------------------------------------------------------


def test_reason_growth_cut():
    outcome = apply_budgets(
        [request("a", current=2, proposed=4, gpus=2, priority=2), request("b", current=2, proposed=6, gpus=2, priority=1)],
        {"llm": 16},
    )
    assert outcome.results["a"].reason == ""
    assert outcome.results["a"].cut is False
    assert outcome.results["b"].reason == "budget llm: 16 GPUs, 20 proposed; cut 6 -> 4 (priority 1)"
    assert outcome.results["b"].cut is True


def test_reason_below_current():
    outcome = apply_budgets(
        [request("a", current=5, proposed=5, gpus=2, floor=1, priority=2), request("b", current=5, proposed=5, gpus=2, floor=1, priority=1)],
        {"llm": 12},
    )
    assert outcome.results["b"].reason == "budget llm: 12 GPUs, 20 in use; cut 5 -> 1, below current 5 (priority 1)"


def test_reason_floors_exceed():
    outcome = apply_budgets(
        [request("a", current=4, proposed=4, gpus=4, floor=3, priority=1), request("b", current=2, proposed=2, gpus=4, floor=2)],
        {"llm": 16},
    )
    assert outcome.results["a"].reason == "budget llm: 16 GPUs; floors alone need 20 GPUs, kept at floor 3 (proposed 4, priority 1)"
    assert outcome.results["b"].reason == ""
    assert outcome.scopes["llm"].floors_exceed_budget is True


def test_reason_names_blocking_scope():
    outcome = apply_budgets(
        [
            request("a", current=1, proposed=8, priority=1, scopes=("ns-a", "cluster")),
            request("b", current=1, proposed=8, priority=2, scopes=("ns-b", "cluster")),
        ],
        {"ns-a": 10, "cluster": 12},
    )
    assert outcome.results["a"].reason.startswith("budget cluster: 12 GPUs, 16 proposed; cut 8 -> 4")


def test_scope_usage_totals():
    outcome = apply_budgets(
        [request("a", current=6, proposed=4, gpus=2, floor=1), request("b", current=2, proposed=6, gpus=2, floor=1)],
        {"llm": 16, "unused": 4},
    )
    usage = outcome.scopes["llm"]
    assert usage.budget == 16
    assert usage.current_gpus == 16
    assert usage.proposed_gpus == 20
    assert usage.floor_gpus == 4
    assert usage.final_gpus == 16
    assert "unused" not in outcome.scopes


# --- Invalid input ----------------------------------------------------------------------------


def test_negative_budget_rejected():
    with pytest.raises(BudgetError, match=r"budget for scope 'llm' must be a finite number of GPUs >= 0, got -1"):
        apply_budgets([], {"llm": -1})


def test_negative_proposal_rejected():
    with pytest.raises(BudgetError, match=r"target a: proposed must be an integer >= 0, got -2"):
        request("a", current=1, proposed=-2)


def test_nan_gpus_rejected():
    with pytest.raises(BudgetError, match=r"target a: gpus_per_replica must be a finite number >= 0, got nan"):
        request("a", current=1, proposed=1, gpus=float("nan"))


def test_duplicate_target_rejected():
    with pytest.raises(BudgetError, match=r"target a appears twice"):
        apply_budgets([request("a", current=1, proposed=1), request("a", current=1, proposed=2)], {"llm": 4})


def test_scope_string_accepted():
    assert request("a", current=1, proposed=1, scopes="llm").scopes == ("llm",)


# --- Write order ------------------------------------------------------------------------------


@dataclass
class Change:
    target: str
    current: int | None
    desired: int | None


def test_write_order_shrinks_first():
    changes = [Change("grow", 2, 4), Change("same", 3, 3), Change("shrink", 6, 4), Change("unread", None, None), Change("shrink2", 2, 1)]
    assert [change.target for change in write_order(changes)] == ["shrink", "shrink2", "same", "unread", "grow"]


# --- Properties -------------------------------------------------------------------------------

GPU_SIZES = st.sampled_from([0, 1, 2, 4, 8, 0.5])


@st.composite
def budget_requests(draw):
    count = draw(st.integers(1, 6))
    requests = []
    for index in range(count):
        proposed = draw(st.integers(0, 10))
        requests.append(
            BudgetRequest(
                target=f"t{index}",
                scopes=tuple(draw(st.lists(st.sampled_from(["a", "b", "cluster"]), min_size=1, max_size=2, unique=True))),
                priority=draw(st.integers(0, 3)),
                current=draw(st.integers(0, 10)),
                proposed=proposed,
                floor=draw(st.integers(0, 4)),
                gpus_per_replica=draw(GPU_SIZES),
            )
        )
    budgets = draw(st.dictionaries(st.sampled_from(["a", "b", "cluster"]), st.integers(0, 80), min_size=1))
    return requests, budgets


def scope_total(requests, replicas, scope) -> Fraction:
    return sum((replicas[item.target] * Fraction(repr(float(item.gpus_per_replica))) for item in requests if scope in item.scopes), Fraction(0))


def keep_level(item: BudgetRequest) -> int:
    return max(min(item.floor, item.proposed), min(item.current, item.proposed))


@settings(max_examples=150, deadline=None)
@given(budget_requests())
def test_within_proposal_and_floor(case):
    requests, budgets = case
    outcome = apply_budgets(requests, budgets)
    for item in requests:
        replicas = outcome.results[item.target].replicas
        assert replicas <= item.proposed
        assert replicas >= min(item.floor, item.proposed)


@settings(max_examples=150, deadline=None)
@given(budget_requests())
def test_total_within_budget_when_floors_fit(case):
    requests, budgets = case
    outcome = apply_budgets(requests, budgets)
    replicas = {target: result.replicas for target, result in outcome.results.items()}
    floors = {item.target: min(item.floor, item.proposed) for item in requests}
    for scope, budget in budgets.items():
        if scope_total(requests, floors, scope) <= budget:
            assert scope_total(requests, replicas, scope) <= budget


@settings(max_examples=100, deadline=None)
@given(budget_requests(), st.randoms(use_true_random=False))
def test_deterministic_in_any_order(case, random):
    requests, budgets = case
    shuffled = list(requests)
    random.shuffle(shuffled)
    assert apply_budgets(requests, budgets) == apply_budgets(shuffled, budgets)
    assert apply_budgets(requests, budgets) == apply_budgets(requests, budgets)


@settings(max_examples=150, deadline=None)
@given(budget_requests())
def test_below_keep_only_when_keep_exceeds(case):
    requests, budgets = case
    outcome = apply_budgets(requests, budgets)
    keeps = {item.target: keep_level(item) for item in requests}
    for item in requests:
        if outcome.results[item.target].replicas < keeps[item.target]:
            over = [scope for scope in item.scopes if scope in budgets and scope_total(requests, keeps, scope) > budgets[scope]]
            assert over, f"{item.target} cut below min(current, proposed) while every scope had room"


@settings(max_examples=150, deadline=None)
@given(budget_requests())
def test_proposals_land_when_they_fit(case):
    requests, budgets = case
    proposals = {item.target: item.proposed for item in requests}
    fits = all(scope_total(requests, proposals, scope) <= budget for scope, budget in budgets.items())
    outcome = apply_budgets(requests, budgets)
    if fits:
        assert {target: result.replicas for target, result in outcome.results.items()} == proposals
        assert all(result.reason == "" for result in outcome.results.values())


@settings(max_examples=300, deadline=None)
@given(
    shrink_from=st.integers(1, 12),
    shrink_by=st.integers(1, 12),
    grow_by=st.integers(1, 12),
    gpus=st.sampled_from([1, 2, 4, 8]),
    grow_first=st.booleans(),
)
def test_rebalance_never_deadlocks(shrink_from, shrink_by, grow_by, gpus, grow_first):
    # The budget is full now; the shrink frees at least what the grow needs, so both land in this tick.
    shrink_to = max(0, shrink_from - shrink_by)
    freed = shrink_from - shrink_to
    grow_from = 1
    grow_to = grow_from + min(grow_by, freed)
    budget = (shrink_from + grow_from) * gpus
    requests = [
        request("shrinking", current=shrink_from, proposed=shrink_to, gpus=gpus, priority=0 if grow_first else 1),
        request("growing", current=grow_from, proposed=grow_to, gpus=gpus, priority=1 if grow_first else 0),
    ]
    outcome = apply_budgets(requests, {"llm": budget})
    assert outcome.results["shrinking"].replicas == shrink_to
    assert outcome.results["growing"].replicas == grow_to


@settings(max_examples=300, deadline=None)
@given(
    items=st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 8), st.integers(0, 8), st.integers(0, 3)),
        min_size=2,
        max_size=6,
    ),
    budget=st.integers(0, 40),
)
def test_lower_priority_cut_first(items, budget):
    # With equal replica sizes in one scope, priority decides alone.
    requests = [
        request(f"t{index}", current=current, proposed=proposed, floor=floor, priority=priority)
        for index, (priority, current, proposed, floor) in enumerate(items)
    ]
    outcome = apply_budgets(requests, {"llm": budget})
    final = {target: result.replicas for target, result in outcome.results.items()}
    for high in requests:
        for low in requests:
            if low.priority >= high.priority:
                continue
            if final[high.target] < high.proposed:
                assert final[low.target] <= keep_level(low)
            if final[high.target] < keep_level(high):
                assert final[low.target] == min(low.floor, low.proposed)


def test_result_as_adjustment():
    outcome = apply_budgets(
        [request("a", current=2, proposed=4, gpus=2, priority=2), request("b", current=2, proposed=6, gpus=2, priority=1)],
        {"llm": 16},
    )
    assert outcome.results["a"].as_adjustment() is None
    adjustment = outcome.results["b"].as_adjustment()
    assert (adjustment.step, adjustment.before, adjustment.after) == ("budget", 6, 4)
    assert adjustment.reason == outcome.results["b"].reason
