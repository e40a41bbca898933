"""Read signals from Prometheus with one query per signal and label set per tick.

Requests are grouped by (signal, names of the series labels). Each group becomes one query that
selects the union of the group's label values with `=~` and aggregates `by` those labels, so the
number of queries stays flat as targets grow. Every target then picks its series by the exact
values of its labels. Only a group whose label values exceed MAX_SELECTOR_CHARS is split.
"""

from __future__ import annotations

import ast
import json
import logging
import math
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import requests
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from urllib3.util.retry import Retry

from metrics.catalog import SignalCatalog, SignalDefinition
from metrics.promql import InvalidLabelNameError, escape_label_value, union_matchers, validate_label_name
from metrics.sample import Sample, SignalRequest
from metrics.source import Samples, SampleSeries

if TYPE_CHECKING:
    from autoscaler.config import MetricsConfig

log = logging.getLogger(__name__)

# Prometheus rejects a range query with more than 11,000 points per series; stay below it.
MAX_POINTS_PER_RANGE_QUERY = 10_000

# The query travels in the URL, even with POST in prometheus-api-client 0.7, and Go's HTTP server
# rejects a request line and headers over 1 MB. Against Prometheus 2.42, 20,000 values of 36
# characters worked in one query and 40,000 failed. A group whose label values add up to more
# characters than this is split into several queries (URL escaping can triple the size).
MAX_SELECTOR_CHARS = 200_000
# Queries of one tick sent at once; a few are enough, since one tick has one query per signal group.
MAX_PARALLEL_QUERIES = 4

# Queries in log lines are cut to this many characters.
MAX_LOGGED_QUERY_CHARS = 1_000


class QueryError(Exception):
    """A query that failed: connection, timeout, HTTP error or an unusable result."""


@dataclass
class _Group:
    """The requests that one query covers."""

    signal: str
    labels: tuple[str, ...]
    requests: list[SignalRequest] = field(default_factory=list)
    definition: SignalDefinition | None = None
    query: str = ""
    error: str | None = None
    part: int = 0

    @property
    def key(self) -> tuple[str, tuple[str, ...], int]:
        return (self.signal, self.labels, self.part)


