"""Validate the migration-energy tiers on the seed's Table 1 Li conductors (OBELiX structures).

For each of the seven materials and each requested tier (``neb``: ``mlip-neb``; ``md``:
``mlip-md`` with pretrained CHGNet; ``lotf``: the same ``mlip-md`` run with ``finetune.enabled``,
i.e. CHGNet fine-tuned after equilibration on the frames where it and SevenNet disagree,
labelled by GPAW PBE single points: ``matloop.oracles.finetune``) it
evaluates the OBELiX CIF as a user would (``matloop evaluate --oracle ...``: the oracle
orders disordered structures and relaxes before the barrier or the MD) and prints the migration energy with its error, the
wall time, and per tier the mean absolute error against experiment next to the seed's AIMD
(0.32 eV) and LOTF-MD (0.13 eV). A failed evaluation is shown with its reason and left out of
that tier's MAE (the count of materials in the MAE is printed with it).

Settings per tier are given as ``--neb-set KEY=VALUE`` / ``--md-set KEY=VALUE`` /
``--lotf-set KEY=VALUE`` (YAML values, dotted keys for nested settings); ``--md-set`` applies to
the ``lotf`` tier too, so ``--tiers md lotf`` prints pretrained and fine-tuned values side by
side from the same MD settings. The defaults below are sized for a 2-core CPU, not for
accuracy. For ``lotf`` the fine-tuning round (labelled frames, force error before and after,
the fine-tuned version, cached or not) is printed per material. Example::

    nice -n 10 python benchmarks/validate_migration.py --tiers neb --json neb.json
    python benchmarks/validate_migration.py --tiers md --ids mdp nhq --md-set production_steps=4000
    python benchmarks/validate_migration.py --tiers md lotf --ids nhq --lotf-set finetune.label=partner
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"

#: the seed's Table 1: OBELiX id -> (material, experimental activation energy in eV)
TABLE1 = {
    "ur9": ("LiZr2(PO4)3", 0.59),
    "e6b": ("Li4GeS4", 0.52),
    "dth": ("Li4GeO4", 0.86),  # midpoint of 0.82-0.90
    "47i": ("Li4P2O7", 0.95),
    "mdp": ("Li7P3S11", 0.18),
    "bjw": ("Li2MnCl4", 0.63),
    "nhq": ("beta-Li3PS4", 0.16),
}
#: the seed's mean absolute errors over Table 1 (eV)
SEED_MAE = {"AIMD": 0.32, "LOTF-MD": 0.13}

_MD = {"temperatures_k": [700.0, 900.0, 1100.0], "equilibration_steps": 200, "production_steps": 1500,
       "supercell_min_atoms": 60}
TIERS = {
    "neb": ("mlip-neb", {"n_images": 3, "fmax": 0.1, "max_steps": 100, "relax_max_steps": 150, "max_hops": 8}),
    "md": ("mlip-md", _MD),
    "lotf": ("mlip-md", {**_MD, "finetune": {"enabled": True}}),
}


def obelix_structure(data_dir: Path, entry_id: str):
    """The structure of one OBELiX entry from ``obelix/all_cifs.tar.gz`` (see the data README)."""
    from pymatgen.core import Structure

    with tarfile.open(data_dir / "obelix" / "all_cifs.tar.gz") as tf:
        text = tf.extractfile(tf.getmember(f"all_randomized_cifs/{entry_id}.cif")).read().decode()
    return Structure.from_str(text, fmt="cif")


def parse_sets(items: list[str]) -> dict:
    """``KEY=VALUE`` pairs with YAML values (dotted keys for nested settings)."""
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            sys.exit(f"--set {item!r}: expected KEY=VALUE")
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return out


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def evaluate(job: tuple) -> dict:
    """One material on one tier (runs in a worker process)."""
    from matloop.core.records import Candidate, Request
    from matloop.core.registry import oracle_class

    tier, kind, settings, entry_id, data_dir, site = job
    oracle = oracle_class(kind)(name=f"{tier}", settings=settings, site=site)
    candidate = Candidate.from_structure(obelix_structure(Path(data_dir), entry_id), source=f"obelix:{entry_id}")
    t0 = time.perf_counter()
    obs = oracle.run(Request(Request.make_id(candidate.id, oracle.name, 0), candidate, oracle.name, 0))
    extra = obs.extra or {}
    return {
        "tier": tier,
        "id": entry_id,
        "material": TABLE1[entry_id][0],
        "experiment_ev": TABLE1[entry_id][1],
        "status": obs.status.value if hasattr(obs.status, "value") else str(obs.status),
        "migration_energy_ev": obs.properties.get("migration_energy_ev"),
        "sigma_ev": obs.uncertainties.get("migration_energy_ev"),
        "reason": obs.reason,
        "wall_s": time.perf_counter() - t0,
        "version": oracle.version,
        "dimensionality": extra.get("dimensionality"),
        "ordering": extra.get("ordering"),
        "hops": [
            {k: h.get(k) for k in ("distance_a", "barrier_ev", "converged", "failed", "skipped")}
            for h in extra.get("hops", [])
        ],
        "temperatures": [
            {k: t.get(k) for k in ("temperature_k", "n_hops", "diffusivity_cm2_per_s", "flag")}
            for t in extra.get("temperatures", [])
        ],
        "model": extra.get("model"),
        "finetune": extra.get("finetune"),
    }


def table(rows: list[dict], tiers: list[str]) -> str:
    """The per-material table and the MAE lines."""
    lines = [f"{'id':4} {'material':13} {'exp':>5}  " + "  ".join(f"{t + ' (eV)':>17} {'wall':>6}" for t in tiers)]
    by = {(r["tier"], r["id"]): r for r in rows}
    for entry_id, (material, exp) in TABLE1.items():
        cells = []
        for t in tiers:
            r = by.get((t, entry_id))
            if r is None:
                cells.append(f"{'not run':>17} {'':>6}")
            elif r["migration_energy_ev"] is None:
                cells.append(f"{'failed':>17} {r['wall_s']:5.0f}s")
            else:
                err = f"±{r['sigma_ev']:.2f}" if r["sigma_ev"] is not None else ""
                dim = f" {r['dimensionality']}" if r.get("dimensionality") else ""
                cells.append(f"{r['migration_energy_ev']:6.3f}{err:>6}{dim:>5} {r['wall_s']:5.0f}s")
        lines.append(f"{entry_id:4} {material:13} {exp:5.2f}  " + "  ".join(cells))
    lines.append("")
    for t in tiers:
        ok = [r for r in rows if r["tier"] == t and r["migration_energy_ev"] is not None]
        if ok:
            mae = sum(abs(r["migration_energy_ev"] - r["experiment_ev"]) for r in ok) / len(ok)
            lines.append(f"MAE {t}: {mae:.3f} eV over {len(ok)}/{len(TABLE1)} materials "
                         f"(seed: AIMD {SEED_MAE['AIMD']}, LOTF-MD {SEED_MAE['LOTF-MD']})")
        else:
            lines.append(f"MAE {t}: no values")
    for r in rows:
        ft = r.get("finetune")
        if ft:
            lines.append(f"{r['tier']} {r['id']}: " + (ft["skipped"] if "skipped" in ft else (
                f"fine-tuned {ft['version']} ({'cached' if ft['cached'] else 'trained'}) on "
                f"{len(ft['frames_labelled'])}/{ft['frames_considered']} frames ({ft['label']} labels, "
                f"disagreement {ft['frames_labelled'][0]['disagreement_ev_per_a']:.2f}-"
                f"{ft['frames_labelled'][-1]['disagreement_ev_per_a']:.2f} eV/A); force MAE on them "
                f"{ft['force_mae_before_ev_per_a']:.3f} -> {ft['force_mae_after_ev_per_a']:.3f} eV/A; "
                f"labels {ft['label_s']:.0f} s, training {ft['train_s']:.0f} s")))
    for r in rows:
        if r["reason"]:
            lines.append(f"{r['tier']} {r['id']}: {r['reason'][:300]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="shared data folder holding obelix/")
    p.add_argument("--tiers", nargs="+", choices=sorted(TIERS), default=["neb"])
    p.add_argument("--ids", nargs="+", choices=sorted(TABLE1), default=list(TABLE1))
    p.add_argument("--neb-set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--md-set", action="append", default=[], metavar="KEY=VALUE",
                   help="mlip-md setting of the md and lotf tiers")
    p.add_argument("--lotf-set", action="append", default=[], metavar="KEY=VALUE",
                   help="setting of the lotf tier only, after --md-set (e.g. finetune.label=partner)")
    p.add_argument("--cache-dir", default=None, help="site cache_dir (fine-tuned CHGNet weights); default ~/.cache/matloop")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--threads", type=int, default=1, help="torch/BLAS threads per worker")
    p.add_argument("--jobs", type=int, default=1, help="materials evaluated in parallel (processes)")
    p.add_argument("--json", type=Path, default=None, help="append each result as a JSON line here")
    a = p.parse_args(argv)
    if not (a.data_dir / "obelix" / "all_cifs.tar.gz").exists():
        print(f"{a.data_dir / 'obelix' / 'all_cifs.tar.gz'}: not found (give --data-dir)", file=sys.stderr)
        return 2
    site = {"device": a.device, "torch_threads": a.threads, "cache_dir": a.cache_dir}
    md_sets = parse_sets(a.md_set)
    sets = {"neb": parse_sets(a.neb_set), "md": md_sets, "lotf": _merge(md_sets, parse_sets(a.lotf_set))}
    jobs = [(t, TIERS[t][0], _merge(TIERS[t][1], sets[t]), i, str(a.data_dir), site) for t in a.tiers for i in a.ids]
    rows = []
    with ProcessPoolExecutor(max_workers=a.jobs) as pool:
        for future in as_completed([pool.submit(evaluate, job) for job in jobs]):
            row = future.result()
            rows.append(row)
            val = row["migration_energy_ev"]
            print(f"{row['tier']} {row['id']} {row['material']}: "
                  f"{'%.3f eV' % val if val is not None else 'failed'} (exp {row['experiment_ev']}) "
                  f"in {row['wall_s']:.0f} s", flush=True)
            if a.json:
                with a.json.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
    print()
    print(table(rows, a.tiers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
