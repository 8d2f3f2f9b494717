"""Benchmark of the candidate generators on the perov5 set (Castelli cubic perovskites).

A campaign pool of perov5 structures (fitness = -heat_ref, i.e. more stable is fitter) feeds
``MutationGenerator`` and ``VaeGenerator``; ``OptimadeGenerator`` enumerates other perov5
structures served by optimade-python-tools' reference server on 127.0.0.1. For each source
it reports, over every proposal it made:

* validity: valid / attempted (``ValidityFilter`` defaults);
* uniqueness: distinct among themselves / valid (``StructureMatcher``);
* novelty: new to the campaign pool / unique.

It also runs iMatGen's rediscovery test for the VAE on a random perov5 subset.

Usage: ``python benchmarks/generators.py --json [--data /path/to/perov5] [--seed 0]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "perov5"


def log(msg: str) -> None:
    print(f"[generators] {msg}", file=sys.stderr, flush=True)


def load_perov5(folder: Path, rng: np.random.Generator, n: int, files=("val.csv", "test.csv")):
    """``n`` random rows of the given perov5 files as (Structure, heat_ref) pairs."""
    import pandas as pd
    from pymatgen.core import Structure

    frames = [pd.read_csv(folder / f) for f in files if (folder / f).exists()]
    if not frames:
        raise SystemExit(f"no perov5 files {files} in {folder}")
    df = pd.concat(frames, ignore_index=True)
    idx = rng.choice(len(df), size=min(n, len(df)), replace=False)
    return [(Structure.from_str(df.cif.iloc[i], fmt="cif"), float(df.heat_ref.iloc[i])) for i in idx]


def rates(stats) -> dict:
    a, v, u, nv = (int(stats.get(k, 0)) for k in ("attempted", "valid", "unique", "novel"))
    return {
        "attempted": a,
        "valid": v,
        "unique": u,
        "novel": nv,
        "validity": round(v / a, 4) if a else None,
        "uniqueness": round(u / v, 4) if v else None,
        "novelty": round(nv / u, 4) if u else None,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object (the only output on stdout)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder holding perov5 val.csv and test.csv")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pool", type=int, default=200, help="campaign pool size (structures with fitness)")
    ap.add_argument("--n", type=int, default=100, help="candidates requested from each generator")
    ap.add_argument("--served", type=int, default=300, help="structures served by the local OPTIMADE provider")
    ap.add_argument("--rediscovery-structures", type=int, default=1000)
    ap.add_argument("--holdout", type=float, default=0.1)
    ap.add_argument("--samples", type=int, default=2000, help="VAE samples drawn in the rediscovery test")
    args = ap.parse_args(argv)

    from matloop.core.protocols import CampaignState
    from matloop.agents.generation.enumeration import OptimadeGenerator, reference_server
    from matloop.agents.generation.mutation import MutationGenerator
    from matloop.agents.generation.vae import VaeGenerator, rediscovery
    from matloop.core.records import Candidate

    t_start = time.perf_counter()
    root = np.random.default_rng(args.seed)
    r_pool, r_mut, r_vae, r_red = root.spawn(4)
    if not (args.data / "val.csv").exists():
        raise SystemExit(f"perov5 not found in {args.data} (use --data)")
    pool = load_perov5(args.data, r_pool, args.pool, files=("val.csv",))
    cands = [Candidate.from_structure(s, source="perov5") for s, _ in pool]
    state = CampaignState(candidates={c.id: c for c in cands}, fitness={c.id: -h for c, (_, h) in zip(cands, pool)})
    result: dict = {
        "data": str(args.data),
        "seed": args.seed,
        "pool": {"file": "val.csv", "n_structures": len(state.candidates), "fitness": "-heat_ref (eV)"},
        "definitions": {
            "validity": "valid / attempted",
            "uniqueness": "distinct (StructureMatcher) / valid",
            "novelty": "not in the pool / unique",
        },
        "sources": {},
    }

    # mutation ---------------------------------------------------------------------------------
    t = time.perf_counter()
    mut = MutationGenerator("mutation")
    out = mut.generate(args.n, state, r_mut)
    total = {k: sum(v[k] for v in mut.yields().values()) for k in ("attempted", "valid", "unique", "novel")}
    result["sources"]["mutation"] = {
        "returned": len(out), **rates(total), "seconds": round(time.perf_counter() - t, 1),
        "per_operator": {op: rates(v) for op, v in mut.yields().items()},
    }
    log(f"mutation: {result['sources']['mutation']}")

    # VAE ----------------------------------------------------------------------------------------
    t = time.perf_counter()
    vae = VaeGenerator("vae")
    out = vae.generate(args.n, state, r_vae)
    result["sources"]["vae"] = {
        "returned": len(out), **rates(vae.stats), "seconds": round(time.perf_counter() - t, 1),
        "train": vae.history[-1] if vae.history else None,
    }
    log(f"vae: {result['sources']['vae']}")

    # OPTIMADE -------------------------------------------------------------------------------
    t = time.perf_counter()
    served = load_perov5(args.data, np.random.default_rng(args.seed + 1), args.served, files=("test.csv",))
    filt = 'elements HAS "O" AND nelements=3'
    try:
        with reference_server([(f"perov5-test-{i}", s) for i, (s, _) in enumerate(served)]) as url:
            opt = OptimadeGenerator("optimade", {"base_url": url, "filter": filt, "page_limit": 20})
            out = opt.generate(args.n, state, np.random.default_rng(args.seed))
            result["sources"]["optimade"] = {
                "returned": len(out), **rates(opt.stats), "seconds": round(time.perf_counter() - t, 1),
                "provider": "optimade-python-tools reference server on 127.0.0.1 serving perov5 test.csv",
                "served": len(served), "filter": filt, "pages_fetched": opt.pages_fetched,
            }
    except (ImportError, RuntimeError) as exc:
        result["sources"]["optimade"] = {"skipped": str(exc)}
    log(f"optimade: {result['sources']['optimade']}")

    # rediscovery ------------------------------------------------------------------------------
    t = time.perf_counter()
    structures = [s for s, _ in load_perov5(args.data, np.random.default_rng(args.seed + 2), args.rediscovery_structures)]
    red = rediscovery(structures, args.holdout, args.samples, r_red, {"epochs": 100})
    red["seconds"] = round(time.perf_counter() - t, 1)
    result["vae_rediscovery"] = red
    result["rediscovery_rate"] = red["rate"]
    result["n_heldout"] = red["n_heldout"]
    log(f"rediscovery: {red}")

    result["seconds"] = round(time.perf_counter() - t_start, 1)
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