class PrometheusSource:
    """A MetricSource backed by the Prometheus HTTP API, through prometheus-api-client.

    `fetch` never raises for a failed query: every target of that query gets an unknown sample
    with the reason, and the error is logged once with the query. `queries_made` counts HTTP
    queries sent, failed ones included.
    """

    def __init__(
        self,
        *,
        url: str,
        catalog: SignalCatalog,
        bearer_token_file: str | Path | None = None,
        ca_file: str | Path | None = None,
        insecure_skip_verify: bool = False,
        timeout_seconds: float = 5.0,
    ) -> None:
        if timeout_seconds <= 0:
            raise ValueError(f"timeout_seconds must be positive, got {timeout_seconds}")
        self.url = url.rstrip("/")
        self.catalog = catalog
        self.timeout_seconds = timeout_seconds
        self.queries_made = 0
        self._token_file = Path(bearer_token_file) if bearer_token_file else None
        self._token_stat: tuple[int, int] | None = None
        self._token: str | None = None
        self._failing: dict[tuple[str, tuple[str, ...], int], tuple[str, int]] = {}
        self._logged_plan_errors: set[str] = set()
        # Queries of one tick run in parallel, so a hung server delays a tick by one timeout, not
        # one per signal. The lock guards the counter, the failure map and the token.
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

        session = requests.Session()
        if insecure_skip_verify:
            session.verify = False
            log.warning("TLS certificate verification is disabled for Prometheus at %s", self.url)
        elif ca_file:
            session.verify = str(ca_file)
        # No retries inside a tick: the next tick is the retry, and a retried timeout would hold the
        # tick for several times timeout_seconds. read=False lets a read timeout surface as one.
        retry = Retry(total=0, read=False, raise_on_status=False)
        self._client = PrometheusConnect(url=self.url, session=session, retry=retry)
        log.info("reading signals from Prometheus at %s (preset %s)", self.url, catalog.preset.name)

    @classmethod
    def from_config(cls, config: MetricsConfig) -> PrometheusSource:
        """Create a source from the `metrics` section of the configuration."""
        prometheus = config.prometheus
        if prometheus is None:
            raise ValueError("metrics.prometheus: missing; set metrics.prometheus.url to read signals from Prometheus")
        return cls(
            url=prometheus.url,
            catalog=SignalCatalog.from_config(config),
            bearer_token_file=prometheus.bearer_token_file,
            ca_file=prometheus.ca_file,
            insecure_skip_verify=prometheus.insecure_skip_verify,
            timeout_seconds=prometheus.timeout_seconds,
        )

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._client.close()

    def __enter__(self) -> PrometheusSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- instant queries ---------------------------------------------------------------------

    def fetch(self, requests: Sequence[SignalRequest], now: float | None = None) -> Samples:
        """Return a sample per request, evaluated at `now` (Unix seconds) or at the server's time."""
        result: Samples = {}
        groups = self._plan(requests)
        if len(groups) > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=MAX_PARALLEL_QUERIES, thread_name_prefix="prometheus-query")
            answers = list(self._pool.map(lambda group: self._fetch_group(group, now), groups))
        else:
            answers = [self._fetch_group(group, now) for group in groups]
        for group, samples in zip(groups, answers):
            for request, sample in zip(group.requests, samples):
                result.setdefault(request.target, {})[request.signal] = sample
        return result

    def _fetch_group(self, group: _Group, now: float | None) -> list[Sample]:
        if group.error is not None:
            return [Sample.unknown(group.error)] * len(group.requests)

        params = {"timeout": f"{self.timeout_seconds:g}s"}
        if now is not None:
            params["time"] = repr(float(now))
        try:
            self._authorize()
            series = self._send(group, lambda: self._client.custom_query(group.query, params, self.timeout_seconds))
            values = _series_values(series, group.labels, instant=True)
        except QueryError as error:
            return self._failed(group, str(error))

        self._succeeded(group)
        samples = []
        for request in group.requests:
            found = _lookup(values, group, request)
            samples.append(found if isinstance(found, Sample) else Sample.of(found))
        return samples

    # --- range queries -----------------------------------------------------------------------

    def fetch_range(
        self, requests: Sequence[SignalRequest], start: float, end: float, step: float
    ) -> SampleSeries:
        """Return, per request, one sample per step from `start` to `end` (Unix seconds, inclusive).

        Each group costs one range query, or one per MAX_POINTS_PER_RANGE_QUERY steps. The
        step times are `start + k * step`, as Prometheus evaluates them.
        """
        if step <= 0:
            raise ValueError(f"step must be positive, got {step}")
        if end < start:
            raise ValueError(f"end {end} is before start {start}")
        steps = [start + index * step for index in range(int(math.floor((end - start) / step + 1e-9)) + 1)]

        result: SampleSeries = {}
        for group in self._plan(requests):
            for request, points in zip(group.requests, self._fetch_range_group(group, steps, step)):
                result.setdefault(request.target, {})[request.signal] = points
        return result

    def _fetch_range_group(self, group: _Group, steps: list[float], step: float) -> list[list[tuple[float, Sample]]]:
        if group.error is not None:
            unknown = Sample.unknown(group.error)
            return [[(time, unknown) for time in steps] for _ in group.requests]

        values: dict[tuple[str, ...], dict[int, float]] = {}
        try:
            self._authorize()
            for first in range(0, len(steps), MAX_POINTS_PER_RANGE_QUERY):
                chunk = steps[first : first + MAX_POINTS_PER_RANGE_QUERY]
                series = self._send(group, lambda: self._range_query(group.query, chunk[0], chunk[-1], step))
                for key, points in _series_values(series, group.labels, instant=False).items():
                    if isinstance(points, _Duplicate) or isinstance(values.get(key), _Duplicate):
                        values[key] = points
                    else:
                        values.setdefault(key, {}).update(points)
        except QueryError as error:
            return [[(time, sample) for time in steps] for sample in self._failed(group, str(error))]

        self._succeeded(group)
        series_per_request = []
        for request in group.requests:
            found = _lookup(values, group, request)
            if isinstance(found, Sample):
                series_per_request.append([(time, found) for time in steps])
            else:
                series_per_request.append([(time, _sample_at(found, time, group)) for time in steps])
        return series_per_request

    def _range_query(self, query: str, start: float, end: float, step: float) -> Any:
        # The client rounds start and end to whole seconds; the params keep the exact times.
        params = {"start": repr(float(start)), "end": repr(float(end)), "timeout": f"{self.timeout_seconds:g}s"}
        return self._client.custom_query_range(
            query,
            start_time=datetime.fromtimestamp(start, tz=timezone.utc),
            end_time=datetime.fromtimestamp(end, tz=timezone.utc),
            step=repr(float(step)),
            params=params,
            timeout=self.timeout_seconds,
        )

    # --- shared steps ------------------------------------------------------------------------

    def _plan(self, requests: Sequence[SignalRequest]) -> list[_Group]:
        members: dict[tuple[str, tuple[str, ...]], list[SignalRequest]] = {}
        for request in requests:
            members.setdefault((request.signal, request.label_key()), []).append(request)

        groups = []
        for (signal, labels), group_requests in members.items():
            for part, chunk in enumerate(_split_by_selector_size(group_requests, labels)):
                groups.append(self._build_group(signal, labels, chunk, part))
        return groups

    def _build_group(self, signal: str, labels: tuple[str, ...], requests: list[SignalRequest], part: int) -> _Group:
        group = _Group(signal=signal, labels=labels, requests=requests, part=part)
        try:
            group.definition = self.catalog.resolve(signal)
            for name in labels:
                _validate_series_label(name)
            values_by_label = {name: [request.series_labels[name] for request in requests] for name in labels}
            group.query = group.definition.query(union_matchers(values_by_label), labels)
        except ValueError as error:
            group.error = f"cannot build the query for signal {signal!r}: {error}"
            if group.error not in self._logged_plan_errors:
                self._logged_plan_errors.add(group.error)
                log.error("%s (%d targets unknown)", group.error, len(requests))
        return group

    def _authorize(self) -> None:
        """Set the Authorization header from the token file, read again whenever the file changes."""
        if self._token_file is None:
            return
        with self._lock:
            self._authorize_locked()

    def _authorize_locked(self) -> None:
        try:
            status = os.stat(self._token_file)
            signature = (status.st_mtime_ns, status.st_size)
            if signature != self._token_stat:
                self._token = self._token_file.read_text(encoding="utf-8").strip()
                self._token_stat = signature
        except OSError as error:
            raise QueryError(f"cannot read bearer token file {self._token_file}: {error.strerror}") from None
        if not self._token:
            raise QueryError(f"bearer token file {self._token_file} is empty")
        self._client.headers = {"Authorization": f"Bearer {self._token}"}

    def _send(self, group: _Group, call: Any) -> Any:
        with self._lock:
            self.queries_made += 1
        try:
            return call()
        except requests.exceptions.Timeout:
            raise QueryError(f"query timed out after {self.timeout_seconds:g} s") from None
        except requests.exceptions.RequestException as error:
            raise QueryError(f"request to {self.url} failed: {_connection_error(error)}") from None
        except PrometheusApiClientException as error:
            raise QueryError(_http_error_message(str(error))) from None
        except (ValueError, KeyError, TypeError) as error:
            raise QueryError(f"invalid response from {self.url}: {error}") from None

    def _failed(self, group: _Group, reason: str) -> list[Sample]:
        with self._lock:
            previous, count = self._failing.get(group.key, ("", 0))
            self._failing[group.key] = (reason, count + 1)
        if reason != previous:
            log.warning(
                "prometheus query for signal %s failed (%d targets unknown): %s; query: %s",
                group.signal,
                len(group.requests),
                reason,
                _shorten_query(group.query),
            )
        return [Sample.unknown(f"prometheus query failed: {reason}")] * len(group.requests)

    def _succeeded(self, group: _Group) -> None:
        with self._lock:
            failure = self._failing.pop(group.key, None)
        if failure is not None:
            log.info("prometheus query for signal %s succeeded again after %d failures", group.signal, failure[1])


