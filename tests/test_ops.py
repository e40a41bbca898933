"""Telemetry metrics, the /metrics, /healthz and /readyz server, and the JSON log formatter."""

from __future__ import annotations

import io
import json
import logging
import urllib.error
import urllib.request
from typing import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from autoscaler.engine import Decision
from autoscaler.ops import JsonFormatter, OpsServer, Telemetry, serve_ops


class ManualClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ops() -> Iterator[tuple[Telemetry, OpsServer, ManualClock]]:
    clock = ManualClock()
    telemetry = Telemetry(stall_after_seconds=60, clock=clock)
    server, thread = serve_ops(telemetry, host="127.0.0.1", port=0)
    yield telemetry, server, clock
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def fetch(server: OpsServer, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(server.url + path, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse an exposition into {(sample name, sorted labels): value}."""
    parsed = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            parsed[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return parsed


def decision(target: str, current: int | None, desired: int | None) -> Decision:
    return Decision(1.0, target, "rule", current, desired, "test")


def test_readyz_after_first_successful_tick(ops) -> None:
    telemetry, server, _ = ops
    assert fetch(server, "/readyz")[0] == 503

    telemetry.record_tick(duration_seconds=0.2, success=False)
    status, body = fetch(server, "/readyz")
    assert status == 503
    assert "no tick has succeeded" in body

    telemetry.record_tick(duration_seconds=0.3, success=True)
    assert fetch(server, "/readyz") == (200, "ok\n")
    telemetry.record_tick(duration_seconds=0.3, success=False)
    assert fetch(server, "/readyz")[0] == 200


def test_healthz_fails_when_loop_stalls(ops) -> None:
    telemetry, server, clock = ops
    assert fetch(server, "/healthz") == (200, "ok\n")
    clock.now += 61
    status, body = fetch(server, "/healthz")
    assert status == 503
    assert "no tick has ended for 61 s" in body

    telemetry.record_tick(duration_seconds=1.0, success=False)
    assert fetch(server, "/healthz")[0] == 200


def test_healthz_without_stall_limit() -> None:
    clock = ManualClock()
    telemetry = Telemetry(clock=clock)
    clock.now += 1e6
    assert telemetry.healthy() == (True, "ok")


def test_unknown_path_not_found(ops) -> None:
    _, server, _ = ops
    status, body = fetch(server, "/nothing")
    assert status == 404
    assert "/metrics" in body


def test_metrics_exposition(ops) -> None:
    telemetry, server, _ = ops
    telemetry.record_tick(duration_seconds=0.4, success=True)
    telemetry.record_tick(duration_seconds=2.0, success=False)
    telemetry.record_query("itl_p90", 0.03)
    telemetry.record_error("discovery")
    telemetry.record_patch("llm/podclique/pcs-0-decode", success=True)
    telemetry.record_patch("llm/podclique/pcs-0-decode", success=False)
    telemetry.publish(
        1.0,
        [
            decision("llm/podclique/pcs-0-decode", 2, 5),
            decision("llm/podcliquescalinggroup/pcs-0-workers", 3, 3),
            decision("llm/podcliqueset/pcs", None, None),
        ],
    )

    status, text = fetch(server, "/metrics")
    assert status == 200
    values = samples(text)
    decode = (("level", "podclique"), ("target", "llm/podclique/pcs-0-decode"))
    workers = (("level", "podcliquescalinggroup"), ("target", "llm/podcliquescalinggroup/pcs-0-workers"))

    assert values[("grove_autoscaler_ticks_total", (("outcome", "success"),))] == 1
    assert values[("grove_autoscaler_ticks_total", (("outcome", "error"),))] == 1
    assert values[("grove_autoscaler_tick_duration_seconds_count", ())] == 2
    assert values[("grove_autoscaler_tick_duration_seconds_sum", ())] == pytest.approx(2.4)
    assert values[("grove_autoscaler_query_duration_seconds_count", (("signal", "itl_p90"),))] == 1
    assert values[("grove_autoscaler_errors_total", (("stage", "discovery"),))] == 1
    patches = "grove_autoscaler_scale_patches_total"
    assert values[(patches, (("level", "podclique"), ("outcome", "success"), ("target", "llm/podclique/pcs-0-decode")))] == 1
    assert values[(patches, (("level", "podclique"), ("outcome", "error"), ("target", "llm/podclique/pcs-0-decode")))] == 1
    assert values[("grove_autoscaler_desired_replicas", decode)] == 5
    assert values[("grove_autoscaler_current_replicas", decode)] == 2
    assert values[("grove_autoscaler_desired_replicas", workers)] == 3
    assert values[("grove_autoscaler_decisions_total", (("direction", "up"), *decode))] == 1
    assert values[("grove_autoscaler_decisions_total", (("direction", "hold"), *workers))] == 1
    assert values[("grove_autoscaler_decisions_total", (("direction", "unknown"), ("level", "podcliqueset"), ("target", "llm/podcliqueset/pcs")))] == 1
    # Unknown replica counts are left out instead of being shown as 0.
    assert ("grove_autoscaler_desired_replicas", (("level", "podcliqueset"), ("target", "llm/podcliqueset/pcs"))) not in values
    assert values[("grove_autoscaler_ready", ())] == 1


def test_removed_target_loses_gauges() -> None:
    telemetry = Telemetry()
    telemetry.publish(1.0, [decision("llm/podclique/a", 2, 3), decision("llm/podclique/b", 1, 1)])
    telemetry.publish(2.0, [decision("llm/podclique/b", 1, 2)])

    exposition = samples(telemetry_text(telemetry))
    assert ("grove_autoscaler_desired_replicas", (("level", "podclique"), ("target", "llm/podclique/a"))) not in exposition
    assert exposition[("grove_autoscaler_desired_replicas", (("level", "podclique"), ("target", "llm/podclique/b")))] == 2


def telemetry_text(telemetry: Telemetry) -> str:
    from prometheus_client import generate_latest

    return generate_latest(telemetry.registry).decode()


def test_two_telemetries_do_not_share_a_registry() -> None:
    first, second = Telemetry(), Telemetry()
    first.record_error("tick")
    key = ("grove_autoscaler_errors_total", (("stage", "tick"),))
    assert samples(telemetry_text(first))[key] == 1
    assert key not in samples(telemetry_text(second))


# --- JSON logs ------------------------------------------------------------------------------


def log_through_formatter(logger_name: str, emit) -> list[dict]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        emit(logger)
    finally:
        logger.removeHandler(handler)
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_formatter_fields() -> None:
    [entry] = log_through_formatter("test.ops.fields", lambda log: log.info("scaled %s %d -> %d", "llm/pcs-0-decode", 3, 5))
    assert entry["level"] == "info"
    assert entry["logger"] == "test.ops.fields"
    assert entry["message"] == "scaled llm/pcs-0-decode 3 -> 5"
    assert entry["time"].endswith("+00:00")
    assert set(entry) == {"time", "level", "logger", "message"}


def test_json_formatter_extra_and_exception() -> None:
    def emit(log: logging.Logger) -> None:
        try:
            raise ValueError("bad value 7")
        except ValueError:
            log.error("tick failed", exc_info=True, extra={"target": "llm/podclique/a", "replicas": 3, "path": object()})

    [entry] = log_through_formatter("test.ops.extra", emit)
    assert entry["level"] == "error"
    assert entry["target"] == "llm/podclique/a"
    assert entry["replicas"] == 3
    assert entry["path"].startswith("<object object")
    assert "ValueError: bad value 7" in entry["exception"]


def test_json_formatter_one_line_per_record() -> None:
    entries = log_through_formatter("test.ops.lines", lambda log: log.warning("first\nsecond"))
    assert [entry["message"] for entry in entries] == ["first\nsecond"]
