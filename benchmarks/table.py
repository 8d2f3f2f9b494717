"""Markdown table of every benchmark summary under a folder (default runs/benchmarks).

Usage: python benchmarks/table.py [DIR]   (DIR: runs/benchmarks, or benchmarks/results/retrospective)

One row per (benchmark, strategy): recall at budget (mean [CI95]), AF_vs_random (median,
seeds that reached half recall), EF at budget (mean), seconds per run (wall, and in brackets the process's CPU seconds where
recorded: with one thread, the run's time on an idle core); a last column says,
for the default agent, its mean recall as a multiple of the better of rf_ucb and greedy_rf
(the issue's target: >= 1.2x) and whether its 95 % interval lies above random's mean. Where
the summary has the leave-one-out ceiling ("attainable", written by ``matloop benchmark``),
one more row per benchmark gives it: the recall and AF of picking greedily by predictions
that saw every other label of the pool.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def _ci(d: dict, fmt: str = "{:.3f}") -> str:
    lo, hi = d["ci95"]
    if d["mean"] is None:
        return "—"
    return f"{fmt.format(d['mean'])} [{fmt.format(max(lo, 0.0))}, {fmt.format(hi)}]"


def rows(folder: Path) -> list[str]:
    """Markdown table lines, one per (benchmark, strategy) under ``folder``."""
    out = ["| benchmark | N / good | strategy | recall at budget [95 % CI] | AF median (reached) | EF | s/run (CPU) | default agent vs forests, random |",
           "|---|---|---|---|---|---|---|---|"]
    for f in sorted(folder.glob("*/summary.json")) or sorted(folder.glob("*.json")):
        s = json.loads(f.read_text())
        if "strategies" not in s or "n_good" not in s:  # not a single-fidelity summary (e.g. multi-fidelity)
            continue
        st = s["strategies"]
        for name, r in st.items():
            af = r["AF_vs_random"]
            med = "—" if af.get("median") is None else f"{af['median']:.1f}"
            verdict = ""
            if name == "matloop":
                verdict = _verdict(r["recall_at_budget"], st)
            out.append(
                f"| {s['dataset']} | {s['n_pool']} / {s['n_good']} | {name} | {_ci(r['recall_at_budget'])} | "
                f"{med} ({r['evals_to_half']['n_reached']}/{s['seeds']}) | {r['EF_at_budget']['mean']:.1f} | "
                f"{_seconds(r)} | {verdict} |"
            )
        for model, a in (s.get("attainable") or {}).items():
            med = "—" if a.get("AF_vs_random") is None else f"{a['AF_vs_random']:.1f}"
            out.append(f"| {s['dataset']} | {s['n_pool']} / {s['n_good']} | ceiling ({model}) | "
                       f"{a['recall_at_budget']:.3f} | {med} | | | leave-one-out, Spearman {a['spearman']:.2f} |")
    return out


def _seconds(r: dict) -> str:
    """Wall seconds per run, and CPU seconds (the wall time on an idle core) where recorded."""
    wall = f"{r['seconds_per_run']['mean']:.0f}"
    cpu = (r.get("cpu_seconds_per_run") or {}).get("mean")
    return wall if cpu is None or math.isnan(cpu) else f"{wall} ({cpu:.0f})"


def _verdict(mine: dict, strategies: dict) -> str:
    """The default agent against the better forest (ratio of mean recalls) and against random (CI)."""
    parts = []
    forests = [strategies[k]["recall_at_budget"]["mean"] for k in ("rf_ucb", "greedy_rf") if k in strategies]
    if forests:
        best = max(forests)
        parts.append(f"{mine['mean'] / best:.2f}x best forest" if best > 0 else "best forest found none")
    if "random" in strategies:
        rnd = strategies["random"]["recall_at_budget"]["mean"]
        lo, hi = mine["ci95"]
        parts.append("above random (CI)" if lo > rnd else ("at random (CI)" if hi >= rnd else "BELOW random (CI)"))
    return "; ".join(parts)


if __name__ == "__main__":
    print("\n".join(rows(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/benchmarks"))))
