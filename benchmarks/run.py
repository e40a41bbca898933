"""Run every benchmark script in this folder, one after another, and stop at the first failure.

Each script prints its own numbers with the machine it ran on; copy them into
docs/benchmarks.md with the command that produced them.
"""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    scripts = sorted(path for path in HERE.glob("*_bench.py"))
    if not scripts:
        print(f"no *_bench.py scripts in {HERE}", file=sys.stderr)
        return 1
    for script in scripts:
        print(f"== {script.name}", flush=True)
        completed = subprocess.run([sys.executable, str(script)], cwd=HERE.parent)
        if completed.returncode != 0:
            print(f"{script.name} failed with exit code {completed.returncode}", file=sys.stderr)
            return completed.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
