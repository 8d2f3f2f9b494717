"""A cheap fidelity for the Castelli perovskites: CHGNet formation energies through the MLIP oracle.

For every structure of perov5's validation and test splits (7,572 rows, the pool of the
single-fidelity perov5 benchmark) the ``mlip`` oracle (CHGNet, ``relax: false``: the CIFs are
already DFT-relaxed) reports ``formation_energy_ev_per_atom`` on the MP2020 scale. The output
CSV pairs it with Castelli's GPAW ``heat_ref`` so that ``matloop benchmark`` can measure the
multi-fidelity agent on a pair whose cheap tier is informative (CHGNet vs DFT heats)::

    python benchmarks/perov5_chgnet.py ../shared/data/perov5 runs/benchmarks/perov5_mf/pool.csv
    matloop benchmark --dataset runs/benchmarks/perov5_mf/pool.csv --composition-column formula \\
        --cheap-column chgnet_eform --target-column heat_ref --goal min --costs 1,10 --budget 3000 \\
        --out runs/benchmarks/perov5_mf

Rows whose evaluation fails are written with an empty ``chgnet_eform`` and counted on stderr.
Polymorphs sharing a composition are merged by the benchmark (best ``heat_ref`` kept).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Write ``formula, heat_ref, ind_gap, chgnet_eform`` for every perov5 val/test row."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("perov5_dir", type=Path, help="folder with perov5's val.csv and test.csv")
    ap.add_argument("out", type=Path, help="CSV to write")
    ap.add_argument("--limit", type=int, default=None, help="first N rows only (a smoke run)")
    a = ap.parse_args(argv)
    import pandas as pd
    from pymatgen.core import Structure

    from matloop.core.records import Candidate
    from matloop.oracles.mlip import MlipOracle

    files = [a.perov5_dir / "val.csv", a.perov5_dir / "test.csv"]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        print(f"perov5_chgnet: missing {', '.join(missing)}", file=sys.stderr)
        return 2
    df = pd.concat([pd.read_csv(f) for f in files], ignore_index=True)
    if a.limit:
        df = df.head(a.limit)
    oracle = MlipOracle(settings={"relax": False, "hull": {"source": "shipped"}})
    a.out.parent.mkdir(parents=True, exist_ok=True)
    t0, failed = time.perf_counter(), 0
    with a.out.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["formula", "heat_ref", "ind_gap", "chgnet_eform"])
        for k, row in enumerate(df.itertuples(index=False)):
            s = Structure.from_str(row.cif, fmt="cif")
            try:
                e = oracle.evaluate(Candidate.from_structure(s, source="perov5")).properties[
                    "formation_energy_ev_per_atom"]
            except Exception as exc:  # a failed row is written empty and counted, as the oracle tier would record it
                print(f"row {k} ({s.composition.reduced_formula}): {exc}", file=sys.stderr)
                e = None
            failed += e is None
            w.writerow([s.composition.reduced_formula, row.heat_ref, row.ind_gap, "" if e is None else f"{e:.5f}"])
            if (k + 1) % 500 == 0:
                print(f"{k + 1}/{len(df)} rows, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    print(f"perov5_chgnet: {len(df)} rows, {failed} failed, {time.perf_counter() - t0:.0f} s -> {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
