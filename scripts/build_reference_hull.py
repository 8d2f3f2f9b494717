"""Build the reference convex hull shipped in ``oracles/data/mp_hull.csv.gz``.

    python scripts/build_reference_hull.py ../shared/data/mp/mp-formation.csv \\
        --matbench /tmp/crabnet/crabnet-2.0.8-py3-none-any.whl

Inputs (both the same pre-2021 Materials Project snapshot, legacy-corrected formation
energies in eV/atom):

* ``mp-formation.csv`` (CompRhys/roost @553aeb38): ``task_id,composition,formation_energy_per_atom``,
  84,294 entries with ids, but without many common phases (NaCl, LiF, MgO, CaF2, the elements).
* ``--matbench``: matbench ``mp_e_form`` (132,752 entries, ``formula,target``, no ids), as
  shipped in the crabnet 2.0.8 wheel at ``crabnet/data/matbench/mp_e_form.csv`` (get it with
  ``pip download crabnet==2.0.8 --no-deps --python-version 3.10 --only-binary=:all: -d /tmp/crabnet``);
  the wheel or the extracted CSV both work. Without it the hull misses those phases and the
  script says so.

Steps: lowest energy per reduced formula (the roost id is attached where the energies agree);
every energy moved from the legacy scale onto MP2020 (``legacy_to_mp2020_shift_ev_per_atom``);
then, per chemical system in order of size, a pymatgen ``PhaseDiagram`` of its own entries plus
the hull phases of all its subsystems (only those can shape its hull) and the elements at 0;
a phase is kept when its energy above the hull is <= 1e-6 eV/atom. A few battery partner
phases (``--partners``) are kept with ``on_hull=0`` even when above the hull, so that interface
reactions against them can be computed.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import itertools
import sys
import time
import warnings
import zipfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "oracles" / "data" / "mp_hull.csv.gz"
SOURCE = "mp-2019-snapshot"
PARTNERS = (
    "LiCoO2 Li7La3Zr2O12 Li3PS4 Li6PS5Cl Li10GeP2S12 LiMn2O4 LiFePO4 Li4Ti5O12 LiNbO3 Li3PO4 "
    "Li3InCl6 Li3YCl6 Li2S Li3N LiPF6 Li2CO3 LiNiO2 LiMnO2 Al2O3 ZrO2 TiO2"
).split()
TOL = 1e-6


def read_roost(path: Path) -> list[tuple[str, float, str]]:
    """(composition, legacy formation energy eV/atom, task id) rows of roost's mp-formation.csv."""
    # the csv module, not pandas: the formula NaN (sodium nitride) must stay a string
    with open(path, newline="") as fh:
        return [(r["composition"], float(r["formation_energy_per_atom"]), r["task_id"]) for r in csv.DictReader(fh)]


def read_matbench(path: Path) -> list[tuple[str, float, str]]:
    """(formula, legacy formation energy eV/atom, "") rows of matbench mp_e_form (CSV or crabnet wheel)."""
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as zf:
            text = zf.read("crabnet/data/matbench/mp_e_form.csv").decode()
    else:
        text = path.read_text()
    return [(r["formula"], float(r["target"]), "") for r in csv.DictReader(io.StringIO(text))]


