"""Prefill/decode ratio bands: named cases with expected replicas, and property tests."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.coordination import CoordinationError, RatioBand, apply_ratio_bands, pair_bands
from autoscaler.specs import DiscoveredTarget
from autoscaler.targets import Kind, TargetRef

PREFILL = "llm/podcliquescalinggroup/pcs-0-prefill"
DECODE = "llm/podcliquescalinggroup/pcs-0-decode"


def band(low, high, *, name="pd", numerator=PREFILL, denominator=DECODE) -> RatioBand:
    return RatioBand(name=name, numerator=numerator, denominator=denominator, min_ratio=low, max_ratio=high)


# Each case: name, (min_ratio, max_ratio), proposals (prefill, decode), maxima (prefill, decode), expected (prefill, decode).
CASES = [
    ("in band unchanged", (0.5, 2), (2, 3), (10, 10), (2, 3)),
    ("prefill too low raised", (0.5, 2), (1, 6), (10, 10), (3, 6)),
    ("decode too low raised", (0.5, 2), (8, 2), (10, 10), (8, 4)),
    ("raise rounds up", (0.5, 2), (1, 5), (10, 10), (3, 5)),
    ("prefill capped", (0.5, 2), (1, 8), (2, 10), (2, 8)),
    ("decode capped", (0.5, 2), (9, 2), (10, 3), (9, 3)),
    ("edge of band in band", (0.5, 2), (4, 2), (10, 10), (4, 2)),
    ("exact ratio narrow band", (0.5, 0.5), (2, 3), (10, 10), (2, 4)),
    ("decimal bound exact", (0.3, 0.3), (3, 10), (10, 10), (3, 10)),
    ("zero decode raised", (0.5, 2), (3, 0), (10, 10), (3, 2)),
    ("both zero in band", (0.5, 2), (0, 0), (10, 10), (0, 0)),
    ("zero prefill raised", (0.5, 2), (0, 4), (10, 10), (2, 4)),
    ("proposal above max kept", (0.5, 2), (12, 2), (10, 4), (12, 4)),
]


@pytest.mark.parametrize(
    ("limits", "proposed", "maxima", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_ratio_band_table(limits, proposed, maxima, expected):
    results = apply_ratio_bands(
        [band(*limits)],
        {PREFILL: proposed[0], DECODE: proposed[1]},
        {PREFILL: maxima[0], DECODE: maxima[1]},
    )
    assert (results[PREFILL].replicas, results[DECODE].replicas) == expected


def test_reason_on_both_sides():
    results = apply_ratio_bands([band(0.5, 2)], {PREFILL: 1, DECODE: 6}, {PREFILL: 10, DECODE: 10})
    expected = "ratio band pd [0.5, 2]: pcs-0-prefill 1 / pcs-0-decode 6 = 0.167 is below the band; raised pcs-0-prefill 1 -> 3"
    assert results[PREFILL].reasons == (expected,)
    assert results[DECODE].reasons == (expected,)
    assert results[PREFILL].raised is True
    assert results[DECODE].raised is False


def test_reason_when_capped():
    results = apply_ratio_bands([band(0.5, 2)], {PREFILL: 1, DECODE: 8}, {PREFILL: 2, DECODE: 10})
    assert results[PREFILL].reasons == (
        "ratio band pd [0.5, 2]: pcs-0-prefill 1 / pcs-0-decode 8 = 0.125 is below the band; "
        "raised pcs-0-prefill 1 -> 2 (capped at maxReplicas, still outside the band)",
    )


def test_reason_zero_denominator():
    results = apply_ratio_bands([band(0.5, 2)], {PREFILL: 3, DECODE: 0}, {PREFILL: 10, DECODE: 10})
    assert results[DECODE].reasons == (
        "ratio band pd [0.5, 2]: pcs-0-prefill 3 / pcs-0-decode 0 has no denominator replicas; raised pcs-0-decode 0 -> 2",
    )


def test_in_band_has_no_reason():
    results = apply_ratio_bands([band(0.5, 2)], {PREFILL: 2, DECODE: 2}, {PREFILL: 10, DECODE: 10})
    assert results[PREFILL].reasons == ()
    assert results[DECODE].reasons == ()


def test_missing_side_skips_band():
    results = apply_ratio_bands([band(0.5, 2)], {PREFILL: 1, DECODE: None}, {PREFILL: 10, DECODE: 10})
    assert results[PREFILL].replicas == 1
    assert results[PREFILL].reasons == ("ratio band pd: skipped, pcs-0-decode has no proposal this tick",)
    assert DECODE not in results


def test_targets_outside_bands_pass_through():
    results = apply_ratio_bands([band(0.5, 2)], {PREFILL: 2, DECODE: 2, "llm/podclique/pcs-0-frontend": 7}, {PREFILL: 10, DECODE: 10})
    assert results["llm/podclique/pcs-0-frontend"].replicas == 7
    assert results["llm/podclique/pcs-0-frontend"].reasons == ()


def test_shared_target_bands_settle():
    encode = "llm/podclique/pcs-0-encode"
    bands = [band(1, 1, name="pd"), band(1, 1, name="ep", numerator=encode, denominator=PREFILL)]
    results = apply_ratio_bands(bands, {PREFILL: 1, DECODE: 3, encode: 1}, {PREFILL: 10, DECODE: 10, encode: 10})
    assert results[PREFILL].replicas == 3
    assert results[DECODE].replicas == 3
    assert results[encode].replicas == 3
    assert len(results[PREFILL].reasons) == 2


# --- Invalid input ----------------------------------------------------------------------------

INVALID_BANDS = [
    ("min above max", {"min_ratio": 3, "max_ratio": 2}, r"min_ratio 3 is greater than max_ratio 2"),
    ("negative min", {"min_ratio": -1, "max_ratio": 2}, r"min_ratio must be a finite number >= 0, got -1"),
    ("zero max", {"min_ratio": 0, "max_ratio": 0}, r"max_ratio must be greater than 0, got 0"),
    ("infinite max", {"min_ratio": 0, "max_ratio": float("inf")}, r"max_ratio must be a finite number >= 0, got inf"),
]


@pytest.mark.parametrize(("fields", "message"), [case[1:] for case in INVALID_BANDS], ids=[case[0] for case in INVALID_BANDS])
def test_invalid_band_rejected(fields, message):
    with pytest.raises(CoordinationError, match=message):
        RatioBand(name="pd", numerator=PREFILL, denominator=DECODE, **fields)


def test_same_target_both_sides_rejected():
    with pytest.raises(CoordinationError, match=r"numerator and denominator are both"):
        band(1, 2, denominator=PREFILL)


def test_missing_maximum_rejected():
    with pytest.raises(CoordinationError, match=rf"target {DECODE}: no maxReplicas given"):
        apply_ratio_bands([band(0.5, 2)], {PREFILL: 1, DECODE: 2}, {PREFILL: 10})


def test_negative_proposal_rejected():
    with pytest.raises(CoordinationError, match=rf"target {PREFILL}: proposed replicas must be an integer >= 0, got -1"):
        apply_ratio_bands([band(0.5, 2)], {PREFILL: -1, DECODE: 2}, {PREFILL: 10, DECODE: 10})


# --- Properties -------------------------------------------------------------------------------

RATIOS = st.sampled_from([0.25, 0.3, 0.5, 1, 1.5, 2, 3])


@settings(max_examples=400, deadline=None)
@given(
    low=RATIOS,
    width=st.sampled_from([0, 0.25, 0.5, 1, 2]),
    prefill=st.integers(0, 20),
    decode=st.integers(0, 20),
    prefill_max=st.integers(0, 30),
    decode_max=st.integers(0, 30),
)
def test_band_properties(low, width, prefill, decode, prefill_max, decode_max):
    ratio_band = band(low, low + width)
    results = apply_ratio_bands([ratio_band], {PREFILL: prefill, DECODE: decode}, {PREFILL: prefill_max, DECODE: decode_max})
    new_prefill, new_decode = results[PREFILL].replicas, results[DECODE].replicas

    # Never lowered, never raised above the larger of the proposal and the maximum.
    assert new_prefill >= prefill
    assert new_decode >= decode
    assert new_prefill <= max(prefill, prefill_max)
    assert new_decode <= max(decode, decode_max)

    # In band already: untouched.
    if ratio_band.contains(prefill, decode):
        assert (new_prefill, new_decode) == (prefill, decode)

    # When some pair within the caps is in band, the result is in band and no larger than needed.
    reachable = [
        (p, d)
        for p in range(prefill, max(prefill, prefill_max) + 1)
        for d in range(decode, max(decode, decode_max) + 1)
        if ratio_band.contains(p, d)
    ]
    if reachable:
        assert ratio_band.contains(new_prefill, new_decode)
        assert new_decode == min(d for _, d in reachable)
    if not ratio_band.contains(new_prefill, new_decode):
        assert results[PREFILL].reasons and "still outside the band" in results[PREFILL].reasons[0] or (new_prefill, new_decode) == (prefill, decode)


@settings(max_examples=200, deadline=None)
@given(low=RATIOS, prefill=st.integers(1, 20), decode=st.integers(1, 20))
def test_band_result_is_fixed_point(low, prefill, decode):
    ratio_band = band(low, low * 2)
    maxima = {PREFILL: 100, DECODE: 100}
    first = apply_ratio_bands([ratio_band], {PREFILL: prefill, DECODE: decode}, maxima)
    again = apply_ratio_bands([ratio_band], {PREFILL: first[PREFILL].replicas, DECODE: first[DECODE].replicas}, maxima)
    assert again[PREFILL].replicas == first[PREFILL].replicas
    assert again[DECODE].replicas == first[DECODE].replicas
    assert Fraction(first[PREFILL].replicas, first[DECODE].replicas) >= Fraction(repr(float(low)))


def test_result_as_adjustment():
    results = apply_ratio_bands([band(0.5, 2)], {PREFILL: 1, DECODE: 6}, {PREFILL: 10, DECODE: 10})
    assert results[DECODE].as_adjustment() is None
    adjustment = results[PREFILL].as_adjustment()
    assert (adjustment.step, adjustment.before, adjustment.after) == ("ratio", 1, 3)
    assert adjustment.reason == results[PREFILL].reasons[0]


# --- Bands per PodCliqueSet replica -----------------------------------------------------------


def discovered(rule: str, name: str, pcs: str, index: int, namespace: str = "llm") -> DiscoveredTarget:
    ref = TargetRef(namespace, Kind.PODCLIQUESCALINGGROUP, name)
    return DiscoveredTarget(ref=ref, rule=rule, pcs=pcs, index=index)


def test_pair_bands_per_replica():
    targets = [
        discovered("decode", "serve-1-decode", "serve", 1),
        discovered("prefill", "serve-0-prefill", "serve", 0),
        discovered("decode", "serve-0-decode", "serve", 0),
        discovered("prefill", "serve-1-prefill", "serve", 1),
        discovered("prefill", "serve-2-prefill", "serve", 2),
        discovered("prefill", "other-0-prefill", "other", 0),
        discovered("decode", "other-0-decode", "other", 0, namespace="elsewhere"),
        discovered("frontend", "serve-0-frontend", "serve", 0),
    ]
    bands = pair_bands(name="pd", numerator_rule="prefill", denominator_rule="decode", min_ratio=0.5, max_ratio=2, targets=targets)
    assert [(item.numerator, item.denominator) for item in bands] == [
        ("llm/podcliquescalinggroup/serve-0-prefill", "llm/podcliquescalinggroup/serve-0-decode"),
        ("llm/podcliquescalinggroup/serve-1-prefill", "llm/podcliquescalinggroup/serve-1-decode"),
    ]
    assert all((item.name, item.min_ratio, item.max_ratio) == ("pd", 0.5, 2) for item in bands)


def test_pair_bands_two_per_side_rejected():
    targets = [
        discovered("prefill", "serve-0-prefill", "serve", 0),
        discovered("prefill", "serve-0-prefill-b", "serve", 0),
        discovered("decode", "serve-0-decode", "serve", 0),
    ]
    with pytest.raises(CoordinationError, match=r"rule prefill selects both llm/podcliquescalinggroup/serve-0-prefill and .*-b in PodCliqueSet serve replica 0"):
        pair_bands(name="pd", numerator_rule="prefill", denominator_rule="decode", min_ratio=0.5, max_ratio=2, targets=targets)