def _split_by_selector_size(requests: list[SignalRequest], labels: tuple[str, ...]) -> list[list[SignalRequest]]:
    """Split one group's requests so the distinct label values of each part fit MAX_SELECTOR_CHARS."""
    parts: list[list[SignalRequest]] = [[]]
    seen: set[tuple[str, str]] = set()
    size = 0
    for request in requests:
        pairs = {(name, request.series_labels[name]) for name in labels}
        added = sum(len(value) + 1 for _, value in pairs - seen)
        if parts[-1] and size + added > MAX_SELECTOR_CHARS:
            parts.append([])
            seen = set()
            size = 0
            added = sum(len(value) + 1 for _, value in pairs)
        parts[-1].append(request)
        seen |= pairs
        size += added
    return parts


def _shorten_query(query: str) -> str:
    if len(query) <= MAX_LOGGED_QUERY_CHARS:
        return query
    return f"{query[:MAX_LOGGED_QUERY_CHARS]}... ({len(query)} characters)"


def _validate_series_label(name: str) -> None:
    validate_label_name(name)
    if name == "le":
        raise InvalidLabelNameError("series label 'le' is the histogram bucket label and cannot identify a target")


def _series_values(series: Any, labels: tuple[str, ...], *, instant: bool) -> dict[tuple[str, ...], Any]:
    """Map each result series to its label values: a float (instant) or {time in ms: float} (range)."""
    if not isinstance(series, list) or not all(isinstance(item, dict) for item in series):
        by = ", ".join(labels)
        raise QueryError(f"query returned a scalar or string, expected a vector grouped by ({by})")

    values: dict[tuple[str, ...], Any] = {}
    duplicates: set[tuple[str, ...]] = set()
    for item in series:
        try:
            key = tuple(item["metric"].get(name, "") for name in labels)
            if instant:
                value = float(item["value"][1])
            else:
                value = {round(float(time) * 1000): float(sample) for time, sample in item["values"]}
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as error:
            raise QueryError(f"invalid series in the query result: {item!r:.200} ({error!r})") from None
        if key in values:
            duplicates.add(key)
        values[key] = value
    for key in duplicates:
        values[key] = _Duplicate(labels)
    return values