def main(argv: list[str] | None = None) -> int:
    """Build the table; prints counts and timings."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mp_formation", type=Path, help="roost mp-formation.csv")
    parser.add_argument("--matbench", type=Path, help="crabnet-2.0.8 wheel or matbench mp_e_form.csv")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--partners", nargs="*", default=PARTNERS, help="formulas kept even above the hull")
    args = parser.parse_args(argv)

    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
    from pymatgen.core import Composition

    from matloop.oracles.hull import legacy_to_mp2020_shift_ev_per_atom

    t0 = time.perf_counter()
    rows = read_roost(args.mp_formation)
    n_roost = len(rows)
    if args.matbench:
        rows += read_matbench(args.matbench)
    else:
        print(
            "WARNING: no --matbench table: the roost snapshot lacks many common phases (NaCl, LiF, MgO, "
            "the elements), so the hull will be wrong in those systems",
            file=sys.stderr,
        )
    print(f"read {n_roost:,} roost + {len(rows) - n_roost:,} matbench entries ({time.perf_counter() - t0:.0f} s)")

    # lowest legacy energy per reduced formula; ids from roost where its energy matches
    best: dict[str, list] = {}  # formula -> [e_legacy, id]
    ids: dict[tuple[str, float], str] = {}
    elements: set[str] = set()
    for comp_text, e, task_id in rows:
        comp = Composition(comp_text)
        formula = comp.reduced_formula
        elements |= {str(el) for el in comp.elements}
        if task_id:
            ids.setdefault((formula, round(e, 6)), task_id)
        if formula not in best or e < best[formula][0]:
            best[formula] = [e, task_id]
    for formula, rec in best.items():
        rec[1] = rec[1] or ids.get((formula, round(rec[0], 6)), "")
    for el in elements:  # elements at 0 by definition of the formation energy (O -> "O2")
        f = Composition(el).reduced_formula
        if f not in best or best[f][0] > 0:
            best[f] = [0.0, ""]
    print(f"{len(best):,} reduced formulas over {len(elements)} elements ({time.perf_counter() - t0:.0f} s)")

    # onto the MP2020 scale
    e2020: dict[str, float] = {}
    for i, (formula, (e, _)) in enumerate(best.items()):
        e2020[formula] = e + legacy_to_mp2020_shift_ev_per_atom(formula)
        if i and i % 20000 == 0:
            print(f"  rescaled {i:,} ({time.perf_counter() - t0:.0f} s)")
    print(f"moved onto MP2020 ({time.perf_counter() - t0:.0f} s)")

    # hull per chemical system, smallest first, each fed with the hull phases of its subsystems
    by_system: dict[frozenset, list[str]] = defaultdict(list)
    for formula in best:
        by_system[frozenset(str(el) for el in Composition(formula).elements)].append(formula)
    stable: dict[frozenset, list[tuple[str, float]]] = {}
    e_hull: dict[str, float] = {}
    warnings.simplefilter("ignore")
    for n_done, system in enumerate(sorted(by_system, key=lambda s: (len(s), sorted(s)))):
        own = [(f, e2020[f]) for f in by_system[system]]
        if len(system) == 1:
            (el,) = system
            stable[system] = [(Composition(el).reduced_formula, 0.0)]
            for f, e in own:
                e_hull[f] = e
            continue
        pool = list(own)
        for r in range(1, len(system)):
            for sub in itertools.combinations(sorted(system), r):
                pool += stable.get(frozenset(sub), [(sub[0], 0.0)] if r == 1 else [])
        entries = [PDEntry(Composition(f), e * Composition(f).num_atoms, name=f) for f, e in pool]
        pd = PhaseDiagram(entries)
        keep = []
        for entry in entries[: len(own)]:
            eh = float(pd.get_e_above_hull(entry, allow_negative=True))
            e_hull[entry.name] = eh
            if eh <= TOL:
                keep.append((entry.name, e2020[entry.name]))
        stable[system] = keep
        if n_done and n_done % 10000 == 0:
            print(f"  {n_done:,}/{len(by_system):,} chemical systems ({time.perf_counter() - t0:.0f} s)")
    kept = sorted(f for phases in stable.values() for f, _ in phases)
    partners = []
    for p in args.partners:
        f = Composition(p).reduced_formula
        if f in best and f not in set(kept):
            partners.append(f)
        elif f not in best:
            print(f"partner {f} is not in the snapshot")
    print(
        f"kept {len(kept):,} hull phases of {len(best):,} formulas in {len(by_system):,} chemical systems, "
        f"plus {len(partners)} partner phases above the hull ({time.perf_counter() - t0:.0f} s)"
    )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    buf.write(f"# {SOURCE}\n")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["formula", "formation_energy_ev_per_atom", "legacy_formation_energy_ev_per_atom", "id", "on_hull"])
    for f in kept:
        writer.writerow([f, f"{e2020[f]:.5f}", f"{best[f][0]:.5f}", best[f][1], 1])
    for f in sorted(partners):
        writer.writerow([f, f"{e2020[f]:.5f}", f"{best[f][0]:.5f}", best[f][1], 0])
    # mtime=0: the same input gives the same bytes
    args.out.write_bytes(gzip.compress(buf.getvalue().encode(), compresslevel=9, mtime=0))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB) in {time.perf_counter() - t0:.0f} s")
    for f in ("NaCl", "LiF", "Li2O", "CaF2", "Fe2O3", "Li3PS4", "Li7La3Zr2O12", "LiCoO2"):
        if f in best:
            print(f"  {f}: E_hull {e_hull.get(f, float('nan')):+.3f} eV/atom, e_form {e2020[f]:.3f} (legacy {best[f][0]:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
