"""Replay recorded signals through the engine, open loop.

Input is a CSV with header `time,target,signal,value`. Each distinct time is one tick. The
`replicas` signal carries the live `/scale` value; where a tick has none, the previous
decision is taken as applied. Values: a number, `nan` for an idle 0/0 window, `error` for a
failed query, empty for no sample (missing series). `min_available` optionally gives the
target's gang floor and `gpus_per_replica` its GPUs, which GPU budgets need.
"""

from __future__ import annotations

import csv
import logging
import dataclasses
import datetime
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from autoscaler.config import Config, TargetConfig
from autoscaler.engine import Decision, EngineState, decide
from autoscaler.specs import LEVEL_KINDS, DiscoveredTarget, budget_limits, build_bands, build_specs
from autoscaler.targets import Kind, TargetRef
from metrics.sample import Sample

logger = logging.getLogger(__name__)

HEADER = ["time", "target", "signal", "value"]
REPLICAS = "replicas"
MIN_AVAILABLE = "min_available"
GPUS_PER_REPLICA = "gpus_per_replica"
PSEUDO_SIGNALS = (REPLICAS, MIN_AVAILABLE, GPUS_PER_REPLICA)


class ReplayError(ValueError):
    """A malformed replay file; the message names the file and line."""


@dataclass
class Tick:
    time: float
    label: str
    samples: dict[str, dict[str, Sample]] = field(default_factory=dict)
    replicas: dict[str, int] = field(default_factory=dict)
    min_available: dict[str, int] = field(default_factory=dict)
    gpus_per_replica: dict[str, float] = field(default_factory=dict)


@dataclass
class Recording:
    ticks: list[Tick]
    targets: list[TargetRef]
    first_line: dict[str, int]


def _parse_time(text: str, where: str) -> tuple[float, bool]:
    """Return (seconds, is_rfc3339)."""
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            raise ReplayError(f"{where}: invalid time {text!r}: expected finite seconds from start or RFC 3339")
        return seconds, False
    try:
        parsed = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ReplayError(f"{where}: invalid time {text!r}: expected seconds from start or RFC 3339") from None
    if parsed.tzinfo is None:
        raise ReplayError(f"{where}: time {text!r} has no time zone; RFC 3339 needs one (for example Z)")
    return parsed.timestamp(), True


def _parse_value(text: str, where: str) -> Sample:
    value = text.strip()
    if value == "":
        return Sample.unknown("no sample recorded")
    if value.lower() == "nan":
        return Sample.idle("0/0 window recorded")
    if value.lower() == "error":
        return Sample.unknown("query failed (recorded)")
    try:
        number = float(value)
    except ValueError:
        raise ReplayError(f"{where}: invalid value {text!r}: expected a number, nan, error or empty") from None
    if math.isinf(number):
        raise ReplayError(f"{where}: invalid value {text!r}: infinite")
    return Sample.of(number)


MAX_COUNT = 100_000


def _parse_count(sample: Sample, text: str, signal: str, where: str) -> int:
    if not sample.is_value or sample.value is None or sample.value < 0 or sample.value != int(sample.value) or sample.value > MAX_COUNT:
        raise ReplayError(f"{where}: invalid {signal} value {text!r}: expected a whole number from 0 to {MAX_COUNT}")
    return int(sample.value)


def read_recording(path: str | Path, known_signal: Callable[[str], bool] = lambda name: True) -> Recording:
    """Parse a replay CSV; raise ReplayError naming the line of the first malformed row.

    `known_signal` returns whether a signal name is valid; the pseudo-signals always are.
    """
    path = Path(path)
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as error:
        raise ReplayError(f"{path}: cannot read file: {error.strerror}") from None
    try:
        with handle:
            return _read_rows(path, csv.reader(handle), known_signal)
    except UnicodeDecodeError as error:
        raise ReplayError(f"{path}: not UTF-8 text: invalid byte at position {error.start}") from None


def _read_rows(path: Path, reader, known_signal: Callable[[str], bool]) -> Recording:
    header = next(reader, None)
    if header is None or [column.strip() for column in header] != HEADER:
        raise ReplayError(f"{path}:1: invalid header {header!r}: expected {','.join(HEADER)}")
    ticks: dict[float, Tick] = {}
    first_line: dict[str, int] = {}
    seen_rows: dict[tuple[float, str, str], int] = {}
    time_kind: bool | None = None
    for line_number, row in enumerate(reader, start=2):
        where = f"{path}:{line_number}"
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != 4:
            raise ReplayError(f"{where}: expected 4 columns (time,target,signal,value), got {len(row)}")
        time_text, target_text, signal, value_text = (cell.strip() for cell in row)
        seconds, is_rfc3339 = _parse_time(time_text, where)
        if time_kind is None:
            time_kind = is_rfc3339
        elif time_kind != is_rfc3339:
            raise ReplayError(f"{where}: time {time_text!r} mixes RFC 3339 and seconds; use one form in a file")
        try:
            ref = TargetRef.parse(target_text)
        except ValueError as error:
            raise ReplayError(f"{where}: {error}") from None
        if not signal:
            raise ReplayError(f"{where}: missing signal name")
        if signal not in PSEUDO_SIGNALS and not known_signal(signal):
            raise ReplayError(f"{where}: unknown signal {signal!r}; expected a catalog signal or one of {', '.join(PSEUDO_SIGNALS)}")
        sample = _parse_value(value_text, where)
        target = str(ref)
        first_line.setdefault(target, line_number)
        row_key = (seconds, target, signal)
        if row_key in seen_rows:
            raise ReplayError(f"{where}: duplicate row for time {time_text}, target {target}, signal {signal} (first on line {seen_rows[row_key]})")
        seen_rows[row_key] = line_number
        tick = ticks.setdefault(seconds, Tick(seconds, time_text))
        if signal == REPLICAS:
            tick.replicas[target] = _parse_count(sample, value_text, signal, where)
        elif signal == MIN_AVAILABLE:
            tick.min_available[target] = _parse_count(sample, value_text, signal, where)
        elif signal == GPUS_PER_REPLICA:
            if not sample.is_value or sample.value is None or not 0 <= sample.value <= 10_000:
                raise ReplayError(f"{where}: invalid {signal} value {value_text!r}: expected a number from 0 to 10000")
            tick.gpus_per_replica[target] = sample.value
        else:
            tick.samples.setdefault(target, {})[signal] = sample
    ordered = [ticks[key] for key in sorted(ticks)]
    if not ordered:
        raise ReplayError(f"{path}: no rows after the header")
    targets = sorted({TargetRef.parse(name) for name in first_line})
    return Recording(ordered, targets, first_line)


