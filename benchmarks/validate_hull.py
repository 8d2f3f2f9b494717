"""Validate MLIP stability predictions against the shipped reference hull.

For binary and ternary prototypes (rocksalt, zincblende, fluorite, antifluorite,
cubic perovskite) of Li Na K Rb Mg Ca Sr Ba Al Y Ti Zr Zn Cu Ag with O F Cl Br N whose reduced
formula is in the Materials Project snapshot, evaluate each with the MLIP tier exactly as a
campaign does (``MlipOracle``: FIRE + ``FrechetCellFilter``, fmax 0.05 eV/A, <= 300 steps;
formation energy on the MP2020 scale with MP's elemental reference energies, the MP2020
corrections only for SevenNet-0; shipped hull, no campaign phases), keep the lowest formation
energy per formula and place it on the shipped hull. Prints:

* formation-energy MAE against the lowest-energy snapshot phase of the same formula (MP2020
  scale), over all formulas and over hull vertices only (where the prototype is more often
  the ground-state structure);
* stable/unstable classification at E_hull <= 0 and <= 0.1 eV/atom, where a formula is
  "stable" in the reference when it is a vertex of the shipped hull (matbench-discovery's
  CHGNet F1 on WBM is about 0.6, as an anchor);
* the time taken.

The reference energies of non-hull formulas need the snapshot, so this script needs
``../shared/data/mp/mp-formation.csv`` (and, for the phases roost lacks, ``--matbench`` with the
crabnet 2.0.8 wheel; see ``scripts/build_reference_hull.py``)::

    python benchmarks/validate_hull.py --matbench /tmp/crabnet/crabnet-2.0.8-py3-none-any.whl
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MP = ROOT.parent / "shared" / "data" / "mp" / "mp-formation.csv"
CATIONS = "Li Na K Rb Mg Ca Sr Ba Al Y Ti Zr Zn Cu Ag".split()
ANIONS = "O F Cl Br N".split()
A_SITE = "Na K Rb Ca Sr Ba".split()


def _radius(symbol: str) -> float:
    from pymatgen.core import Element

    r = Element(symbol).atomic_radius
    return float(r) if r else 1.5


def prototypes():
    """(formula, prototype name, function building the pymatgen Structure) for every assignment of the pool.

    Binaries AX in rocksalt and zincblende (wurtzite is within a few meV/atom of zincblende),
    AX2 fluorite, A2X antifluorite, and cubic ABX3 perovskites with a large A cation.
    """
    from pymatgen.core import Lattice, Structure

    def cubic(group, a, species, coords):
        return lambda: Structure.from_spacegroup(group, Lattice.cubic(a), species, coords).get_primitive_structure()

    half, quarter = [[0, 0, 0], [0.5, 0.5, 0.5]], [[0, 0, 0], [0.25, 0.25, 0.25]]
    for a, x in itertools.product(CATIONS, ANIONS):
        d = _radius(a) + _radius(x)  # cation-anion distance from atomic radii; the relaxation fixes it
        yield f"{a}{x}", "rocksalt", cubic("Fm-3m", 2 * d, [a, x], half)
        yield f"{a}{x}", "zincblende", cubic("F-43m", 4 * d / math.sqrt(3), [a, x], quarter)
        yield f"{a}{x}2", "fluorite", cubic("Fm-3m", 4 * d / math.sqrt(3), [a, x], quarter)
        yield f"{a}2{x}", "antifluorite", cubic("Fm-3m", 4 * d / math.sqrt(3), [x, a], quarter)
    for a, b, x in itertools.product(A_SITE, CATIONS, ("O", "F", "Cl", "Br")):
        if a != b:
            ap = 2 * (_radius(b) + _radius(x))
            coords = [[0.5, 0.5, 0.5], [0, 0, 0], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]]
            yield f"{a}{b}{x}3", "perovskite", (lambda ap=ap, sp=[a, b, x, x, x], c=coords: Structure(Lattice.cubic(ap), sp, c))


def snapshot_energies(mp_formation: Path, matbench: Path | None):
    """Lowest legacy formation energy (eV/atom) per reduced formula of the MP snapshot, and the MP2020 shift."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from build_reference_hull import read_matbench, read_roost
    from pymatgen.core import Composition

    from matloop.oracles.hull import legacy_to_mp2020_shift_ev_per_atom

    rows = read_roost(mp_formation) + (read_matbench(matbench) if matbench else [])
    best: dict[str, float] = {}
    for comp, e, _ in rows:
        f = Composition(comp).reduced_formula
        best[f] = min(e, best.get(f, math.inf))
    return best, legacy_to_mp2020_shift_ev_per_atom


