"""Planning speed: how long ``select_batch`` takes on a random pool of a given size.

Usage::

    python benchmarks/planning.py --pool-size 100000 [--features 150] [--observations 500] \
        [--batch-size 10] [--baseline] [--threads 2] [--seed 0] --json

Prints one JSON object: ``pool_size``, ``seconds`` (fit + pool scoring + batch), the split
into those three, ``cpu_seconds`` (process CPU time: on a shared machine the wall time
includes waiting for a core), ``peak_rss_gb`` (the process's peak resident memory after planning, the
pool included), and with ``--baseline`` the time of botorch's ``optimize_acqf_discrete``
(the Monte-Carlo form of the same acquisition, sequential greedy) over the whole pool with
the same model, the speed ratio, and
the fraction of the baseline batch that our batch also contains. The pool is float32 and
has a smooth synthetic objective over its first features so that the model has signal.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import warnings

import numpy as np


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # kB on Linux


def _objective(X: np.ndarray) -> np.ndarray:
    """A smooth function of the first 5 features (``n``), for ``X`` of shape ``n x d``."""
    Z = X[:, :5].astype(float)
    return -np.sum((Z - 0.5) ** 2, axis=1) + 0.5 * np.sin(3 * Z[:, 0])


def make_pool(n: int, d: int, rng: np.random.Generator, chunk: int = 100_000) -> np.ndarray:
    """Standard-normal ``n x d`` float32 pool, generated in chunks."""
    X = np.empty((n, d), dtype=np.float32)
    for a in range(0, n, chunk):
        X[a : a + chunk] = rng.standard_normal((min(chunk, n - a), d), dtype=np.float32)
    return X


def _baseline(X, train, y, pending, a, surrogate, acquisition, sel, seconds) -> dict:
    """botorch's ``optimize_acqf_discrete`` over the whole pool with the same model and the
    Monte-Carlo version of the same acquisition (qUCB for ucb, qLogNEI for qlognei, qLogEI
    for logei)."""
    import torch
    from botorch.acquisition.logei import qLogExpectedImprovement, qLogNoisyExpectedImprovement
    from botorch.acquisition.monte_carlo import qUpperConfidenceBound
    from botorch.optim import optimize_acqf_discrete
    from botorch.sampling import SobolQMCNormalSampler

    from matloop.agents.decision.acquisition import pool_bounds
    from matloop.agents.modelling.surrogates import GPSurrogate

    # select_batch's first draw from its rng seeds the surrogate: the same fitting subset here
    gp = GPSurrogate(surrogate, bounds=pool_bounds(X), seed=int(np.random.default_rng(a.seed + 1).integers(2**31 - 1)))
    gp.fit(X[train].astype(float), y)
    kind = sel.info["acquisition"]
    sampler = SobolQMCNormalSampler(torch.Size([acquisition.mc_samples]), seed=a.seed)
    t1 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "ucb":
            acqf = qUpperConfidenceBound(gp.model, beta=acquisition.beta, sampler=sampler)
        elif kind == "logei":
            acqf = qLogExpectedImprovement(gp.model, best_f=float(np.max(y)), sampler=sampler)
        else:
            acqf = qLogNoisyExpectedImprovement(
                gp.model, X_baseline=torch.as_tensor(X[train], dtype=torch.float64), sampler=sampler,
                prune_baseline=True,
            )
        if pending is not None:
            acqf.set_X_pending(torch.as_tensor(X[pending], dtype=torch.float64))
        mask = np.ones(len(X), dtype=bool)
        mask[train] = False
        if pending is not None:
            mask[pending] = False
        choices = torch.as_tensor(X[mask], dtype=torch.float64)
        cand, _ = optimize_acqf_discrete(acqf, a.batch_size, choices, max_batch_size=2048)
    base_s = time.perf_counter() - t1
    idx_of = {X[i].tobytes(): i for i in np.flatnonzero(mask)}
    base_idx = {idx_of[np.asarray(r, dtype=np.float32).tobytes()] for r in cand.numpy()}
    return {
        "baseline": f"optimize_acqf_discrete, MC {kind}, whole pool",
        "baseline_seconds": round(base_s, 3),
        "speedup_vs_baseline": round(base_s / seconds, 2),
        "batch_overlap_with_baseline": len(base_idx & set(sel.indices.tolist())) / a.batch_size,
        "baseline_true_value_of_batch_mean": float(np.mean(_objective(X[sorted(base_idx)]))),
        "peak_rss_gb_with_baseline": round(_peak_rss_gb(), 3),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pool-size", type=int, required=True)
    p.add_argument("--features", type=int, default=150)
    p.add_argument("--observations", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--pending", type=int, default=0, help="pending requests fantasised in the batch")
    p.add_argument("--baseline", action="store_true", help="also run optimize_acqf_discrete on the whole pool")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto",
        help="where the float32 pool screening runs (auto: the GPU when torch sees one)",
    )
    p.add_argument("--json", action="store_true", help="print only the JSON object")
    a = p.parse_args(argv)

    import torch

    torch.set_num_threads(a.threads)
    from matloop.agents.decision.acquisition import AcquisitionSettings, Goal, SurrogateSettings, select_batch

    rng = np.random.default_rng(a.seed)
    X = make_pool(a.pool_size, a.features, rng)
    train = rng.choice(a.pool_size, size=a.observations, replace=False)
    y = _objective(X[train]) + 0.05 * rng.standard_normal(a.observations)
    rest = np.setdiff1d(np.arange(a.pool_size), train)
    pending = rng.choice(rest, size=a.pending, replace=False) if a.pending else None
    surrogate, acquisition = SurrogateSettings(device=a.device), AcquisitionSettings()
    t0 = time.perf_counter()
    c0 = time.process_time()
    sel = select_batch(
        X, train, y, a.batch_size, Goal("max"), surrogate=surrogate, acquisition=acquisition,
        rng=np.random.default_rng(a.seed + 1), pending_idx=pending,
    )
    seconds = time.perf_counter() - t0
    cpu_seconds = time.process_time() - c0
    out = {
        "pool_size": a.pool_size,
        "features": a.features,
        "observations": a.observations,
        "batch_size": a.batch_size,
        "threads": a.threads,
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu_seconds, 3),
        "acquisition": sel.info["acquisition"],
        "seconds_split": {k: round(v, 3) for k, v in sel.info["seconds"].items()},
        "peak_rss_gb": round(_peak_rss_gb(), 3),
        "screening_device": sel.info.get("screening_device", "cpu"),
        "gpu": torch.cuda.get_device_name(0) if sel.info.get("screening_device") == "cuda" else None,
        "baseline_seconds": None,
        "speedup_vs_baseline": None,
        "batch_overlap_with_baseline": None,
        "true_value_of_batch_mean": float(np.mean(_objective(X[sel.indices]))),
    }
    if a.baseline:
        out.update(_baseline(X, train, y, pending, a, surrogate, acquisition, sel, seconds))
    print(json.dumps(out) if a.json else json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
