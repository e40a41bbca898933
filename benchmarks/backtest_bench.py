"""Measure the two backtest speed goals and print the numbers with the machine they ran on.

1. Request-level: the bundled one-hour Azure conversation trace, rate scaled so its peak needs
   8 GPUs (the CLI default), five policies (two configured sets and three baselines).
   Goal: about 5 s in total.
2. Fluid: a 14-day ServeGen rate shape (a directory of chunk-*-trace.csv files, given with
   --servegen), five policies. Goal: at most 60 s.

Run: python3 benchmarks/backtest_bench.py [--servegen DIR] [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autoscaler.backtest import cli  # noqa: E402

# A second policy set: latency targets read straight from the histograms.
LATENCY_CONFIG = """\
intervalSeconds: 15
metrics:
  preset: vllm
  windowSeconds: 60
targets:
  - name: prefill
    podCliqueSets: {namespace: default, names: [multinode-disaggregated]}
    level: scalingGroup
    scalingGroup: prefill
    maxReplicas: 16
    behavior: {}
    policies:
      - name: latency-slo
        params: {signal: ttft_p90, slo_seconds: 0.5}
  - name: decode
    podCliqueSets: {namespace: default, names: [multinode-disaggregated]}
    level: scalingGroup
    scalingGroup: decode
    maxReplicas: 16
    behavior: {}
    policies:
      - name: latency-slo
        params: {signal: itl_p90, slo_seconds: 0.05}
"""


def _time_run(arguments: list[str], repeat: int) -> list[float]:
    durations = []
    for _ in range(repeat):
        started = time.perf_counter()
        code = cli.main(arguments)
        durations.append(time.perf_counter() - started)
        if code != 0:
            raise SystemExit(f"backtest exited with {code} for {' '.join(arguments)}")
    return durations


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servegen", help="ServeGen rate directory for the fluid benchmark (skipped when absent)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per benchmark; the median is reported (default: 3)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as directory:
        latency_config = Path(directory) / "latency-slo.yaml"
        latency_config.write_text(LATENCY_CONFIG, encoding="utf-8")
        configs = ["--config", str(cli.default_config_path()), "--config", str(latency_config)]

        results = []
        request = _time_run([*configs, "--quiet"], args.repeat)
        results.append(("request-level, 1 h Azure conv (auto scale), 5 policies", request, 5.0))
        if args.servegen:
            fluid = _time_run(["--trace", args.servegen, "--mode", "fluid", *configs, "--quiet"], args.repeat)
            results.append(("fluid, 14-day ServeGen shape, 5 policies", fluid, 60.0))

    print()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    for name, durations, goal in results:
        median = statistics.median(durations)
        verdict = "meets" if median <= goal else "misses"
        runs = ", ".join(f"{value:.1f}" for value in durations)
        print(f"{name}: median {median:.1f} s (runs {runs}); goal {goal:g} s: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
