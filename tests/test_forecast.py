"""Forecasters on synthetic series with known answers and on the Azure LLM inference traces."""

from __future__ import annotations

import csv
import json
import math
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from policies.forecast import (
    ArimaConfig,
    ConstantConfig,
    ForecastError,
    HoltWintersConfig,
    KalmanConfig,
    MAX_SEASON_STEPS,
    make_forecaster,
    parse_forecaster_config,
)

STEP = 60.0

TREND_MODELS = {
    "holt-winters": HoltWintersConfig(damping=1.0),
    "arima": ArimaConfig(),
    "kalman": KalmanConfig(),
}
ALL_MODELS = {"constant": ConstantConfig(), **TREND_MODELS, "holt-winters-seasonal": HoltWintersConfig(season_seconds=24 * STEP)}
# A short season makes gaps inside and after the first season likely in generated series.
PROPERTY_MODELS = {**ALL_MODELS, "holt-winters-short-season": HoltWintersConfig(season_seconds=4 * STEP)}


def feed(config, values, *, round_trip: bool = True):
    """Observe one value per step at the step centre, resuming from the JSON state every time."""
    forecaster = make_forecaster(config)
    for index, value in enumerate(values):
        forecaster.observe((index + 0.5) * STEP, value)
        if round_trip:
            forecaster = make_forecaster(config, json.loads(json.dumps(forecaster.to_dict())))
    return forecaster


@pytest.mark.parametrize("name", sorted(ALL_MODELS))
def test_constant_series_predicts_constant(name):
    forecaster = feed(ALL_MODELS[name], [7.0] * 60)

    for horizon in (0, 60, 600, 3600):
        assert forecaster.predict(horizon) == pytest.approx(7.0, abs=1e-6)


@pytest.mark.parametrize("name", sorted(TREND_MODELS))
def test_linear_trend_extrapolated(name):
    forecaster = feed(TREND_MODELS[name], [10 + 2 * i for i in range(100)])

    # The newest value is 208 at step 99; one step on is 210, five steps on 218.
    assert forecaster.predict(60) == pytest.approx(210, abs=1.0)
    assert forecaster.predict(300) == pytest.approx(218, abs=3.0)


def test_constant_forecaster_repeats_last_value():
    forecaster = feed(ConstantConfig(), [10 + 2 * i for i in range(10)])

    assert forecaster.predict(0) == 28
    assert forecaster.predict(3600) == 28


def test_damped_trend_stays_below_line():
    forecaster = feed(HoltWintersConfig(damping=0.9, alpha=0.8, beta=0.5), [10 + 2 * i for i in range(100)])

    far = forecaster.predict(60 * 100)
    # phi / (1 - phi) = 9 steps of trend at most, far below the 100 steps of the straight line.
    assert 208 < far < 208 + 2 * 12


@pytest.mark.parametrize("name", ["holt-winters-seasonal", "arima"])
def test_sinusoid_season_predicted(name):
    period = 24
    values = [100 + 30 * math.sin(2 * math.pi * i / period) for i in range(period * 10)]
    forecaster = feed(ALL_MODELS[name], values)

    for steps_ahead in (1, 6, 12, 18):
        expected = 100 + 30 * math.sin(2 * math.pi * (len(values) - 1 + steps_ahead) / period)
        assert forecaster.predict(steps_ahead * STEP) == pytest.approx(expected, abs=3.0)


def test_non_seasonal_model_misses_season():
    period = 24
    values = [100 + 30 * math.sin(2 * math.pi * i / period) for i in range(period * 10)]
    forecaster = feed(HoltWintersConfig(), values)

    # Six steps after a zero crossing the sinusoid peaks at 130; without a season the forecast does not.
    assert forecaster.predict(6 * STEP) < 115


@pytest.mark.parametrize("name", sorted(TREND_MODELS))
def test_step_change_followed(name):
    forecaster = feed(TREND_MODELS[name], [10.0] * 50 + [50.0] * 40)

    assert forecaster.predict(60) == pytest.approx(50, abs=2.5)


