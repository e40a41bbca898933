"""Backtest outputs: the terminal table, the JSON report, CSV timelines and a plot."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Any

from autoscaler.backtest.runner import BacktestReport, PolicyOutcome
from autoscaler.backtest.signals import DECODE, PREFILL


def to_dict(report: BacktestReport) -> dict[str, Any]:
    """Return the JSON document: trace, slo, results (one per policy) and oracle, plus settings."""
    workload = report.workload
    settings = report.settings
    return {
        "trace": {"name": workload.name, "requests": workload.requests, "duration_s": round(workload.duration_s, 3)},
        "slo": {"ttft_s": settings.ttft_slo_s, "itl_s": settings.itl_slo_s},
        "results": [_result(outcome) for outcome in report.results],
        "oracle": {
            "gpu_hours": _round(report.oracle.gpu_hours),
            "window_s": report.oracle.window_s,
            "peak_gpus": float(report.oracle.gpus.max()) if report.oracle.gpus.size else 0.0,
        },
        "settings": {
            "mode": settings.mode,
            "cold_start_s": settings.cold_start_s,
            "gpus_per_pod": settings.gpus_per_pod,
            "seed": settings.seed,
        },
        "warnings": list(report.warnings),
    }


def _result(outcome: PolicyOutcome) -> dict[str, Any]:
    return {
        "policy": outcome.policy,
        "attainment": _round(outcome.attainment),
        "ttft_attainment": _round(outcome.ttft_attainment),
        "itl_attainment": _round(outcome.itl_attainment),
        "gpu_hours": _round(outcome.gpu_hours),
        "oracle_ratio": _round(outcome.oracle_ratio),
        "scale_actions": outcome.scale_actions,
        "peak_gpus": outcome.peak_gpus,
        "unfinished_requests": outcome.unfinished,
    }


def _round(value: float) -> float | None:
    # JSON has no NaN; a missing value is null.
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), 6)


def format_table(report: BacktestReport) -> str:
    """Return the comparison table with a header naming the workload and the SLOs."""
    workload = report.workload
    settings = report.settings
    lines = [
        f"trace {workload.name}: {workload.requests} requests over {workload.duration_s / 3600:.2f} h "
        f"({settings.mode} mode, cold start {settings.cold_start_s:g} s)",
        f"SLO: TTFT <= {settings.ttft_slo_s * 1000:g} ms and mean ITL <= {settings.itl_slo_s * 1000:g} ms per request",
        "",
    ]
    header = ("policy", "attain", "TTFT ok", "ITL ok", "GPU-h", "x oracle", "actions", "peak GPUs")
    rows = [header]

    for outcome in report.results:
        rows.append(
            (
                outcome.policy,
                _percent(outcome.attainment),
                _percent(outcome.ttft_attainment),
                _percent(outcome.itl_attainment),
                f"{outcome.gpu_hours:.2f}",
                f"{outcome.oracle_ratio:.2f}" if math.isfinite(outcome.oracle_ratio) else "-",
                str(outcome.scale_actions),
                f"{outcome.peak_gpus:g}",
            )
        )

    oracle = report.oracle
    rows.append(("oracle (lower bound)", "-", "-", "-", f"{oracle.gpu_hours:.2f}", "1.00", "-", f"{oracle.gpus.max():g}"))

    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    for index, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells))
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    for warning in report.warnings:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)


def _percent(value: float) -> str:
    return f"{value * 100:.1f}%" if math.isfinite(value) else "-"


def write_json(report: BacktestReport, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_dict(report), indent=2) + "\n", encoding="utf-8")


def write_csv(report: BacktestReport, directory: str | Path) -> list[Path]:
    """Write one `<policy>.csv` timeline per policy (one row per tick); return the paths."""
    directory = Path(directory)
    # Only the last level is created: a missing parent is more likely a typo than a wish for a new tree.
    directory.mkdir(exist_ok=True)
    paths = []
    for outcome in report.results:
        path = directory / f"{_file_name(outcome.policy)}.csv"
        timeline = outcome.timeline
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["time_s", "prefill_replicas", "decode_replicas", "gpus", "request_rate", "ttft_p90_s", "itl_p90_s"])
            for row in zip(
                timeline.time_s, timeline.replicas[PREFILL], timeline.replicas[DECODE], timeline.gpus,
                timeline.request_rate, timeline.ttft_p90, timeline.itl_p90,
            ):
                writer.writerow([_csv_value(value) for value in row])
        paths.append(path)
    return paths


def _csv_value(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return "" if not math.isfinite(value) else f"{value:.6g}"


def _file_name(policy: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", policy) or "policy"


def write_plot(report: BacktestReport, path: str | Path) -> None:
    """Plot, per policy, replicas against the request rate and TTFT/ITL p90 against the SLOs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report.results
    figure, axes = plt.subplots(len(results), 2, figsize=(14, 3.2 * len(results)), squeeze=False, sharex=True)
    settings = report.settings
    for row, outcome in enumerate(results):
        timeline = outcome.timeline
        hours = [time / 3600 for time in timeline.time_s]
        left = axes[row][0]
        left.step(hours, timeline.replicas[PREFILL], where="post", label="prefill replicas")
        left.step(hours, timeline.replicas[DECODE], where="post", label="decode replicas")
        left.set_ylabel("replicas")
        left.set_title(f"{outcome.policy}: {outcome.gpu_hours:.1f} GPU-h, attainment {outcome.attainment * 100:.1f}%", fontsize=9)
        load = left.twinx()
        load.plot(hours, timeline.request_rate, color="grey", alpha=0.5, linewidth=0.8, label="request rate")
        load.set_ylabel("req/s")
        left.legend(loc="upper left", fontsize=7)

        right = axes[row][1]
        right.plot(hours, timeline.ttft_p90, label="TTFT p90", linewidth=0.8)
        right.plot(hours, timeline.itl_p90, label="ITL p90", linewidth=0.8)
        right.axhline(settings.ttft_slo_s, color="C0", linestyle="--", linewidth=0.8, label="TTFT SLO")
        right.axhline(settings.itl_slo_s, color="C1", linestyle="--", linewidth=0.8, label="ITL SLO")
        right.set_yscale("log")
        right.set_ylabel("seconds")
        right.legend(loc="upper left", fontsize=7)
    for axis in axes[-1]:
        axis.set_xlabel("hours")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