def match_rule(config: Config, ref: TargetRef) -> TargetConfig | None:
    """Return the rule selecting a recorded target, by namespace, kind and name suffix.

    Replay has no live objects, so label selectors are not evaluated, and a clique rule by
    roleName matches a clique whose template name equals the roleName.
    """
    for rule in config.targets:
        if rule.pod_clique_sets.namespace != ref.namespace or LEVEL_KINDS[rule.level] is not ref.kind:
            continue
        names = rule.pod_clique_sets.names
        if rule.level == "podcliqueset":
            if not names or ref.name in names:
                return rule
            continue
        suffix = rule.scaling_group if rule.level == "scalingGroup" else (rule.clique.name or rule.clique.role_name)
        if ref.name.endswith(f"-{suffix}") and (not names or any(ref.name.startswith(f"{pcs}-") for pcs in names)):
            return rule
    return None


def _pcs_and_index(ref: TargetRef, rule: TargetConfig) -> tuple[str, int | None]:
    if ref.kind is Kind.PODCLIQUESET:
        return ref.name, None
    suffix = rule.scaling_group if rule.level == "scalingGroup" else (rule.clique.name or rule.clique.role_name)
    stem = ref.name[: -len(suffix) - 1]
    head, _, index = stem.rpartition("-")
    if index.isdigit() and head:
        return head, int(index)
    return stem, None


def replay(config: Config, recording: Recording, source: str = "replay") -> Iterator[Decision]:
    """Yield one decision per target per tick, in time order."""
    discovered = []
    for ref in recording.targets:
        rule = match_rule(config, ref)
        if rule is None:
            line = recording.first_line[str(ref)]
            raise ReplayError(f"{source}:{line}: target {ref} matches no rule in the configuration (namespace, kind and name)")
        pcs, index = _pcs_and_index(ref, rule)
        discovered.append(DiscoveredTarget(ref=ref, rule=rule.name, pcs=pcs, index=index))

    state = EngineState()
    current: dict[str, int] = {}
    floors: dict[str, int] = {}
    gpus: dict[str, float] = {}
    for tick in recording.ticks:
        current.update(tick.replicas)
        floors.update(tick.min_available)
        gpus.update(tick.gpus_per_replica)
        for target in discovered:
            name = str(target.ref)
            if name not in current and (tick.samples.get(name) or tick.replicas.get(name) is not None):
                raise ReplayError(
                    f"{source}:{recording.first_line[name]}: target {name} has no replicas row at or before time {tick.label}; "
                    "the first tick of each target needs its live /scale value"
                )
        present = [
            dataclasses.replace(target, floor=floors.get(str(target.ref), 0), gpus_per_replica=gpus.get(str(target.ref)))
            for target in discovered
            if str(target.ref) in current
        ]
        specs = build_specs(config, present)
        decisions, state = decide(
            now=tick.time,
            specs=specs,
            observations=tick.samples,
            live=dict(current),
            state=state,
            interval_seconds=config.interval_seconds,
            bands=build_bands(config, present),
            budgets=budget_limits(config),
        )
        for decision in decisions:
            if decision.desired is not None:
                current[decision.target] = decision.desired
            yield decision


def catalog_check(config: Config) -> Callable[[str], bool]:
    """Return a test of signal names against the catalog of the configuration's preset."""
    from metrics.catalog import SignalCatalog, UnknownSignalError

    catalog = SignalCatalog.from_config(config.metrics)

    def known(name: str) -> bool:
        try:
            catalog.resolve(name)
        except UnknownSignalError:
            return False
        return True

    return known


def run_replay(config: Config, path: str | Path) -> list[dict]:
    """Replay a file and return the JSON-lines records, each `time` written as in the input."""
    recording = read_recording(path, catalog_check(config))
    if config.budgets and not any(tick.gpus_per_replica for tick in recording.ticks):
        logger.warning("%s has no gpus_per_replica rows, so the configured GPU budgets cannot apply", path)
    labels = {tick.time: _time_label(tick.label) for tick in recording.ticks}
    records = []
    for decision in replay(config, recording, str(path)):
        record = decision.to_record()
        record["time"] = labels[decision.time]
        records.append(record)
    return records


def _time_label(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def summarize(records: Sequence[dict]) -> str:
    changes = sum(1 for record in records if record["desired"] != record["current"])
    targets = len({record["target"] for record in records})
    return f"{len(records)} decisions for {targets} targets, {changes} scale changes"
