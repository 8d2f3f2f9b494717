"""Per-seed and paired figures of a multi-fidelity benchmark from its ``runs.json``.

``matloop benchmark --dataset ... --cheap-column ...`` writes ``summary.json`` (cost to half
recall, recall at the budget) and ``runs.json`` (each agent's per-seed recall curve on an even
cost grid from 0 to the budget). Where no agent reaches half recall, this prints the cost to a
lower recall (``--recall``) per seed, and the recall at the budget paired by seed against a
reference agent (difference, 95 % t-interval, seeds ahead).

Usage: python benchmarks/mf_paired.py RUNS_JSON [--recall 0.1] [--budget 3000] [--reference multi_fidelity]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from matloop.loop.benchmark import mean_ci


def cost_to(curve: np.ndarray, recall: float, budget: float) -> float | None:
    """The first cost on the curve's grid at which the recall reaches ``recall`` (None: never)."""
    hit = np.nonzero(curve >= recall)[0]
    return None if not len(hit) else float(hit[0] * budget / (len(curve) - 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", help="runs.json of a multi-fidelity benchmark")
    ap.add_argument("--recall", type=float, default=0.1, help="the recall whose cost is printed per seed")
    ap.add_argument("--budget", type=float, default=3000.0, help="the benchmark's cost budget (the curve's last point)")
    ap.add_argument("--reference", default="multi_fidelity", help="the agent the others are paired against")
    args = ap.parse_args()
    runs = json.load(open(args.runs))["runs"]
    ref = np.array([r["recall_at_cost"] for r in runs[args.reference]])
    for name, seeds in runs.items():
        costs = [cost_to(np.asarray(r["recall_curve"], float), args.recall, args.budget) for r in seeds]
        reached = [c for c in costs if c is not None]
        rec = np.array([r["recall_at_cost"] for r in seeds])
        line = (f"{name:<16} recall at budget {rec.mean():.3f}; cost to recall {args.recall}: "
                f"{len(reached)}/{len(costs)} seeds, per seed {[None if c is None else int(c) for c in costs]}, "
                f"mean of those reached {np.mean(reached) if reached else float('nan'):.0f}")
        if name != args.reference:
            d = ref - rec
            ci = mean_ci(d)
            line += (f"; {args.reference} minus this, paired: {ci['mean']:+.3f} [{ci['ci95'][0]:+.3f}, {ci['ci95'][1]:+.3f}], "
                     f"{args.reference} ahead on {(d > 0).sum()}/{len(d)} seeds, recall ratio {ref.mean() / rec.mean():.2f}x")
        print(line)


if __name__ == "__main__":
    main()
