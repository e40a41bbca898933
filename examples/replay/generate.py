"""Write the synthetic replay example: a 30-minute load ramp and its return to idle.

It records what a fleet sized at 80 % of capacity would have seen: the live replicas every
tick, and latency and KV usage proportional to load per replica. It includes a failed query
and an idle window, so `replay` shows every kind of input. Run it from the project root:
python examples/replay/generate.py
"""

import csv
import math
from pathlib import Path

PREFILL = "default/podcliquescalinggroup/multinode-disaggregated-0-prefill"
DECODE = "default/podcliquescalinggroup/multinode-disaggregated-0-decode"
TICK_SECONDS = 15
DURATION_SECONDS = 1800


def load_at(seconds: float) -> float:
    """Return offered load in units of one replica's capacity: a ramp to 3.2, then idle."""
    if seconds >= 1500:
        return 0.0
    return 0.4 + 2.8 * math.sin(math.pi * seconds / 1500) ** 2


def main() -> None:
    path = Path(__file__).with_name("multi-node-disaggregated.csv")
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["time", "target", "signal", "value"])
        for tick in range(DURATION_SECONDS // TICK_SECONDS):
            seconds = tick * TICK_SECONDS
            load = load_at(seconds)
            replicas = {PREFILL: max(1, math.ceil(load / 0.8)), DECODE: max(1, math.ceil(load / 0.8))}
            for target, count in replicas.items():
                writer.writerow([seconds, target, "replicas", count])
            if tick == 0:
                writer.writerow([seconds, PREFILL, "min_available", 1])
                writer.writerow([seconds, DECODE, "min_available", 1])
            # Rows for ticks 40 and 41 record a failed Prometheus query.
            failed = tick in (40, 41)
            if load == 0:
                writer.writerow([seconds, PREFILL, "ttft_p90", "nan"])
                writer.writerow([seconds, DECODE, "itl_p90", "nan"])
                writer.writerow([seconds, DECODE, "kv_cache_usage", "0"])
                continue
            # Latency and KV usage grow with load per replica of the recorded fleet.
            ttft = 0.5 * load / replicas[PREFILL] if not failed else "error"
            itl = 0.05 * load / replicas[DECODE] if not failed else "error"
            kv = min(1.0, 0.9 * load / replicas[DECODE])
            writer.writerow([seconds, PREFILL, "ttft_p90", ttft if failed else f"{ttft:.4f}"])
            writer.writerow([seconds, DECODE, "itl_p90", itl if failed else f"{itl:.4f}"])
            writer.writerow([seconds, DECODE, "kv_cache_usage", f"{kv:.3f}"])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