@pytest.mark.parametrize("name", sorted(ALL_MODELS))
def test_observations_within_step_averaged(name):
    forecaster = make_forecaster(ALL_MODELS[name])
    forecaster.observe(0, 10.0)
    forecaster.observe(15, 20.0)
    forecaster.observe(30, 30.0)

    expected = 30.0 if name == "constant" else 20.0
    assert forecaster.predict(0) == pytest.approx(expected)


@pytest.mark.parametrize("name", sorted(TREND_MODELS))
def test_gap_steps_over_missing_values(name):
    forecaster = make_forecaster(TREND_MODELS[name])
    for index in range(40):
        forecaster.observe((index + 0.5) * STEP, 5.0)
    forecaster.observe(60.5 * STEP, 5.0)

    assert forecaster.predict(60) == pytest.approx(5.0, abs=0.5)


def test_old_observation_dropped():
    forecaster = make_forecaster(HoltWintersConfig())
    assert forecaster.observe(600, 1.0)

    assert not forecaster.observe(500, 100.0)
    assert forecaster.predict(0) == pytest.approx(1.0)


@pytest.mark.parametrize("name", sorted(ALL_MODELS))
def test_predict_before_data_raises(name):
    forecaster = make_forecaster(ALL_MODELS[name])

    assert not forecaster.has_data
    with pytest.raises(ForecastError, match="no observation"):
        forecaster.predict(60)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_observation_rejected(value):
    forecaster = make_forecaster(KalmanConfig())

    with pytest.raises(ValueError, match="finite"):
        forecaster.observe(0, value)


def test_negative_horizon_rejected():
    forecaster = feed(ConstantConfig(), [1.0])

    with pytest.raises(ValueError, match="horizon_seconds"):
        forecaster.predict(-1)


def test_state_of_other_config_rejected():
    state = feed(HoltWintersConfig(alpha=0.5), [1.0, 2.0]).to_dict()

    with pytest.raises(ForecastError, match="different configuration"):
        make_forecaster(HoltWintersConfig(alpha=0.3), state)


def test_malformed_state_rejected():
    state = feed(KalmanConfig(), [1.0, 2.0]).to_dict()
    state["state"]["model"]["x"] = [1.0]

    with pytest.raises(ForecastError, match="malformed"):
        make_forecaster(KalmanConfig(), state)


def test_arima_memory_bounded_by_window():
    config = ArimaConfig(window=30)
    forecaster = feed(config, [float(i % 7) for i in range(200)], round_trip=False)

    assert len(forecaster.to_dict()["state"]["model"]["history"]) == 30


def test_holt_winters_season_bounded():
    config = HoltWintersConfig(season_seconds=12 * STEP)
    forecaster = feed(config, [float(i % 12) for i in range(100)], round_trip=False)

    assert len(forecaster.to_dict()["state"]["model"]["season"]) == 12


@pytest.mark.parametrize(
    "data, field",
    [
        ({"kind": "holt-winters", "season_seconds": 90}, "season_seconds"),
        ({"kind": "holt-winters", "season_seconds": (MAX_SEASON_STEPS + 1) * 60}, "season_seconds"),
        ({"kind": "holt-winters", "alpha": 0}, "alpha"),
        ({"kind": "arima", "p": 9}, "p"),
        ({"kind": "kalman", "level_noise": -1}, "level_noise"),
        ({"kind": "prophet"}, "prophet"),
        ({"kind": "constant", "alpha": 0.5}, "alpha"),
    ],
)
def test_invalid_config_names_field(data, field):
    with pytest.raises(ValidationError, match=field):
        parse_forecaster_config(data)


def test_config_parsed_by_kind():
    config = parse_forecaster_config({"kind": "arima", "p": 1, "d": 0, "q": 0})

    assert isinstance(config, ArimaConfig)
    assert (config.p, config.d, config.q) == (1, 0, 0)


