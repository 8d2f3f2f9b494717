"""Can the GP's cross-validated likelihood choose the kernel structure per campaign?

For each pool, draws 30, 60 and 120 random labels (``--repeats`` draws each), fits the default
GP twice (``kernel_structure`` 'single' on the descriptors, 'additive_fractions' on the
descriptors plus the element-fraction block), and prints for each fit the closed-form
leave-one-out log predictive density of the labels (R&W eq. 5.10, at the fitted
hyperparameters) and the Spearman correlation of the predictions with 1,500 held-out labels of
the same pool. A summary line per pool counts how often the likelihood picks the additive
kernel and how often its pick is also the kernel with the better held-out correlation.

Usage: python benchmarks/kernel_choice.py ../shared/data [--pools oer_3496 ... supercon] [--repeats 3]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matloop.agents.modelling.features import fraction_block
from matloop.agents.modelling.surrogates import SurrogateSettings, make_surrogate
from matloop.core.goals import Goal
from matloop.loop.benchmark import deduplicate, pool_features
from scipy import stats

POOLS = {  # name: (file under the data folder, composition column, target column, goal for merging)
    "oer_3496": ("jcap_oer/plate_3496/composition.csv", "composition", "overpotential_V", "min"),
    "oer_3851": ("jcap_oer/plate_3851/composition.csv", "composition", "overpotential_V", "min"),
    "oer_3860": ("jcap_oer/plate_3860/composition.csv", "composition", "overpotential_V", "min"),
    "oer_4098": ("jcap_oer/plate_4098/composition.csv", "composition", "overpotential_V", "min"),
    "expt_gap": ("matbench/matbench_expt_gap.csv", "formula", "target", "max"),
    "supercon": ("supercon/supercon-tc.csv", "composition", "Tc", "max"),
}


def _loo_log_density(gp, y: np.ndarray) -> float:
    mu, sd = gp.fitted_loo_predictions()
    return float(np.mean(stats.norm.logpdf(y, mu, sd)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="the shared data folder (see its README.md)")
    ap.add_argument("--pools", nargs="+", default=list(POOLS), choices=list(POOLS))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    for name in args.pools:
        rel, comp, target, goal = POOLS[name]
        df = pd.read_csv(args.data / rel, keep_default_na=False)
        y = pd.to_numeric(df[target], errors="coerce").to_numpy()
        ok = np.isfinite(y)
        pool = deduplicate(list(df[comp][ok]), y[ok], Goal.parse(goal))
        X = pool_features(pool.candidates)
        F = fraction_block(pool.candidates).astype(np.float32)
        kinds = {"single": (X, 0), "additive": (np.hstack([X, F]), F.shape[1])}
        n_fits = n_additive = n_agree = 0
        for n in (30, 60, 120):
            for rep in range(args.repeats):
                rng = np.random.default_rng(rep)
                idx = rng.choice(len(pool.targets), n, replace=False)
                rest = np.setdiff1d(np.arange(len(pool.targets)), idx)
                held = rng.choice(rest, min(1500, len(rest)), replace=False)
                res = {}
                for kind, (XX, k) in kinds.items():
                    s = SurrogateSettings(kernel_structure="single" if k == 0 else "additive_fractions")
                    gp = make_surrogate(s, bounds=np.stack([XX.min(0), XX.max(0)]), n_fraction_columns=k)
                    gp.fit(XX[idx], pool.targets[idx])
                    mean, _ = gp.predict(XX[held])
                    res[kind] = (_loo_log_density(gp, pool.targets[idx]),
                                 stats.spearmanr(mean, pool.targets[held])[0])
                pick = max(res, key=lambda k: res[k][0])
                best = max(res, key=lambda k: res[k][1])
                n_fits += 1
                n_additive += pick == "additive"
                n_agree += pick == best
                print(f"{name} n={n} draw={rep} " + "  ".join(
                    f"{k}: LOO log density {v[0]:.3f}, held-out rho {v[1]:.3f}" for k, v in res.items()), flush=True)
        print(f"== {name}: likelihood picks additive in {n_additive}/{n_fits} fits; its pick has the better "
              f"held-out rho in {n_agree}/{n_fits}", flush=True)


if __name__ == "__main__":
    main()