@dataclass(frozen=True)
class _Duplicate:
    """Marks label values that matched several result series, so no single value applies."""

    labels: tuple[str, ...]


def _label_values(request: SignalRequest, group: _Group) -> tuple[str, ...]:
    return tuple(request.series_labels[name] for name in group.labels)


def _describe(request: SignalRequest) -> str:
    pairs = [f'{name}="{escape_label_value(value)}"' for name, value in sorted(request.series_labels.items())]
    return "{" + ", ".join(pairs) + "}"


def _absent(group: _Group, request: SignalRequest) -> Sample:
    assert group.definition is not None
    reason = f"no series for {_describe(request)} in the {group.signal} query"
    return Sample.idle(reason) if group.definition.idle_when_absent else Sample.unknown(reason)


def _lookup(values: dict[tuple[str, ...], Any], group: _Group, request: SignalRequest) -> Any:
    """Return the request's raw result, or the Sample that stands for a missing or ambiguous one."""
    found = values.get(_label_values(request, group))
    if found is None:
        return _absent(group, request)
    if isinstance(found, _Duplicate):
        return Sample.unknown(
            f"the {group.signal} query returned several series for {_describe(request)}; "
            f"aggregate it by ({', '.join(group.labels)})"
        )
    return found


def _sample_at(points: dict[int, float], time: float, group: _Group) -> Sample:
    value = points.get(round(time * 1000))
    if value is None:
        assert group.definition is not None
        reason = f"no sample at {time:g} in the {group.signal} query"
        return Sample.idle(reason) if group.definition.idle_when_absent else Sample.unknown(reason)
    return Sample.of(value)


def _connection_error(error: requests.exceptions.RequestException) -> str:
    """Describe a connection failure by its cause, without the request URL and its long query."""
    cause = error.args[0] if error.args else error
    reason = getattr(cause, "reason", None)
    if reason is not None:
        cause = reason
    text = str(cause)
    # urllib3 prefixes the connection object, for example "<...HTTPConnection object at 0x...>: ".
    return _short(Exception(text.split(">: ", 1)[-1]))


def _short(error: Exception) -> str:
    text = str(error)
    return text if len(text) <= 300 else text[:300] + "..."


_HTTP_ERROR = re.compile(r"HTTP Status Code (\d+) \((.*)\)", re.DOTALL)


def _http_error_message(text: str) -> str:
    """Turn the client's `HTTP Status Code 400 (b'{...}')` into `HTTP 400: <Prometheus error>`."""
    match = _HTTP_ERROR.fullmatch(text)
    if match is None:
        return _short(Exception(text))
    status, body = match.groups()
    try:
        payload = json.loads(ast.literal_eval(body))
        detail = f"{payload.get('errorType', 'error')}: {payload['error']}"
    except (ValueError, SyntaxError, KeyError, TypeError, AttributeError):
        detail = body
    return _short(Exception(f"HTTP {status}: {detail}"))
