"""Validate the MLIP tiers against reference data.

1. ``MlipOracle`` (CHGNet) formation energies of simple binaries (built from their prototypes and
   relaxed) against the Materials Project values in ``mp/mp-formation.csv``: per compound
   and the mean absolute error.
2. ``MlipMdOracle`` Li migration energy of a known conductor against its experimental
   activation energy, and the predicted 300 K conductivity against the OBELiX measurement.

Prints a table and a JSON document (``--json PATH`` also writes it). The default MD run is
short enough for a laptop and usually ends in "too few hops"; on a GPU use, e.g.::

    python benchmarks/validate_mlip.py --device cuda --steps 20000 --equilibration 2000 \\
        --temperatures 600 700 800 900 --supercell-min-atoms 128
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"

# formula -> (Materials Project id in mp-formation.csv, prototype, lattice constant(s) in A)
BINARIES = {
    "Li2O": ("mp-1960", "antifluorite", 4.61),
    "Na2O": ("mp-2352", "antifluorite", 5.55),
    "Li2S": ("mp-1153", "antifluorite", 5.71),
    "MgS": ("mp-1315", "rocksalt", 5.20),
    "LiH": ("mp-23703", "rocksalt", 4.08),
    "Li3N": ("mp-2251", "li3n", (3.65, 3.88)),
}

# experimental Li activation energies (eV) and where they come from
CONDUCTORS = {
    "Li3N": {
        "ea_ev": 0.29,
        "source": "Alpen et al., Appl. Phys. Lett. 30, 621 (1977): 0.29 eV perpendicular to c",
        "obelix_id": "gvd",
        "melting_k": 1086,
    },
    "Li7P3S11": {
        "ea_ev": 0.18,
        "source": "Seino et al., Energy Environ. Sci. 7, 627 (2014): 0.17-0.18 eV",
        "obelix_id": "mdp",
        "melting_k": None,
    },
}


def prototype(formula: str, kind: str, a):
    from pymatgen.core import Composition, Lattice, Structure

    els = [str(e) for e in Composition(formula).elements]
    if kind == "rocksalt":
        s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), els, [[0, 0, 0], [0.5, 0.5, 0.5]])
    elif kind == "antifluorite":
        cation, anion = sorted(els, key=lambda e: -Composition(formula)[e])
        s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [anion, cation], [[0, 0, 0], [0.25, 0.25, 0.25]])
    elif kind == "li3n":
        s = li3n(*a)
    else:
        raise ValueError(kind)
    return s.get_primitive_structure()


def li3n(a: float = 3.648, c: float = 3.875):
    """alpha-Li3N, P6/mmm: N at 1a, Li(1) at 1b, Li(2) at 2c."""
    from pymatgen.core import Lattice, Structure

    return Structure.from_spacegroup(
        "P6/mmm", Lattice.hexagonal(a, c), ["N", "Li", "Li"], [[0, 0, 0], [0, 0, 0.5], [1 / 3, 2 / 3, 0]]
    )


def obelix_structure(data_dir: Path, entry_id: str):
    """The structure of one OBELiX entry from ``all_cifs.tar.gz``, or None when absent."""
    from pymatgen.core import Structure

    tar = data_dir / "obelix" / "all_cifs.tar.gz"
    if not tar.exists():
        return None
    with tarfile.open(tar) as tf:
        try:
            member = tf.getmember(f"all_randomized_cifs/{entry_id}.cif")
        except KeyError:
            return None
        text = tf.extractfile(member).read().decode()
    return Structure.from_str(text, fmt="cif")


def obelix_conductivity(data_dir: Path, entry_id: str) -> float | None:
    import pandas as pd

    path = data_dir / "obelix" / "all.csv"
    if not path.exists():
        return None
    df = pd.read_csv(path)
    row = df[df.ID == entry_id]
    if row.empty:
        return None
    try:
        return float(row["Ionic conductivity (S cm-1)"].iloc[0])
    except ValueError:
        return None


def formation_benchmark(data_dir: Path, device: str, cache_dir: str | None) -> dict:
    import pandas as pd

    from matloop.oracles.mlip import MlipOracle
    from matloop.core.records import Candidate, Request

    csv = data_dir / "mp" / "mp-formation.csv"
    if not csv.exists():
        return {"skipped": f"{csv} not found"}
    table = pd.read_csv(csv).set_index("task_id")
    oracle = MlipOracle(site={"device": device, "cache_dir": cache_dir})
    rows = []
    for formula, (mp_id, kind, a) in BINARIES.items():
        if mp_id not in table.index:
            continue
        cand = Candidate.from_structure(prototype(formula, kind, a), source="benchmark")
        t0 = time.perf_counter()
        obs = oracle.run(Request("bench-" + formula, cand, oracle.name, 0))
        rows.append(
            {
                "formula": formula,
                "mp_id": mp_id,
                "mp_ev_per_atom": float(table.loc[mp_id, "formation_energy_per_atom"]),
                "chgnet_ev_per_atom": obs.properties.get("formation_energy_ev_per_atom") if obs.ok else None,
                "error": None if obs.ok else obs.reason,
                "seconds": round(time.perf_counter() - t0, 2),
            }
        )
    errs = [abs(r["chgnet_ev_per_atom"] - r["mp_ev_per_atom"]) for r in rows if r["chgnet_ev_per_atom"] is not None]
    return {"rows": rows, "mae_ev_per_atom": sum(errs) / len(errs) if errs else None, "n": len(errs)}


def md_benchmark(args) -> dict:
    from matloop.oracles.md import MlipMdOracle
    from matloop.core.records import Candidate, Request

    ref = CONDUCTORS[args.material]
    structure = obelix_structure(args.data_dir, ref["obelix_id"])
    source = f"OBELiX {ref['obelix_id']}"
    if structure is None:
        if args.material != "Li3N":
            return {"skipped": f"no OBELiX CIF for {args.material} under {args.data_dir}"}
        structure, source = li3n(), "pymatgen P6/mmm prototype"
    settings = {
        "model": args.model,
        "temperatures_k": args.temperatures,
        "supercell_min_atoms": args.supercell_min_atoms,
        "equilibration_steps": args.equilibration,
        "production_steps": args.steps,
        "sample_every_steps": max(1, min(10, args.steps // 50)),
        "min_hops": args.min_hops,
    }
    oracle = MlipMdOracle(settings=settings, site={"device": args.device, "torch_threads": args.threads})
    t0 = time.perf_counter()
    obs = oracle.run(Request("bench-md", Candidate.from_structure(structure, source="benchmark"), oracle.name, 0))
    out = {
        "material": args.material,
        "structure_source": source,
        "settings": settings,
        "experimental_ea_ev": ref["ea_ev"],
        "experimental_source": ref["source"],
        "obelix_conductivity_s_per_cm": obelix_conductivity(args.data_dir, ref["obelix_id"]),
        "status": obs.status.value,
        "reason": obs.reason,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    if obs.ok:
        out.update(
            {
                "migration_energy_ev": obs.properties["migration_energy_ev"],
                "migration_energy_sigma_ev": obs.uncertainties.get("migration_energy_ev"),
                "ea_error_ev": obs.properties["migration_energy_ev"] - ref["ea_ev"],
                "conductivity_s_per_cm_300k": obs.properties["conductivity_s_per_cm_300k"],
                "diffusivity_cm2_per_s_300k": obs.properties["diffusivity_cm2_per_s_300k"],
                "temperatures": obs.extra["temperatures"],
                "arrhenius": obs.extra["arrhenius"],
                "n_atoms": obs.extra["n_atoms"],
            }
        )
    if ref["melting_k"] and max(args.temperatures) >= ref["melting_k"]:
        out["warning"] = f"{args.material} melts near {ref['melting_k']} K; keep temperatures below it"
    return out


def print_tables(result: dict) -> None:
    fe = result.get("formation")
    if fe and "rows" in fe:
        print(f"{'formula':8} {'mp-id':10} {'MP':>8} {'CHGNet':>8} {'|err|':>7} {'s':>6}")
        for r in fe["rows"]:
            c = r["chgnet_ev_per_atom"]
            err = f"{abs(c - r['mp_ev_per_atom']):7.3f}" if c is not None else "   fail"
            cs = f"{c:8.3f}" if c is not None else "    fail"
            print(f"{r['formula']:8} {r['mp_id']:10} {r['mp_ev_per_atom']:8.3f} {cs} {err} {r['seconds']:6.1f}")
        if fe["mae_ev_per_atom"] is not None:
            print(f"MAE {fe['mae_ev_per_atom']:.3f} eV/atom over {fe['n']} binaries (formation energy, eV/atom)\n")
    elif fe:
        print(f"formation benchmark skipped: {fe['skipped']}\n")
    md = result.get("md")
    if md and "skipped" not in md:
        print(f"MLIP-MD {md['material']} ({md['structure_source']}), {md['wall_s']} s: {md['status']}")
        for r in md.get("temperatures", []):
            print(
                f"  {r['temperature_k']:6.0f} K (mean {r['mean_temperature_k']:6.0f}): D = {r['diffusivity_cm2_per_s']:.3e}"
                f" +- {r['sigma_cm2_per_s']:.1e} cm2/s, {r['n_hops']:.1f} hops {r['flag'] or ''}"
            )
        if md["status"] == "success":
            print(
                f"  Ea = {md['migration_energy_ev']:.3f} +- {md['migration_energy_sigma_ev']:.3f} eV"
                f" (experiment {md['experimental_ea_ev']} eV); sigma(300 K) = {md['conductivity_s_per_cm_300k']:.2e} S/cm"
                f" (OBELiX {md['obelix_conductivity_s_per_cm']})"
            )
        else:
            print(f"  {md['reason']}")
        if md.get("warning"):
            print(f"  warning: {md['warning']}")
    elif md:
        print(f"MD benchmark skipped: {md['skipped']}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="shared data folder (mp/, obelix/)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--threads", type=int, default=1, help="torch/BLAS CPU threads")
    p.add_argument("--cache-dir", default=None, help="cache root (references in <root>/mlip-references; default ~/.cache/matloop)")
    p.add_argument("--model", default="chgnet", help="MD model: chgnet[:name] or sevennet[:name]")
    p.add_argument("--material", choices=sorted(CONDUCTORS), default="Li3N")
    p.add_argument("--steps", type=int, default=300, help="MD production steps per temperature")
    p.add_argument("--equilibration", type=int, default=50, help="MD equilibration steps per temperature")
    p.add_argument("--temperatures", type=float, nargs="+", default=[800.0, 1000.0])
    p.add_argument("--supercell-min-atoms", type=int, default=32)
    p.add_argument("--min-hops", type=float, default=20.0)
    p.add_argument("--skip-formation", action="store_true")
    p.add_argument("--skip-md", action="store_true")
    p.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args(argv)

    result: dict = {}
    if not args.skip_formation:
        result["formation"] = formation_benchmark(args.data_dir, args.device, args.cache_dir)
    if not args.skip_md:
        result["md"] = md_benchmark(args)
    print_tables(result)
    text = json.dumps(result, indent=1, default=lambda o: None if isinstance(o, float) and math.isnan(o) else str(o))
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
