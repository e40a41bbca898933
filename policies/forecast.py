"""Forecasters that let a policy size a target for the load expected after a cold start.

Every forecaster has the same small interface. `observe(t, value)` feeds one observation at
time `t` (seconds). `predict(horizon_seconds)` returns the value expected `horizon_seconds`
after the newest observation. `to_dict()` and `make_forecaster(config, state)` round-trip the
state through plain JSON types, so a policy can keep it between ticks. Memory is bounded by
the configuration (a season, an ARIMA window, or a constant number of floats).

The models other than `constant` work on a regular grid of `step_seconds`. Observations
inside one step are averaged, and a step without observations is a gap the model steps over.
The step still open enters every prediction with its mean so far, so the newest observation
is never ignored.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Annotated, Any, Literal, Mapping, Union

import numpy as np
from pydantic import Field, TypeAdapter, model_validator
from scipy.optimize import least_squares
from scipy.signal import lfilter

from policies.base import PolicyParams

# Largest season, in steps, that a Holt-Winters state may hold (a week of one-minute steps).
MAX_SEASON_STEPS = 10080

# A gap longer than this many steps makes a model restart from the next observation
# instead of stepping over the missing values one by one.
MAX_GAP_STEPS = 10080


class ForecastError(ValueError):
    """A forecast is not possible (no observation yet) or a saved state does not fit the configuration."""


# --- Configuration ----------------------------------------------------------------------------


class ConstantConfig(PolicyParams):
    """Predict the newest observation (the Dynamo planner's `constant` predictor)."""

    kind: Literal["constant"] = "constant"


class HoltWintersConfig(PolicyParams):
    """Additive Holt-Winters: level, damped additive trend and an optional additive season.

    `alpha`, `beta` and `gamma` smooth the level, trend and season. `damping` (phi) shrinks the
    trend over the horizon, and 1 keeps a straight line. `season_seconds` enables the season and
    must be a whole number of steps.
    """

    kind: Literal["holt-winters"] = "holt-winters"
    step_seconds: float = Field(default=60.0, gt=0, le=86400)
    alpha: float = Field(default=0.5, gt=0, le=1)
    beta: float = Field(default=0.1, ge=0, le=1)
    gamma: float = Field(default=0.1, ge=0, le=1)
    damping: float = Field(default=0.98, gt=0, le=1)
    season_seconds: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _check_season(self) -> HoltWintersConfig:
        if self.season_seconds is None:
            return self
        steps = self.season_seconds / self.step_seconds
        if abs(steps - round(steps)) > 1e-9 or round(steps) < 2:
            raise ValueError(
                f"season_seconds {self.season_seconds} must be a whole number (>= 2) of step_seconds "
                f"{self.step_seconds}"
            )
        if round(steps) > MAX_SEASON_STEPS:
            raise ValueError(
                f"season_seconds {self.season_seconds} is {round(steps)} steps, more than the maximum "
                f"{MAX_SEASON_STEPS}; use a larger step_seconds"
            )
        return self

    @property
    def season_steps(self) -> int:
        return 0 if self.season_seconds is None else round(self.season_seconds / self.step_seconds)


class ArimaConfig(PolicyParams):
    """ARIMA(p, d, q) refitted by conditional least squares over the newest `window` steps."""

    kind: Literal["arima"] = "arima"
    step_seconds: float = Field(default=60.0, gt=0, le=86400)
    p: int = Field(default=2, ge=0, le=5)
    d: int = Field(default=1, ge=0, le=2)
    q: int = Field(default=1, ge=0, le=3)
    include_constant: bool = False
    window: int = Field(default=120, ge=20, le=2000)
    refit_every: int = Field(default=10, ge=1, le=1000)

    @property
    def min_fit_points(self) -> int:
        """Differenced points needed before a fit: a few per parameter."""
        return max(8, 3 * (self.p + self.q + int(self.include_constant)) + 2)


class KalmanConfig(PolicyParams):
    """Local linear trend Kalman filter: a random-walk level plus a random-walk slope.

    The noises are variances per step relative to the observation noise, so the filter does
    not depend on the unit of the series: a larger `level_noise` follows changes faster, a
    larger `slope_noise` lets the trend turn faster.
    """

    kind: Literal["kalman"] = "kalman"
    step_seconds: float = Field(default=60.0, gt=0, le=86400)
    level_noise: float = Field(default=0.1, gt=0, le=1e6)
    slope_noise: float = Field(default=0.01, ge=0, le=1e6)


ForecasterConfig = Annotated[
    Union[ConstantConfig, HoltWintersConfig, ArimaConfig, KalmanConfig],
    Field(discriminator="kind"),
]

_CONFIG_ADAPTER: TypeAdapter[ForecasterConfig] = TypeAdapter(ForecasterConfig)


def parse_forecaster_config(data: Mapping[str, Any]) -> ConstantConfig | HoltWintersConfig | ArimaConfig | KalmanConfig:
    """Validate a `forecaster:` mapping such as `{kind: holt-winters, alpha: 0.3}`."""
    return _CONFIG_ADAPTER.validate_python(data)


# --- Interface --------------------------------------------------------------------------------


class Forecaster(ABC):
    """One univariate series; see the module docstring for the contract."""

    config: PolicyParams

    @property
    @abstractmethod
    def has_data(self) -> bool:
        """Whether at least one observation was accepted, so `predict` can return a value."""

    @abstractmethod
    def observe(self, t: float, value: float) -> bool:
        """Feed one finite observation. Return False when `t` lies before the newest step, so it was dropped."""

    @abstractmethod
    def predict(self, horizon_seconds: float) -> float:
        """Return the value expected `horizon_seconds` after the newest observation.

        Raises ForecastError before the first observation.
        """

    @abstractmethod
    def _state(self) -> dict[str, Any]: ...

    @abstractmethod
    def _load(self, state: Mapping[str, Any]) -> None: ...

    def to_dict(self) -> dict[str, Any]:
        """Return the state as plain JSON types, tagged with the configuration it belongs to."""
        return {"config": self._config_json(), "state": _copy_plain(self._state())}

    def _config_json(self) -> dict[str, Any]:
        # Policies save their forecaster every tick, so the dumped configuration is computed once.
        cached = getattr(self, "_dumped_config", None)
        if cached is None:
            cached = self.config.model_dump(mode="json")
            self._dumped_config = cached
        return dict(cached)


def _copy_plain(value: Any) -> Any:
    """Copy nested dicts and lists of JSON scalars; faster than copy.deepcopy, which keeps a memo."""
    if isinstance(value, dict):
        return {key: _copy_plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy_plain(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_copy_plain(item) for item in value)
    return value


def make_forecaster(config: PolicyParams, state: Mapping[str, Any] | None = None) -> Forecaster:
    """Build the forecaster of a configuration, resumed from `to_dict()` output when given.

    Raises ForecastError when `state` was saved under a different configuration or is malformed.
    """
    if isinstance(config, ConstantConfig):
        forecaster: Forecaster = ConstantForecaster(config)
    elif isinstance(config, HoltWintersConfig):
        forecaster = HoltWintersForecaster(config)
    elif isinstance(config, ArimaConfig):
        forecaster = ArimaForecaster(config)
    elif isinstance(config, KalmanConfig):
        forecaster = KalmanForecaster(config)
    else:
        raise TypeError(f"unsupported forecaster configuration {type(config).__name__}")

    if state:
        if state.get("config") != config.model_dump(mode="json"):
            raise ForecastError("saved forecaster state belongs to a different configuration")
        try:
            forecaster._load(state["state"])
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise ForecastError(f"saved forecaster state is malformed: {error}") from error
    return forecaster


def _check_value(t: float, value: float) -> None:
    if not (math.isfinite(t) and math.isfinite(value)):
        raise ValueError(f"observation must be finite, got t={t!r} value={value!r}")


def _check_horizon(horizon_seconds: float) -> None:
    if not math.isfinite(horizon_seconds) or horizon_seconds < 0:
        raise ValueError(f"horizon_seconds must be a finite number >= 0, got {horizon_seconds!r}")


# --- Constant ---------------------------------------------------------------------------------


class ConstantForecaster(Forecaster):
    def __init__(self, config: ConstantConfig) -> None:
        self.config = config
        self.last_time: float | None = None
        self.last_value: float | None = None

    @property
    def has_data(self) -> bool:
        return self.last_value is not None

    def observe(self, t: float, value: float) -> bool:
        _check_value(t, value)
        if self.last_time is not None and t < self.last_time:
            return False
        self.last_time = float(t)
        self.last_value = float(value)
        return True

    def predict(self, horizon_seconds: float) -> float:
        _check_horizon(horizon_seconds)
        if self.last_value is None:
            raise ForecastError("no observation yet")
        return self.last_value

    def _state(self) -> dict[str, Any]:
        return {"last_time": self.last_time, "last_value": self.last_value}

    def _load(self, state: Mapping[str, Any]) -> None:
        self.last_time = None if state["last_time"] is None else float(state["last_time"])
        self.last_value = None if state["last_value"] is None else float(state["last_value"])


# --- Step-grid models -------------------------------------------------------------------------


class SteppedForecaster(Forecaster):
    """Averages observations into steps and feeds closed steps to a model.

    A subclass keeps its model in `self.model` (a JSON-typed dict) and implements `_update`
    (one closed step), `_skip` (one step without data), `_reset` and `_forecast` (k >= 0
    whole steps after the newest step fed; k = 0 is the smoothed value of that step).
    """

    def __init__(self, config: HoltWintersConfig | ArimaConfig | KalmanConfig) -> None:
        self.config = config
        self.step = float(config.step_seconds)
        self.open_step: int | None = None
        self.open_sum = 0.0
        self.open_count = 0
        self.last_time: float | None = None
        self.model: dict[str, Any] = {}
        self._reset()

    @property
    def has_data(self) -> bool:
        return self.open_step is not None

    @property
    def max_gap_steps(self) -> int:
        """Maximum gap, in steps, that the model steps over. A longer gap restarts the model."""
        return MAX_GAP_STEPS

    def observe(self, t: float, value: float) -> bool:
        _check_value(t, value)
        index = math.floor(t / self.step)
        if self.open_step is not None and index < self.open_step:
            return False

        if self.open_step is not None and index > self.open_step:
            self._update(self.open_sum / self.open_count)
            gap = index - self.open_step - 1
            if gap > self.max_gap_steps:
                self._reset()
            else:
                for _ in range(gap):
                    self._skip()
            self.open_sum = 0.0
            self.open_count = 0

        self.open_step = index
        self.open_sum += float(value)
        self.open_count += 1
        self.last_time = max(float(t), self.last_time or float(t))
        return True

    def predict(self, horizon_seconds: float) -> float:
        _check_horizon(horizon_seconds)
        if self.open_step is None or self.last_time is None:
            raise ForecastError("no observation yet")

        # Forecast from a copy that has also seen the open step, measured from its centre.
        saved = self.model
        self.model = _copy_plain(saved)
        try:
            self._update(self.open_sum / self.open_count, refit=False)
            centre = (self.open_step + 0.5) * self.step
            steps = max(0.0, (self.last_time + horizon_seconds - centre) / self.step)
            low = math.floor(steps)
            fraction = steps - low
            value = self._forecast(low)
            if fraction > 0:
                value += fraction * (self._forecast(low + 1) - value)
            return float(value)
        finally:
            self.model = saved

    def _state(self) -> dict[str, Any]:
        return {
            "open_step": self.open_step,
            "open_sum": self.open_sum,
            "open_count": self.open_count,
            "last_time": self.last_time,
            "model": self.model,
        }

    def _load(self, state: Mapping[str, Any]) -> None:
        self.open_step = None if state["open_step"] is None else int(state["open_step"])
        self.open_sum = float(state["open_sum"])
        self.open_count = int(state["open_count"])
        self.last_time = None if state["last_time"] is None else float(state["last_time"])
        if self.open_step is not None and self.open_count < 1:
            raise ValueError(f"open_count must be >= 1 while a step is open, got {self.open_count}")
        self.model = _copy_plain(dict(state["model"]))
        self._check_model()

    @abstractmethod
    def _reset(self) -> None: ...

    @abstractmethod
    def _update(self, value: float, *, refit: bool = True) -> None: ...

    @abstractmethod
    def _skip(self) -> None: ...

    @abstractmethod
    def _forecast(self, steps: int) -> float: ...

    def _check_model(self) -> None:
        """Raise ValueError when a loaded model does not fit the configuration."""


class HoltWintersForecaster(SteppedForecaster):
    """Damped additive Holt-Winters.

    With a season of m steps, the first m steps run as plain damped Holt and are also kept.
    After them, their mean becomes the level and their deviations from it the initial season.
    """

    config: HoltWintersConfig

    def _reset(self) -> None:
        self.model = {"n": 0, "level": 0.0, "trend": 0.0, "season": [], "phase": 0}

    def _check_model(self) -> None:
        season = self.model["season"]
        m = self.config.season_steps
        if len(season) > m:
            raise ValueError(f"season has {len(season)} values, but the configuration allows {m}")
        if not 0 <= self.model["phase"] < max(m, 1):
            raise ValueError(f"season phase {self.model['phase']} is outside 0..{max(m, 1) - 1}")

    def _update(self, value: float, *, refit: bool = True) -> None:
        config = self.config
        model = self.model
        m = config.season_steps
        phi = config.damping
        collecting_season = bool(m) and len(model["season"]) < m

        if model["n"] == 0:
            model.update(level=value, trend=0.0)
        elif collecting_season:
            self._update_holt(value)
        else:
            seasonal = model["season"][model["phase"]] if m else 0.0
            previous_level = model["level"]
            previous_trend = model["trend"]
            model["level"] = config.alpha * (value - seasonal) + (1 - config.alpha) * (previous_level + phi * previous_trend)
            model["trend"] = config.beta * (model["level"] - previous_level) + (1 - config.beta) * phi * previous_trend
            if m:
                deviation = value - previous_level - phi * previous_trend
                model["season"][model["phase"]] = config.gamma * deviation + (1 - config.gamma) * seasonal

        if collecting_season:
            model["season"].append(value)
            if len(model["season"]) == m:
                self._initialise_season()
        if m:
            model["phase"] = (model["phase"] + 1) % m
        model["n"] += 1

    def _update_holt(self, value: float) -> None:
        config = self.config
        model = self.model
        previous_level = model["level"]
        model["level"] = config.alpha * value + (1 - config.alpha) * (previous_level + config.damping * model["trend"])
        model["trend"] = config.beta * (model["level"] - previous_level) + (1 - config.beta) * config.damping * model["trend"]

    def _initialise_season(self) -> None:
        # One season cannot separate a trend from the seasonal shape (a regression line
        # through one sine period has a slope), so the trend restarts at zero.
        model = self.model
        values = np.asarray(model["season"], dtype=float)
        mean = float(values.mean())
        model["season"] = [float(v - mean) for v in values]
        model["level"] = mean
        model["trend"] = 0.0

    def _skip(self) -> None:
        model = self.model
        if model["n"] == 0:
            return
        phi = self.config.damping
        model["level"] += phi * model["trend"]
        model["trend"] *= phi
        m = self.config.season_steps
        if m:
            if len(model["season"]) < m:
                # Still collecting the first season: a gap there makes the season restart.
                model["season"] = []
                model["phase"] = 0
                model["n"] = 1
                return
            model["phase"] = (model["phase"] + 1) % m
        model["n"] += 1

    def _forecast(self, steps: int) -> float:
        model = self.model
        phi = self.config.damping
        if phi == 1.0:
            trend_sum = steps * model["trend"]
        else:
            trend_sum = model["trend"] * phi * (1 - phi**steps) / (1 - phi)
        value = model["level"] + trend_sum

        m = self.config.season_steps
        if m and len(model["season"]) == m:
            value += model["season"][(model["phase"] + steps - 1) % m]
        return value


class ArimaForecaster(SteppedForecaster):
    """ARIMA(p, d, q) fitted by conditional sum of squares with scipy.

    Until enough steps are collected for a fit, and if a fit fails, it predicts the newest
    step (a random walk), which is the right fallback for a non-stationary rate.
    """

    config: ArimaConfig

    def _reset(self) -> None:
        self.model = {"history": [], "params": None, "since_fit": 0}

    def _check_model(self) -> None:
        if len(self.model["history"]) > self.config.window:
            raise ValueError(f"history has {len(self.model['history'])} steps, more than the window of {self.config.window}")
        params = self.model["params"]
        expected = self.config.p + self.config.q + int(self.config.include_constant)
        if params is not None and len(params) != expected:
            raise ValueError(f"{len(params)} fitted parameters, the order needs {expected}")

    def _update(self, value: float, *, refit: bool = True) -> None:
        model = self.model
        model["history"].append(float(value))
        del model["history"][: -self.config.window]
        model["since_fit"] += 1
        if refit and (model["params"] is None or model["since_fit"] >= self.config.refit_every):
            model["params"] = self._fit(np.asarray(model["history"]))
            model["since_fit"] = 0

    @property
    def max_gap_steps(self) -> int:
        # Beyond one window the history would hold only imputed values.
        return self.config.window

    def _skip(self) -> None:
        # Impute the forecast without refitting, so a long gap costs no fits.
        if self.model["history"]:
            self._update(self._forecast(1), refit=False)

    def _split(self, params: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        config = self.config
        offset = int(config.include_constant)
        constant = float(params[0]) if offset else 0.0
        ar = params[offset : offset + config.p]
        ma = params[offset + config.p :]
        return constant, ar, ma

    def _residuals(self, params: np.ndarray, w: np.ndarray) -> np.ndarray:
        constant, ar, ma = self._split(params)
        p = ar.size
        # e_t = w_t - c - sum(phi_i w_{t-i}) - sum(theta_j e_{t-j}) for t >= p, with the errors
        # before p taken as zero: an all-pole filter over the AR residuals.
        ar_residuals = w[p:] - constant
        for i in range(p):
            ar_residuals = ar_residuals - ar[i] * w[p - 1 - i : w.size - 1 - i]
        return lfilter([1.0], np.concatenate(([1.0], ma)), ar_residuals)

    def _fit(self, history: np.ndarray) -> list[float] | None:
        config = self.config
        w = np.diff(history, n=config.d) if config.d else history
        if w.size < config.min_fit_points:
            return None
        if config.p == 0 and config.q == 0 and not config.include_constant:
            return []

        start = np.zeros(config.p + config.q + int(config.include_constant))
        lower = np.full(start.size, -np.inf)
        upper = np.full(start.size, np.inf)
        offset = int(config.include_constant)
        # MA roots outside the unit circle (for small q) keep the conditional residuals stable.
        lower[offset + config.p :] = -0.98
        upper[offset + config.p :] = 0.98
        lower[offset : offset + config.p] = -2.0
        upper[offset : offset + config.p] = 2.0
        start[offset : offset + config.p] = self._ar_start(w)

        try:
            result = least_squares(self._residuals, start, args=(w,), bounds=(lower, upper), method="trf")
        except (ValueError, np.linalg.LinAlgError):
            return None
        if not result.success or not np.all(np.isfinite(result.x)):
            return None
        return [float(x) for x in result.x]

    def _ar_start(self, w: np.ndarray) -> np.ndarray:
        """Return AR coefficients by ordinary least squares, clipped into the fit bounds."""
        p = self.config.p
        if p == 0:
            return np.zeros(0)
        rows = np.column_stack([w[p - 1 - i : w.size - 1 - i] for i in range(p)])
        coefficients, *_ = np.linalg.lstsq(rows, w[p:], rcond=None)
        return np.clip(coefficients, -1.9, 1.9)

    def _forecast(self, steps: int) -> float:
        history = self.model["history"]
        if not history:
            raise ForecastError("no observation yet")
        params = self.model["params"]
        if params is None or steps == 0:
            return float(history[-1])

        config = self.config
        levels = [np.asarray(history, dtype=float)]
        for _ in range(config.d):
            levels.append(np.diff(levels[-1]))
        w = levels[-1]

        params_array = np.asarray(params, dtype=float)
        constant, ar, ma = self._split(params_array)
        errors = list(np.zeros(ar.size)) + list(self._residuals(params_array, w)) if w.size > ar.size else []
        extended = list(w)
        for step in range(steps):
            prediction = constant
            for i in range(ar.size):
                if len(extended) - 1 - i >= 0:
                    prediction += ar[i] * extended[len(extended) - 1 - i]
            for j in range(ma.size):
                index = len(w) - 1 - j + step
                if step <= j and 0 <= index < len(errors):
                    prediction += ma[j] * errors[index]
            extended.append(prediction)
        future = np.asarray(extended[w.size :])

        # Integrate the differenced forecasts back, one differencing level at a time.
        for level in reversed(levels[:-1]):
            future = level[-1] + np.cumsum(future)
        return float(future[-1])


class KalmanForecaster(SteppedForecaster):
    """Local linear trend model filtered with a Kalman filter, observation noise variance 1."""

    config: KalmanConfig

    # Prior variance of the slope before the second step, in units of the observation noise:
    # large, so the first steps decide the slope.
    INITIAL_SLOPE_VARIANCE = 1e6

    def _reset(self) -> None:
        self.model = {"n": 0, "x": [0.0, 0.0], "P": [[1.0, 0.0], [0.0, self.INITIAL_SLOPE_VARIANCE]]}

    def _check_model(self) -> None:
        if len(self.model["x"]) != 2 or np.asarray(self.model["P"]).shape != (2, 2):
            raise ValueError("Kalman state must contain a 2-vector x and a 2x2 matrix P")

    def _time_update(self) -> tuple[np.ndarray, np.ndarray]:
        transition = np.array([[1.0, 1.0], [0.0, 1.0]])
        noise = np.diag([self.config.level_noise, self.config.slope_noise])
        x = transition @ np.asarray(self.model["x"], dtype=float)
        covariance = transition @ np.asarray(self.model["P"], dtype=float) @ transition.T + noise
        return x, covariance

    def _store(self, x: np.ndarray, covariance: np.ndarray) -> None:
        self.model["x"] = [float(v) for v in x]
        self.model["P"] = [[float(v) for v in row] for row in covariance]

    def _update(self, value: float, *, refit: bool = True) -> None:
        if self.model["n"] == 0:
            self.model["x"] = [float(value), 0.0]
            self.model["n"] = 1
            return

        x, covariance = self._time_update()
        innovation = value - x[0]
        innovation_variance = covariance[0, 0] + 1.0
        gain = covariance[:, 0] / innovation_variance
        x = x + gain * innovation
        covariance = covariance - np.outer(gain, covariance[0, :])
        self._store(x, covariance)
        self.model["n"] += 1

    def _skip(self) -> None:
        if self.model["n"] == 0:
            return
        self._store(*self._time_update())

    def _forecast(self, steps: int) -> float:
        level, slope = self.model["x"]
        return level + steps * slope
