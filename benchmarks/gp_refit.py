"""GP hyperparameter fits by L-BFGS iteration budget, as a campaign does them plan after plan.

Fits the default GP (and the two skill halves, ``loo_predictions``) on growing random subsets
of Materials Project formulas (20, 30, ..., 300 labels; target: minus the distance of the band
gap to 1.4 eV) and prints, per iteration budget, the marginal-likelihood evaluations and CPU
seconds per sequence of 29 fits, and the held-out Spearman correlation at 50, 100, ..., 300
labels (3,000 formulas never fitted), each the mean over ``--repeats`` label orders.

Each mode ``MAIN/HALVES`` gives the L-BFGS iterations of the model's fit (``fit_maxiter``) and
of the two half-data fits behind the skill measurement (``loo_fit_maxiter``); every fit starts
from the priors' mode, as the agent's fits do. Besides the held-out correlation of the model,
the skill measurement's own leave-one-out Spearman correlation is printed at the same sizes.

Usage: python benchmarks/gp_refit.py ../shared/data/mp/mp-bandgaps.csv [--modes 100/100 100/30 30/30]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch
from matloop.agents.modelling.features import featurize
from matloop.agents.modelling.surrogates import GPSurrogate, SurrogateSettings
from matloop.core.records import Candidate
from scipy.stats import spearmanr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", help="mp-bandgaps.csv (columns composition, band_gap)")
    ap.add_argument("--n", type=int, default=4000, help="formulas drawn (seed 0)")
    ap.add_argument("--modes", nargs="+", default=["100/100", "100/30", "30/30"],
                    help="MAIN/HALVES: fit_maxiter / loo_fit_maxiter pairs to compare")
    ap.add_argument("--repeats", type=int, default=3, help="label orders (seeds 0, 1, ...); figures are means")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from pymatgen.core import Composition

    df = pd.read_csv(args.csv, keep_default_na=False)  # "NaN" is sodium nitride
    df["formula"] = [Composition(c).reduced_formula for c in df["composition"]]
    df = df.drop_duplicates("formula").sample(n=args.n, random_state=0)
    X, _ = featurize([Candidate(id=f, formula=f, composition=f) for f in df["formula"]])
    X = np.asarray(X, dtype=float)
    X = np.where(np.isfinite(X), X, np.nanmean(np.where(np.isfinite(X), X, np.nan), axis=0))
    X = X[:, np.ptp(X, axis=0) > 0]
    y = -np.abs(df["band_gap"].to_numpy(dtype=float) - 1.4)
    bounds = np.stack([X.min(0), X.max(0)])

    import botorch.optim.closures.core as closures

    n_eval = [0]
    call = closures.ForwardBackwardClosure.__call__

    def counting(self, *a, **k):
        n_eval[0] += 1
        return call(self, *a, **k)

    closures.ForwardBackwardClosure.__call__ = counting
    print(f"{len(X)} formulas, {X.shape[1]} features; refits at 20, 30, ..., 300 labels")
    print(f"{'mode':>7} {'evals':>7} {'CPU s':>7}  held-out Spearman | skill LOO Spearman, at 50, 100, ..., 300 labels")
    for mode in args.modes:
        main_it, _, half_it = mode.partition("/")
        settings = SurrogateSettings(fit_maxiter=int(main_it), loo_fit_maxiter=int(half_it or main_it))
        n_eval[0], t0, rho, loo = 0, time.process_time(), [], []
        for rep in range(args.repeats):
            order = np.random.default_rng(rep).permutation(len(X))
            held_out = order[-3000:]
            for n in range(20, 310, 10):
                model = GPSurrogate(settings, bounds=bounds, seed=n)
                model.fit(X[order[:n]], y[order[:n]])
                yl, mu, _ = model.loo_predictions()
                if n % 50 == 0:
                    rho.append(float(spearmanr(model.predict(X[held_out])[0], y[held_out]).statistic))
                    ok = np.isfinite(mu)
                    loo.append(float(spearmanr(yl[ok], mu[ok]).statistic))
        rho = np.asarray(rho).reshape(args.repeats, -1).mean(axis=0)
        loo = np.asarray(loo).reshape(args.repeats, -1).mean(axis=0)
        print(f"{mode:>7} {n_eval[0] / args.repeats:>7.0f} {(time.process_time() - t0) / args.repeats:>7.1f}  "
              + " ".join(f"{r:.3f}" for r in rho) + " | " + " ".join(f"{r:.3f}" for r in loo), flush=True)


if __name__ == "__main__":
    main()
