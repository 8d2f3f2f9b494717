"""Markdown table of every benchmark summary under a folder (default runs/benchmarks).

Usage: python benchmarks/table.py [DIR]

One row per (benchmark, strategy): recall at budget (mean [CI95]), AF_vs_random (median,
seeds that reached half recall), EF at budget (mean), seconds per run; a last column says
whether the default agent's mean recall is above, equal to or below rf_ucb's, and whether
the two 95 % intervals overlap.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _ci(d: dict, fmt: str = "{:.3f}") -> str:
    lo, hi = d["ci95"]
    if d["mean"] is None:
        return "—"
    return f"{fmt.format(d['mean'])} [{fmt.format(max(lo, 0.0))}, {fmt.format(hi)}]"


def rows(folder: Path) -> list[str]:
    """Markdown table lines, one per (benchmark, strategy) under ``folder``."""
    out = ["| benchmark | N / good | strategy | recall at budget [95 % CI] | AF median (reached) | EF | s/run | vs rf_ucb |",
           "|---|---|---|---|---|---|---|---|"]
    for f in sorted(folder.glob("*/summary.json")):
        s = json.loads(f.read_text())
        st = s["strategies"]
        rf = st.get("rf_ucb", {}).get("recall_at_budget")
        for name, r in st.items():
            af = r["AF_vs_random"]
            med = "—" if af.get("median") is None else f"{af['median']:.1f}"
            verdict = ""
            if name == "matloop" and rf is not None:
                m, (lo, hi) = r["recall_at_budget"]["mean"], r["recall_at_budget"]["ci95"]
                side = "above" if m > rf["mean"] + 1e-9 else ("below" if m < rf["mean"] - 1e-9 else "equal")
                sep = lo > rf["ci95"][1] or hi < rf["ci95"][0]
                verdict = f"{side}, {'separate' if sep else 'overlapping'} CIs"
            out.append(
                f"| {s['dataset']} | {s['n_pool']} / {s['n_good']} | {name} | {_ci(r['recall_at_budget'])} | "
                f"{med} ({r['evals_to_half']['n_reached']}/{s['seeds']}) | {r['EF_at_budget']['mean']:.1f} | "
                f"{r['seconds_per_run']['mean']:.0f} | {verdict} |"
            )
    return out


if __name__ == "__main__":
    print("\n".join(rows(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/benchmarks"))))