def classification(pred: list[bool], true: list[bool]) -> dict[str, float]:
    """Precision, recall and F1 of the positive (stable) class."""
    tp = sum(p and t for p, t in zip(pred, true))
    fp = sum(p and not t for p, t in zip(pred, true))
    fn = sum(t and not p for p, t in zip(pred, true))
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def main(argv: list[str] | None = None) -> int:
    """Relax the pool, print the figures; ``--json PATH`` writes them."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mp-formation", type=Path, default=DEFAULT_MP)
    parser.add_argument("--matbench", type=Path, help="crabnet 2.0.8 wheel or matbench mp_e_form.csv")
    parser.add_argument("--model", choices=("chgnet", "sevennet"), default="chgnet")
    parser.add_argument("--limit", type=int, default=0, help="at most this many formulas (0: all)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--fmax", type=float, default=0.05)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not args.mp_formation.exists():
        print(f"needs the MP snapshot at {args.mp_formation}", file=sys.stderr)
        return 2

    import torch
    from pymatgen.core import Composition

    from matloop.core.records import Candidate, Request
    from matloop.oracles.hull import ReferenceHull
    from matloop.oracles.mlip import MlipOracle

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    hull = ReferenceHull.shipped()
    vertices = {p.formula for p in hull.phases if p.on_hull}
    snapshot, shift = snapshot_energies(args.mp_formation, args.matbench)
    pool = [(f, name, build) for f, name, build in prototypes() if Composition(f).reduced_formula in snapshot]
    formulas = sorted({Composition(f).reduced_formula for f, _, _ in pool})
    if args.limit:
        formulas = formulas[: args.limit]
        pool = [p for p in pool if Composition(p[0]).reduced_formula in set(formulas)]
    print(f"{len(pool)} prototype structures for {len(formulas)} formulas in the snapshot; hull {hull.version}")

    oracle = MlipOracle(
        settings={
            "model": args.model,
            "fmax": args.fmax,
            "max_steps": args.steps,
            "hull": {"source": "shipped", "include_campaign_phases": False},
        },
        site={"device": "cpu"},
    )
    best: dict[str, dict] = {}
    for i, (formula, name, build) in enumerate(pool):
        f = Composition(formula).reduced_formula
        candidate = Candidate.from_structure(build(), source="validate_hull")
        obs = oracle.run(Request(f"validate-{i}", candidate, oracle.name, 0))
        if not obs.ok:  # a failed relaxation is reported, not fatal
            print(f"  {formula} {name}: failed ({obs.reason})")
            continue
        e_form = obs.properties["formation_energy_ev_per_atom"]
        if f not in best or e_form < best[f]["e_form"]:
            best[f] = {"e_form": e_form, "e_hull": obs.properties["e_above_hull_ev_per_atom"], "prototype": name}
        if (i + 1) % 25 == 0:
            print(f"  relaxed {i + 1}/{len(pool)} ({time.perf_counter() - t0:.0f} s)")

    rows = []
    for f, rec in sorted(best.items()):
        ref = snapshot[f] + shift(f)
        ref_stab = hull.stability(f, ref)
        rows.append(
            {
                "formula": f,
                "prototype": rec["prototype"],
                "e_form_pred": rec["e_form"],
                "e_form_ref": ref,
                "e_hull_pred": rec["e_hull"],
                "e_hull_ref": ref_stab.e_above_hull_ev_per_atom,
                "vertex": f in vertices,
            }
        )
    if not rows:
        print("nothing relaxed")
        return 1
    err = [abs(r["e_form_pred"] - r["e_form_ref"]) for r in rows]
    err_v = [abs(r["e_form_pred"] - r["e_form_ref"]) for r in rows if r["vertex"]]
    out = {
        "model": args.model,
        "n_formulas": len(rows),
        "n_stable_ref": sum(r["vertex"] for r in rows),
        "mae_ev_per_atom": sum(err) / len(err),
        "mae_vertices_ev_per_atom": sum(err_v) / len(err_v) if err_v else float("nan"),
        "median_abs_error_ev_per_atom": sorted(err)[len(err) // 2],
        "classification": {
            str(t): classification([r["e_hull_pred"] <= t for r in rows], [r["vertex"] for r in rows])
            for t in (0.0, 0.1)
        },
        "classification_ref_ehull_0.1": classification(
            [r["e_hull_pred"] <= 0.1 for r in rows], [r["e_hull_ref"] <= 0.1 for r in rows]
        ),
        "seconds": time.perf_counter() - t0,
        "hull_version": hull.version,
        "oracle_version": oracle.version,
        "rows": rows,
    }
    print(f"\n{'formula':<12} {'proto':<12} {'Ef pred':>8} {'Ef ref':>8} {'Eh pred':>8} {'Eh ref':>8} vertex")
    for r in rows:
        print(
            f"{r['formula']:<12} {r['prototype']:<12} {r['e_form_pred']:8.3f} {r['e_form_ref']:8.3f} "
            f"{r['e_hull_pred']:8.3f} {r['e_hull_ref']:8.3f} {'yes' if r['vertex'] else ''}"
        )
    print(
        f"\n{args.model}: {out['n_formulas']} formulas ({out['n_stable_ref']} hull vertices), formation-energy MAE "
        f"{out['mae_ev_per_atom']:.3f} eV/atom (vertices only {out['mae_vertices_ev_per_atom']:.3f}, "
        f"median {out['median_abs_error_ev_per_atom']:.3f})"
    )
    for t, c in out["classification"].items():
        print(
            f"stable if E_hull <= {t} eV/atom (truth: hull vertex): precision {c['precision']:.2f} "
            f"recall {c['recall']:.2f} F1 {c['f1']:.2f} (tp {c['tp']}, fp {c['fp']}, fn {c['fn']})"
        )
    c = out["classification_ref_ehull_0.1"]
    print(
        f"E_hull <= 0.1 vs reference E_hull <= 0.1: precision {c['precision']:.2f} "
        f"recall {c['recall']:.2f} F1 {c['f1']:.2f}"
    )
    print(f"{out['seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
