"""Multi-fidelity benchmarks on experimental vs PBE band gaps (see ``matloop.loop.mf_benchmark``).

Usage::

    python benchmarks/multifidelity.py models [--fractions 0.1,0.25,0.5] [--splits 5] --json
    python benchmarks/multifidelity.py campaign [--budget 3000] [--cost-cheap 1] [--cost-top 10] \
        [--seeds 5] [--agents single_fidelity,funnel,multi_fidelity] [--out DIR] --json

``models``: held-out RMSE / NLL of the experimental gap for each surrogate (which
multi-fidelity GP is the default). ``campaign``: cumulative cost to reach half recall of
the experimental good set, recall at a fixed cost, and ``recall_vs_cost.png`` in ``--out``.
Both print one JSON object (``--json``) or a short table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEFAULT_CSV = SHARED_DATA / "bandgap_expt_vs_pbe" / "bandgap_expt_vs_pbe.csv"


def main(argv: list[str] | None = None) -> dict:
    """Run the ``models`` or ``campaign`` part and print (and return) its JSON object."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=["models", "campaign"])
    p.add_argument("--csv", default=str(DEFAULT_CSV))
    p.add_argument("--goal", default="window:1.1:1.7", help="goal on the experimental gap (eV)")
    p.add_argument("--pbe-source", default="mp", choices=["mp", "aflow", "either"])
    p.add_argument("--components", type=int, default=30, help="principal components of the features")
    p.add_argument("--max-pool", type=int, default=None, help="subsample the pool (seeded)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--json", action="store_true", help="print only the JSON object")
    # models
    p.add_argument("--fractions", default="0.1,0.25,0.5")
    p.add_argument("--splits", type=int, default=5)
    p.add_argument("--models", default=None, help="comma-separated (default: all of mf_benchmark.MODELS)")
    p.add_argument("--max-fit-points", type=int, default=400)
    # campaign
    p.add_argument("--budget", type=float, default=3000.0)
    p.add_argument("--round-cost", type=float, default=100.0)
    p.add_argument("--cost-cheap", type=float, default=1.0)
    p.add_argument("--cost-top", type=float, default=10.0)
    p.add_argument("--eval-cost", type=float, default=None)
    p.add_argument("--init", type=int, default=10)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--agents", default="single_fidelity,funnel,multi_fidelity")
    p.add_argument("--funnel-widen", default="0.7,0.2", help="PBE window = [lo - a, hi + b]")
    p.add_argument("--funnel-batch", type=int, default=40, help="PBE candidates per funnel round")
    p.add_argument("--refit-every", type=int, default=3)
    p.add_argument("--model", default="mtgp", choices=["mtgp", "smfgp"])
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)

    import torch

    torch.set_num_threads(a.threads)
    from matloop.agents.modelling.multifidelity import MultiFidelitySettings
    from matloop.loop.mf_benchmark import MODELS, compare_models, load_bandgap_pool, run_mf_benchmark

    pool = load_bandgap_pool(a.csv, a.goal, pbe_source=a.pbe_source, n_components=a.components, max_pool=a.max_pool)
    if a.part == "models":
        out = compare_models(
            pool,
            fractions=[float(x) for x in a.fractions.split(",")],
            splits=a.splits,
            models=[m for m in a.models.split(",") if m] if a.models else MODELS,
            max_fit_points=a.max_fit_points,
        )
        if not a.json:
            for name, by_f in out["models"].items():
                cells = "  ".join(
                    f"{f}: RMSE {v['rmse']['mean']:.3f} NLL {v['nll']['mean']:.3f}" for f, v in by_f.items()
                )
                print(f"{name:<20} {cells}")
    else:
        widen = tuple(float(x) for x in a.funnel_widen.split(","))
        out = run_mf_benchmark(
            pool,
            costs={0: a.cost_cheap, 1: a.cost_top},
            budget=a.budget,
            round_cost=a.round_cost,
            n_init=a.init,
            seeds=a.seeds,
            agents=[x for x in a.agents.split(",") if x],
            eval_cost=a.eval_cost,
            funnel_widen=widen,
            funnel_batch=a.funnel_batch,
            model_settings=MultiFidelitySettings(kind=a.model),
            refit_every=a.refit_every,
            out_dir=a.out,
        )
        if not a.json:
            for name, s in out["agents"].items():
                c = s["cost_to_half"]
                r = s["recall_at_cost"]
                print(f"{name:<16} cost_to_half {c['mean']} (reached {c['n_reached']}/{out['seeds']})  "
                      f"recall@{out['eval_cost']:g} {r['mean']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]")
    if a.json:
        print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
