"""MetricStore, quantity formatting and label selectors of the external metrics adapter."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoscaler.adapter.selector import SelectorError, parse_selector
from autoscaler.adapter.store import (
    DESIRED_REPLICAS_METRIC,
    MetricNotFound,
    MetricStore,
    MetricUnavailable,
    format_quantity,
    signal_metric_name,
)
from autoscaler.engine import Decision
from metrics.sample import Sample

NOW = 1_800_000_000.0
ALL = parse_selector(None)


def decision(target: str, desired: int | None, *, current: int | None = 2, rule: str = "decode", samples=None) -> Decision:
    return Decision(NOW, target, rule, current, desired, "test", samples=samples or {})


# --- quantities -----------------------------------------------------------------------------

QUANTITY_CASES = [
    ("zero", 0.0, "0"),
    ("integer", 3.0, "3"),
    ("large integer", 123456.0, "123456"),
    ("negative integer", -2.0, "-2"),
    ("fraction in milli", 0.062, "62m"),
    ("one and a half", 1.5, "1500m"),
    ("rounds to nearest milli", 0.0625, "62m"),
    ("rounds up to nearest milli", 0.0626, "63m"),
    ("rounds to a whole number", 2.9999999, "3"),
    ("negative fraction", -0.25, "-250m"),
    ("below half a milli in nano", 0.00004, "40000n"),
    ("tiny value in nano", 4e-8, "40n"),
]


@pytest.mark.parametrize(("value", "expected"), [case[1:] for case in QUANTITY_CASES], ids=[case[0] for case in QUANTITY_CASES])
def test_format_quantity_cases(value: float, expected: str) -> None:
    assert format_quantity(value) == expected


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_format_quantity_rejects_non_finite(value: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        format_quantity(value)


def _parse_quantity(text: str) -> Decimal:
    for suffix, scale in (("m", Decimal("1e-3")), ("n", Decimal("1e-9"))):
        if text.endswith(suffix):
            return Decimal(text[:-1]) * scale
    return Decimal(text)


@given(st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False))
def test_format_quantity_within_half_milli(value: float) -> None:
    formatted = format_quantity(value)
    assert abs(float(_parse_quantity(formatted)) - value) <= 0.0005 + 1e-9 * abs(value)


# One nano unit is the smallest quantity Kubernetes represents, so the property starts there.
@given(st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False).filter(lambda v: abs(v) >= 1e-9))
def test_format_quantity_keeps_non_zero(value: float) -> None:
    formatted = format_quantity(value)
    assert _parse_quantity(formatted) != 0, formatted


def test_signal_metric_name_sanitised() -> None:
    assert signal_metric_name("itl_p90") == "grove_autoscaler_signal_itl_p90"
    assert signal_metric_name("KV-cache.usage") == "grove_autoscaler_signal_kv_cache_usage"


# --- label selectors ------------------------------------------------------------------------

LABELS = {"grove_io_target_kind": "podclique", "grove_io_target_name": "pcs-0-decode", "grove_io_rule": "decode", "index": "3"}

SELECTOR_CASES = [
    ("empty", "", True),
    ("equality", "grove_io_target_name=pcs-0-decode", True),
    ("double equals", "grove_io_target_name==pcs-0-decode", True),
    ("equality mismatch", "grove_io_target_name=pcs-0-prefill", False),
    ("inequality", "grove_io_rule!=prefill", True),
    ("inequality on missing key", "absent!=x", True),
    ("in set", "grove_io_target_kind in (podclique,podcliqueset)", True),
    ("in set mismatch", "grove_io_target_kind in (podcliqueset)", False),
    ("notin set", "grove_io_rule notin (prefill, frontend)", True),
    ("notin on missing key", "absent notin (a)", True),
    ("exists", "grove_io_rule", True),
    ("exists missing", "absent", False),
    ("does not exist", "!absent", True),
    ("does not exist present", "!grove_io_rule", False),
    ("greater than", "index>2", True),
    ("less than", "index<3", False),
    ("greater than non-integer label", "grove_io_rule>1", False),
    ("conjunction", "grove_io_target_kind=podclique,grove_io_target_name=pcs-0-decode", True),
    ("conjunction one false", "grove_io_target_kind=podclique,grove_io_rule=prefill", False),
    ("spaces around tokens", " grove_io_rule = decode , index ", True),
    ("empty value", "grove_io_rule=", False),
    ("prefixed key", "grove.io/podclique!=x", True),
]


@pytest.mark.parametrize(("text", "matches"), [case[1:] for case in SELECTOR_CASES], ids=[case[0] for case in SELECTOR_CASES])
def test_selector_matching_cases(text: str, matches: bool) -> None:
    assert parse_selector(text).matches(LABELS) is matches


INVALID_SELECTORS = [
    ("missing value set", "a in"),
    ("unclosed value set", "a in (b,c"),
    ("unknown operator", "a ~ b"),
    ("double comma", "a=b,,c=d"),
    ("trailing comma", "a=b,"),
    ("invalid key", "-a=b"),
    ("invalid value", "a=b c"),
    ("value too long", "a=" + "x" * 64),
    ("non-integer bound", "a>b"),
    ("bad key prefix", "Bad_Prefix/a=b"),
    ("lone bang", "!"),
]


@pytest.mark.parametrize("text", [case[1] for case in INVALID_SELECTORS], ids=[case[0] for case in INVALID_SELECTORS])
def test_selector_rejects_invalid(text: str) -> None:
    with pytest.raises(SelectorError, match="invalid label selector"):
        parse_selector(text)


def test_selector_round_trips_through_str() -> None:
    text = "a=b,c!=d,e in (f,g),h notin (i),j,!k,l>1,m<2"
    selector = parse_selector(text)
    assert parse_selector(str(selector)) == selector


# --- MetricStore ----------------------------------------------------------------------------


def test_store_before_first_tick_unavailable() -> None:
    store = MetricStore()
    with pytest.raises(MetricUnavailable, match="not published a tick"):
        store.query(DESIRED_REPLICAS_METRIC, "llm", ALL)
    with pytest.raises(MetricNotFound):
        store.query("cpu", "llm", ALL)
    assert store.metric_names() == [DESIRED_REPLICAS_METRIC]


def test_store_serves_desired_and_signals() -> None:
    store = MetricStore()
    samples = {"itl_p90": Sample.of(0.062), "queue": Sample.idle()}
    store.publish(NOW, [decision("llm/podclique/pcs-0-decode", 5, samples=samples)])

    [desired] = store.query(DESIRED_REPLICAS_METRIC, "llm", ALL)
    assert desired.value == "5"
    assert desired.time == NOW
    assert desired.labels == {"grove_io_target_kind": "podclique", "grove_io_target_name": "pcs-0-decode", "grove_io_rule": "decode"}

    [itl] = store.query("grove_autoscaler_signal_itl_p90", "llm", ALL)
    assert itl.value == "62m"
    [queue] = store.query("grove_autoscaler_signal_queue", "llm", ALL)
    assert queue.value == "0"
    assert store.metric_names() == [DESIRED_REPLICAS_METRIC, "grove_autoscaler_signal_itl_p90", "grove_autoscaler_signal_queue"]


def test_store_unknown_sample_unavailable() -> None:
    store = MetricStore()
    samples = {"itl_p90": Sample.unknown("query timed out")}
    store.publish(NOW, [decision("llm/podclique/pcs-0-decode", 3, samples=samples)])
    with pytest.raises(MetricUnavailable, match="query timed out"):
        store.query("grove_autoscaler_signal_itl_p90", "llm", ALL)


def test_store_unknown_desired_unavailable() -> None:
    store = MetricStore()
    store.publish(NOW, [decision("llm/podclique/pcs-0-decode", None, current=None)])
    with pytest.raises(MetricUnavailable, match="pcs-0-decode"):
        store.query(DESIRED_REPLICAS_METRIC, "llm", ALL)


def test_store_one_unknown_fails_whole_selection() -> None:
    store = MetricStore()
    store.publish(NOW, [decision("llm/podclique/a", 3), decision("llm/podclique/b", None, current=None)])
    with pytest.raises(MetricUnavailable, match="1 of 2"):
        store.query(DESIRED_REPLICAS_METRIC, "llm", ALL)
    [item] = store.query(DESIRED_REPLICAS_METRIC, "llm", parse_selector("grove_io_target_name=a"))
    assert item.value == "3"


def test_store_filters_namespace_and_selector() -> None:
    store = MetricStore()
    store.publish(
        NOW,
        [
            decision("llm/podclique/pcs-0-decode", 4),
            decision("llm/podcliquescalinggroup/pcs-0-workers", 2, rule="workers"),
            decision("other/podclique/pcs-0-decode", 9),
        ],
    )
    assert [item.value for item in store.query(DESIRED_REPLICAS_METRIC, "llm", ALL)] == ["4", "2"]
    assert [item.value for item in store.query(DESIRED_REPLICAS_METRIC, "other", ALL)] == ["9"]
    selected = store.query(DESIRED_REPLICAS_METRIC, "llm", parse_selector("grove_io_target_kind=podcliquescalinggroup"))
    assert [item.target for item in selected] == ["llm/podcliquescalinggroup/pcs-0-workers"]
    with pytest.raises(MetricNotFound, match="namespace empty"):
        store.query(DESIRED_REPLICAS_METRIC, "empty", ALL)
    with pytest.raises(MetricNotFound, match="grove_io_rule=nothing"):
        store.query(DESIRED_REPLICAS_METRIC, "llm", parse_selector("grove_io_rule=nothing"))


def test_store_replaces_previous_tick() -> None:
    store = MetricStore()
    store.publish(NOW, [decision("llm/podclique/a", 3, samples={"itl_p90": Sample.of(1.0)})])
    store.publish(NOW + 15, [decision("llm/podclique/b", 4)])
    [item] = store.query(DESIRED_REPLICAS_METRIC, "llm", ALL)
    assert item.target == "llm/podclique/b"
    assert item.time == NOW + 15
    with pytest.raises(MetricNotFound):
        store.query("grove_autoscaler_signal_itl_p90", "llm", ALL)


def test_store_stale_tick_unavailable() -> None:
    clock = [NOW]
    store = MetricStore(max_age_seconds=45, clock=lambda: clock[0])
    store.publish(NOW, [decision("llm/podclique/a", 3)])
    clock[0] = NOW + 45
    assert store.query(DESIRED_REPLICAS_METRIC, "llm", ALL)[0].value == "3"
    clock[0] = NOW + 46
    with pytest.raises(MetricUnavailable, match="46 s ago"):
        store.query(DESIRED_REPLICAS_METRIC, "llm", ALL)


def test_store_rejects_invalid_max_age() -> None:
    with pytest.raises(ValueError, match="max_age_seconds"):
        MetricStore(max_age_seconds=0)


@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.one_of(st.none(), st.integers(min_value=0, max_value=1000))),
        min_size=1,
        max_size=4,
        unique_by=lambda pair: pair[0],
    )
)
def test_store_never_partial_list(targets: list[tuple[str, int | None]]) -> None:
    store = MetricStore()
    store.publish(NOW, [decision(f"llm/podclique/{name}", desired, current=None if desired is None else 1) for name, desired in targets])
    if any(desired is None for _, desired in targets):
        with pytest.raises(MetricUnavailable):
            store.query(DESIRED_REPLICAS_METRIC, "llm", ALL)
    else:
        items = store.query(DESIRED_REPLICAS_METRIC, "llm", ALL)
        assert sorted(int(item.value) for item in items) == sorted(desired for _, desired in targets)
