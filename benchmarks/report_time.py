"""Time ``matloop report`` on a campaign store: the report with and without the model-insights refit,
against a baseline command (another checkout's ``matloop report``, e.g. the tree before a change),
alternating in the same run so that the machine's load hits all alike.

    python benchmarks/report_time.py STORE [--baseline-python PY] [--runs 3]

Each run is a fresh process (imports included), as a user runs it. Prints the median of each and
the ratios to the baseline.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time


def _run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    """Parse the arguments, time each variant ``--runs`` times and print medians and ratios."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("store")
    ap.add_argument("--baseline-python", help="python whose matloop is the baseline (default: none)")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        variants = {"this tree": [sys.executable, "-m", "matloop.loop.cli", "report", args.store, "--out"],
                    "this tree, --no-model-insights": [sys.executable, "-m", "matloop.loop.cli", "report", args.store,
                                                       "--no-model-insights", "--out"]}
        if args.baseline_python:
            variants = {"baseline": [args.baseline_python, "-m", "matloop.loop.cli", "report", args.store, "--out"],
                        **variants}
        times: dict[str, list[float]] = {k: [] for k in variants}
        for k in range(args.runs):
            for name, cmd in variants.items():
                times[name].append(_run(cmd + [f"{tmp}/{len(times[name])}-{name.replace(' ', '_')}"]))
    base = statistics.median(times["baseline"]) if "baseline" in times else None
    for name, ts in times.items():
        med = statistics.median(ts)
        ratio = f"  x{med / base:.2f} of the baseline" if base else ""
        print(f"{name:<32} median {med:6.2f} s  runs {', '.join(f'{t:.2f}' for t in ts)}{ratio}")


if __name__ == "__main__":
    main()
