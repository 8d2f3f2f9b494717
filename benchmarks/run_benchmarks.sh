#!/usr/bin/env bash
# Reproduce every shipped retrospective benchmark into runs/benchmarks/<name>/
# (summary.json, details.json, curves.csv, recall.png, best_so_far.png) and the planning
# figures into runs/benchmarks/planning/.
#
# Usage: benchmarks/run_benchmarks.sh [DATA_DIR] [NAME ...]
#   DATA_DIR defaults to ../shared/data next to the repository (see its README.md);
#   NAMEs pick benchmarks (default: all): oer_3496 oer_3851 oer_3860 oer_4098 expt_gap
#   perov5 supercon_tc77 supercon_top1pct mp_gap_35k planning
# Every benchmark: top 1 % (max/min goals), budget 200, batch 10, init 10, 5 seeds,
# strategies matloop, random, rf_ucb, greedy_rf. One process at a time, 1 torch thread
# (mp_gap_35k: budget 300, 2 torch threads: the speed check).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DATA="${1:-$ROOT/../shared/data}"
shift || true
PY="${PYTHON:-$ROOT/.venv/bin/python}"
OUT="$ROOT/runs/benchmarks"
mkdir -p "$OUT"
if [ ! -d "$DATA" ]; then
    echo "data folder $DATA not found (pass it as the first argument)" >&2
    exit 2
fi
WANT=("$@")
want() { [ ${#WANT[@]} -eq 0 ] && return 0; for w in "${WANT[@]}"; do [ "$w" = "$1" ] && return 0; done; return 1; }
COMMON=(--budget 200 --batch-size 10 --init 10 --seeds 5 --threads 1)

run() {  # name csv composition_column target_column goal [extra args]
    local name=$1 csv=$2 comp=$3 target=$4 goal=$5
    shift 5
    echo "== $name" >&2
    "$PY" -m matloop.loop.benchmark "$csv" --composition-column "$comp" --target-column "$target" \
        --goal "$goal" --name "$name" "${COMMON[@]}" --out "$OUT/$name" "$@" | tee "$OUT/$name.txt"
}

for plate in 3496 3851 3860 4098; do
    want "oer_$plate" && run "oer_$plate" "$DATA/jcap_oer/plate_$plate/composition.csv" composition overpotential_V min
done

want expt_gap && run expt_gap "$DATA/matbench/matbench_expt_gap.csv" formula target window:1.1:1.7

if want perov5; then
    # Castelli water-splitting criterion: GLLB-SC gap (ind_gap, the fundamental gap) in
    # [1.5, 3] eV AND heat_ref <= 0.2 eV/atom. One derived scalar carries both:
    # v = max(|gap - 2.25| - 0.75, heat_ref - 0.2); v <= 0 exactly when both hold, and the
    # agent targets the window v in (-inf, 0]. Structures (CIF) add structure features.
    # Every run replays the pool through the campaign loop with a lookup oracle keyed by
    # candidate id, so the site-swapped polymorphs (1,473 of 7,572 rows share a composition)
    # keep their own labels.
    mkdir -p "$OUT/perov5"
    "$PY" - "$DATA/perov5" "$OUT/perov5/pool.csv" <<'EOF'
import sys
import numpy as np
import pandas as pd
src, dst = sys.argv[1], sys.argv[2]
df = pd.concat([pd.read_csv(f"{src}/val.csv"), pd.read_csv(f"{src}/test.csv")], ignore_index=True)
df["violation"] = np.maximum(np.abs(df["ind_gap"] - 2.25) - 0.75, df["heat_ref"] - 0.2)
df[["formula", "cif", "ind_gap", "heat_ref", "violation"]].to_csv(dst, index=False)
print(f"perov5: {len(df)} rows, {(df['violation'] <= 0).sum()} meet both criteria", file=sys.stderr)
EOF
    run perov5 "$OUT/perov5/pool.csv" formula violation "window:-inf:0" --structure-column cif
fi

want supercon_tc77 && run supercon_tc77 "$DATA/supercon/supercon-tc.csv" composition Tc window:77:inf
want supercon_top1pct && run supercon_top1pct "$DATA/supercon/supercon-tc.csv" composition Tc max

if want mp_gap_35k; then
    # The speed check on the largest pool: 35,000 distinct formulas drawn (seed 0) from the
    # Materials Project band gaps, the solar window 1.1-1.7 eV, budget 300, 5 seeds, every
    # strategy; 2 torch threads (the issue's 2-core machine), so "s/run" is the wall time a
    # user on 2 idle cores sees and "(CPU)" the process's CPU seconds. Run it alone.
    mkdir -p "$OUT/mp_gap_35k"
    "$PY" - "$DATA/mp/mp-bandgaps.csv" "$OUT/mp_gap_35k/pool.csv" <<'EOF'
import sys
import pandas as pd
from pymatgen.core import Composition
df = pd.read_csv(sys.argv[1], keep_default_na=False)  # "NaN" is sodium nitride
df["formula"] = [Composition(c).reduced_formula for c in df["composition"]]
df = df.drop_duplicates("formula").sample(n=35000, random_state=0)
df[["formula", "band_gap"]].to_csv(sys.argv[2], index=False)
print(f"mp_gap_35k: {len(df)} formulas", file=sys.stderr)
EOF
    run mp_gap_35k "$OUT/mp_gap_35k/pool.csv" formula band_gap window:1.1:1.7 --budget 300 --threads 2
fi

if want planning; then
    mkdir -p "$OUT/planning"
    for n in 10000 100000 1000000; do
        "$PY" "$ROOT/benchmarks/planning.py" --pool-size $n --json >> "$OUT/planning/planning.jsonl"
    done
    "$PY" "$ROOT/benchmarks/planning.py" --pool-size 20000 --baseline --json >> "$OUT/planning/planning.jsonl"
    cat "$OUT/planning/planning.jsonl"
fi