@settings(max_examples=80, deadline=None)
@given(
    name=st.sampled_from(sorted(PROPERTY_MODELS)),
    observations=st.lists(
        st.tuples(st.floats(min_value=0, max_value=400), st.floats(min_value=0, max_value=1e6, allow_nan=False)),
        min_size=1,
        max_size=60,
    ),
    horizon=st.floats(min_value=0, max_value=7200),
)
def test_prediction_always_finite(name, observations, horizon):
    config = PROPERTY_MODELS[name]
    forecaster = make_forecaster(config)
    time = 0.0
    for delay, value in observations:
        time += delay
        forecaster.observe(time, value)
        forecaster = make_forecaster(config, json.loads(json.dumps(forecaster.to_dict())))

    assert math.isfinite(forecaster.predict(horizon))


# --- Azure LLM inference traces (CC-BY-4.0, Patel et al., Splitwise, ISCA 2024) --------------


def per_minute_counts(path: Path) -> list[int]:
    """Return arrivals per full minute from the first arrival, dropping the partial last minute."""
    times = []
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            times.append(datetime.strptime(row["TIMESTAMP"][:26], "%Y-%m-%d %H:%M:%S.%f").timestamp())
    start = times[0]
    minutes = int((times[-1] - start) // 60)
    counts = [0] * minutes
    for time in times:
        index = int((time - start) // 60)
        if index < minutes:
            counts[index] += 1
    return counts


def mean_absolute_error(config, counts: list[int], steps_ahead: int) -> float:
    forecaster = make_forecaster(config)
    errors = []
    for index, count in enumerate(counts):
        forecaster.observe((index + 0.5) * STEP, count)
        if index >= 5 and index + steps_ahead < len(counts):
            errors.append(abs(forecaster.predict(steps_ahead * STEP) - counts[index + steps_ahead]))
    return sum(errors) / len(errors)


@pytest.fixture(scope="module")
def azure_traces(shared_dir) -> dict[str, list[int]]:
    traces = {}
    for name in ("code", "conv"):
        traces[name] = per_minute_counts(shared_dir / "traces" / f"AzureLLMInferenceTrace_{name}.csv")
    return traces


def test_azure_traces_minute_counts(azure_traces):
    assert len(azure_traces["code"]) == 57
    assert len(azure_traces["conv"]) == 58
    assert max(azure_traces["code"]) == 632
    assert max(azure_traces["conv"]) == 507


@pytest.mark.parametrize("steps_ahead", [2, 3])
def test_holt_winters_beats_naive_on_code_trace(azure_traces, steps_ahead):
    counts = azure_traces["code"]
    naive = mean_absolute_error(ConstantConfig(), counts, steps_ahead)

    assert mean_absolute_error(HoltWintersConfig(), counts, steps_ahead) < naive


@pytest.mark.parametrize("trace", ["code", "conv"])
@pytest.mark.parametrize("name", sorted(TREND_MODELS))
def test_forecast_error_within_twice_naive(azure_traces, trace, name):
    counts = azure_traces[trace]
    naive = mean_absolute_error(ConstantConfig(), counts, 2)

    assert mean_absolute_error(TREND_MODELS[name], counts, 2) < 2 * naive


def test_arima_long_gap_restarts():
    config = ArimaConfig(window=30)
    forecaster = feed(config, [float(i % 7) for i in range(60)], round_trip=False)

    forecaster.observe((60 + 31 + 0.5) * STEP, 3.0)

    assert forecaster.to_dict()["state"]["model"]["history"] == []
    assert forecaster.predict(60) == pytest.approx(3.0)


def test_gap_in_first_season_restarts_season():
    config = HoltWintersConfig(season_seconds=24 * STEP)
    forecaster = make_forecaster(config)
    for index in range(10):
        forecaster.observe((index + 0.5) * STEP, 100.0)
    period = 24
    # Three missing steps, then ten clean seasons of a sinusoid.
    for index in range(13, 13 + period * 10):
        forecaster.observe((index + 0.5) * STEP, 100 + 30 * math.sin(2 * math.pi * index / period))

    last = 13 + period * 10 - 1
    for steps_ahead in (1, 6, 12):
        expected = 100 + 30 * math.sin(2 * math.pi * (last + steps_ahead) / period)
        assert forecaster.predict(steps_ahead * STEP) == pytest.approx(expected, abs=3.0)
