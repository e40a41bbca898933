"""Rendering decisions for people and tools: exact lines and the JSON form."""

from __future__ import annotations

import json

from autoscaler.behavior import Adjustment
from autoscaler.engine import Decision, EngineState, TargetSpec, decide
from autoscaler.explain import explain_decisions_json, explain_decisions_text, explain_json, explain_text
from metrics.sample import Sample
from policies.base import Desire
from policies.registry import default_registry

# 2026-12-04T20:15:00Z
NOW = 1796415300.0

DECODE = Decision(
    time=NOW,
    target="llm/podclique/pcs-0-decode",
    rule="decode",
    current=3,
    desired=4,
    reason="0:target: itl_p90 62 ms > 50 ms; capped by budget",
    desires=(
        ("0:target", Desire.scale_to(6, "itl_p90 62 ms > 50 ms")),
        ("1:kv-cache", Desire.idle("kv_usage: no traffic in the window")),
        ("2:queue", Desire.unknown("queue_depth: query failed: timed out")),
    ),
    adjustments=(
        Adjustment("rate-limit", 6, 5, "scale-up limited to 5 (2 pods per 15s, selectPolicy Max)"),
        Adjustment("budget", 5, 4, "budget llm: 16 GPUs, 20 proposed; cut 5 -> 4 (priority 1)"),
    ),
    samples={
        "queue_depth": Sample.unknown("query failed: timed out"),
        "itl_p90": Sample.of(62.0),
        "kv_usage": Sample.idle("no traffic in the window"),
    },
)


def test_text_lines():
    assert explain_text(DECODE).splitlines() == [
        "podclique llm/pcs-0-decode (rule decode) at 2026-12-04T20:15:00Z",
        "  inputs:",
        "    itl_p90: 62",
        "    kv_usage: idle (no traffic in the window)",
        "    queue_depth: unknown (query failed: timed out)",
        "  policies:",
        "    0:target: 6 replicas (itl_p90 62 ms > 50 ms)",
        "    1:kv-cache: idle, may go to the floor (kv_usage: no traffic in the window)",
        "    2:queue: unknown, blocks scale-down (queue_depth: query failed: timed out)",
        "  adjustments:",
        "    rate-limit: 6 -> 5 (scale-up limited to 5 (2 pods per 15s, selectPolicy Max))",
        "    budget: 5 -> 4 (budget llm: 16 GPUs, 20 proposed; cut 5 -> 4 (priority 1))",
        "  decision: 3 -> 4: 0:target: itl_p90 62 ms > 50 ms; capped by budget",
    ]


def test_text_unread_scale():
    decision = Decision(NOW + 0.25, "llm/podcliqueset/pcs", "whole", None, None, "hold: live /scale could not be read")
    assert explain_text(decision).splitlines() == [
        "podcliqueset llm/pcs (rule whole) at 2026-12-04T20:15:00.250Z",
        "  inputs:",
        "    none",
        "  policies:",
        "    none evaluated",
        "  adjustments:",
        "    none",
        "  decision: no write: hold: live /scale could not be read",
    ]


def test_text_keep():
    decision = Decision(NOW, "llm/podcliquescalinggroup/pcs-0-prefill", "prefill", 2, 2, "inside tolerance")
    assert explain_text(decision).splitlines()[-1] == "  decision: keep 2: inside tolerance"


def test_text_unparsed_target_kept():
    decision = Decision(NOW, "not-a-target-id", "r", 1, 2, "")
    lines = explain_text(decision).splitlines()
    assert lines[0] == "not-a-target-id (rule r) at 2026-12-04T20:15:00Z"
    assert lines[-1] == "  decision: 1 -> 2"


def test_json_form():
    data = explain_json(DECODE)
    assert data["timestamp"] == "2026-12-04T20:15:00Z"
    assert data["level"] == "podclique"
    assert data["namespace"] == "llm"
    assert data["name"] == "pcs-0-decode"
    assert data["current"] == 3
    assert data["desired"] == 4
    assert data["changes_scale"] is True
    assert data["samples"] == {
        "itl_p90": {"kind": "value", "value": 62.0, "reason": ""},
        "kv_usage": {"kind": "idle", "value": None, "reason": "no traffic in the window"},
        "queue_depth": {"kind": "unknown", "value": None, "reason": "query failed: timed out"},
    }
    assert data["desires"][0] == {"policy": "0:target", "kind": "replicas", "replicas": 6, "reason": "itl_p90 62 ms > 50 ms"}
    assert data["desires"][1]["kind"] == "idle"
    assert data["desires"][2]["kind"] == "unknown"
    assert data["adjustments"][1] == {
        "step": "budget",
        "before": 5,
        "after": 4,
        "reason": "budget llm: 16 GPUs, 20 proposed; cut 5 -> 4 (priority 1)",
    }
    assert json.loads(json.dumps(data)) == data


def test_tick_ordered_by_level():
    clique = Decision(NOW, "llm/podclique/pcs-0-decode", "d", 1, 1, "")
    group = Decision(NOW, "llm/podcliquescalinggroup/pcs-0-prefill", "p", 1, 1, "")
    whole = Decision(NOW, "llm/podcliqueset/pcs", "w", 1, 1, "")
    other_namespace = Decision(NOW, "alpha/podclique/x-0-a", "a", 1, 1, "")
    text = explain_decisions_text([clique, group, whole, other_namespace])
    headlines = [line for line in text.splitlines() if line and not line.startswith(" ")]
    assert headlines == [
        "podclique alpha/x-0-a (rule a) at 2026-12-04T20:15:00Z",
        "podcliqueset llm/pcs (rule w) at 2026-12-04T20:15:00Z",
        "podcliquescalinggroup llm/pcs-0-prefill (rule p) at 2026-12-04T20:15:00Z",
        "podclique llm/pcs-0-decode (rule d) at 2026-12-04T20:15:00Z",
    ]
    assert [item["target"] for item in explain_decisions_json([clique, group, whole])] == [
        "llm/podcliqueset/pcs",
        "llm/podcliquescalinggroup/pcs-0-prefill",
        "llm/podclique/pcs-0-decode",
    ]


def test_engine_decision_rendered():
    policy = default_registry().create("target", {"signal": "request_rate", "type": "AverageValue", "value": 10})
    spec = TargetSpec(target="llm/podclique/pcs-0-decode", rule="decode", policies=(policy,), min_replicas=1, max_replicas=3)
    decisions, _ = decide(
        now=NOW,
        specs=[spec],
        observations={spec.target: {"request_rate": Sample.of(100.0)}},
        live={spec.target: 2},
        state=EngineState(),
    )
    lines = explain_text(decisions[0]).splitlines()
    assert lines[0] == "podclique llm/pcs-0-decode (rule decode) at 2026-12-04T20:15:00Z"
    assert lines[2] == "    request_rate: 100"
    assert lines[4].startswith("    0:target: 10 replicas")
    assert any(line.startswith("    bounds: ") and line.endswith("(capped at maxReplicas 3)") for line in lines)
    assert lines[-1].startswith("  decision: 2 -> 3: ")
