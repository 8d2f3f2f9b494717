"""Retrospective benchmark: replay a labelled dataset with its labels hidden.

Every strategy starts from the same ``init`` random candidates (drawn from the seed), then
asks for batches until ``budget`` evaluations (init included) are spent. A strategy sees
only the labels it acquired and never asks for a candidate twice.

Definitions (``summary.json``):

* **Deduplication.** Rows whose compositions normalise to the same fractional composition
  (element fractions rounded to 1e-6, i.e. the ``Candidate`` id; for integer formulas this
  is the pymatgen reduced formula, and ``Ni0.1Fe0.9`` equals ``NiFe9``) are one candidate.
  When structures are given, rows are duplicates only when their structures hash equal
  (``records.structure_hash``: formula, space group, volume per atom, neighbour distances),
  so polymorphs and site-swapped perovskites stay distinct.
  The merged label is the best one for the goal: the largest ``Goal.score`` (max: the
  largest value; min: the smallest; window: the value inside or nearest to the window, ties
  inside broken by the distance to the window centre, or for a half-open window by the
  depth inside it). ``n_merged_duplicates`` counts the rows removed.
* **Good set G.** max/min goals: the best ``ceil(top_fraction * N)`` of the N deduplicated
  candidates (ties at the cut are broken by pool order); window goals: every candidate
  whose value lies in ``[lo, hi]``.
* ``recall(t) = |G ∩ first t acquired| / |G|``; ``evals_to_half`` = the smallest t with
  ``recall >= 0.5`` (null if the budget runs out first).
* Random search needs ``k (N+1) / (|G|+1)`` evaluations in expectation to find k of |G|;
  ``AF_vs_random = [k (N+1) / (|G|+1)] / evals_to_half`` with ``k = ceil(|G|/2)``.
  ``EF_at_budget = recall(budget) / (budget / N)`` (random: 1 in expectation).
* Aggregates over seeds: mean and a 95 % Student-t interval. For ``evals_to_half`` and
  ``AF_vs_random`` the mean and interval use the seeds that reached half recall
  (``n_reached`` of them); ``median`` is over every seed with the ones that did not reach
  half ranked worst (null if the median falls on one of them; the AF mean is then null too).

Strategies: ``matloop`` (the campaign's ``DefaultAgent``, default settings on the default
features unless the campaign sets them), ``random``, ``rf_ucb`` (random forest, mean + 1 *
spread across trees, on the goal score) and ``greedy_rf`` (the same forest, mean only); see
``matloop.agents.decision.baselines``.

Every run is the real campaign loop (``matloop.loop.replay``): the deduplicated pool and
its labels become a lookup oracle's table, each (seed, strategy) run a ``Campaign`` on an
in-memory store with the strategy as its agent; the pool is featurized once per benchmark.
The initial draw is the run's first iteration; each strategy's random generator is
``default_rng([seed, 1 + STRATEGIES.index(name)])``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from matloop.agents.decision.acquisition import AcquisitionSettings, SurrogateSettings
from matloop.agents.decision.baselines import ForestUcbAgent, InitialDesign, RandomAgent
from matloop.agents.modelling.features import FeaturePreprocessor, FeatureSettings, featurize, fraction_block, pool_fractions
from matloop.core.goals import Goal
from matloop.core.protocols import Agent
from matloop.core.records import Candidate, InputError
from matloop.core.tables import read_csv

from .planning import build_agent
from .pool import PoolFeatures
from .replay import lookup_oracle, objective_of, replay, replay_spec, write_labels
from .spec import CampaignSpec, load_campaign
from .tiers import build_oracles

STRATEGIES = ("matloop", "random", "rf_ucb", "greedy_rf")
RF_UCB_BETA = 1.0  # botorch convention: mean + sqrt(beta) * spread across trees


# -- data --------------------------------------------------------------------------------------


@dataclass
class Pool:
    """A deduplicated labelled pool.

    Attributes:
        candidates: ``N`` candidates (one per normalised composition).
        targets: ``N`` merged labels.
        source_rows: ``N`` index of the row each label came from in the input.
        n_merged_duplicates: input rows removed by the merge.
    """

    candidates: list[Candidate]
    targets: np.ndarray
    source_rows: np.ndarray
    n_merged_duplicates: int


def _merge_key_score(goal: Goal, y: np.ndarray) -> np.ndarray:
    """Score used to pick the label kept among duplicates (higher is kept), ``n``."""
    s = goal.score(y)
    if goal.kind != "window":
        return s
    lo, hi = goal.lo, goal.hi
    if math.isfinite(lo) and math.isfinite(hi):
        tie = -np.abs(y - 0.5 * (lo + hi))
    elif math.isfinite(lo):
        tie = y - lo
    else:
        tie = hi - y
    # inside the window (s == 0) the tie-break decides; outside, the distance does
    return np.where(s < 0, s - 1e12, tie)


def _check_elements(comp) -> None:
    from pymatgen.core import Element

    bad = [str(e) for e in comp.elements if not isinstance(e, Element)]
    if bad:
        raise ValueError(f"not chemical elements: {', '.join(bad)}")


def deduplicate(
    compositions: Sequence[str],
    targets: np.ndarray,
    goal: Goal,
    structures: Sequence | None = None,
    *,
    file: str | None = None,
) -> Pool:
    """Merge rows with the same normalised composition, keeping the best label for the goal.

    Args:
        compositions: ``n`` composition strings.
        targets: ``n`` finite labels.
        goal: decides which duplicate label is kept (see the module docstring).
        structures: ``n`` pymatgen structures (or None); the kept row's structure is used.
        file: named in errors.

    Raises:
        InputError: a composition that pymatgen cannot parse (names the row).
    """
    y = np.asarray(targets, dtype=float)
    cands: list[Candidate] = []
    for i, c in enumerate(compositions):
        try:
            if structures is not None and structures[i] is not None:
                base = Candidate.from_structure(structures[i], source="benchmark", provenance={"row": i})
                cands.append(Candidate(base.id, base.formula, str(c), base.structure, "benchmark", base.provenance))
            else:
                cands.append(Candidate.from_composition(str(c), source="benchmark", provenance={"row": i}))
            _check_elements(cands[-1].pmg_composition())
        except Exception as exc:
            raise InputError(f"cannot parse composition {c!r}: {exc}", file=file, where=f"row {i + 1}") from None
    score = _merge_key_score(goal, y)
    best: dict[str, int] = {}
    for i, cand in enumerate(cands):
        j = best.get(cand.id)
        if j is None or score[i] > score[j]:
            best[cand.id] = i
    rows = np.array(sorted(best.values()), dtype=int)
    return Pool([cands[i] for i in rows], y[rows], rows, len(cands) - len(rows))


def good_mask(targets: np.ndarray, goal: Goal, top_fraction: float) -> np.ndarray:
    """Boolean ``N`` mask of the good set G (see the module docstring)."""
    y = np.asarray(targets, dtype=float)
    if goal.kind == "window":
        return goal.contains(y)
    n_good = int(math.ceil(top_fraction * len(y)))
    order = np.argsort(-goal.score(y), kind="stable")
    mask = np.zeros(len(y), dtype=bool)
    mask[order[:n_good]] = True
    return mask


def pool_features(candidates: list[Candidate], settings: FeatureSettings | None = None) -> np.ndarray:
    """The default representation: matminer features (+ element fractions if configured),
    imputed, de-duplicated and standardised over the pool; ``N x d`` float32."""
    settings = settings or FeatureSettings()
    X, _ = featurize(candidates, settings)
    if "fractions" in settings.composition:
        F, _ = pool_fractions(candidates)
        X = np.hstack([X, F])
    return FeaturePreprocessor().fit_transform(X).astype(np.float32)


# -- metrics -----------------------------------------------------------------------------------


def run_metrics(order: np.ndarray, good: np.ndarray, budget: int | None = None) -> dict:
    """Metrics of one run.

    Args:
        order: acquired pool indices in acquisition order (``budget``).
        good: ``N`` boolean mask of the good set.
        budget: evaluations the run was allowed (default: ``len(order)``).

    Returns:
        ``recall`` (``budget`` array, recall after t = 1..budget evaluations),
        ``recall_at_budget``, ``evals_to_half`` (int or None), ``AF_vs_random`` (or None),
        ``EF_at_budget``.
    """
    order = np.asarray(order, dtype=int)
    N, n_good = len(good), int(np.sum(good))
    budget = len(order) if budget is None else int(budget)
    if n_good == 0:
        raise ValueError("the good set is empty")
    hits = np.cumsum(good[order[:budget]])
    recall = hits / n_good
    reached = np.flatnonzero(recall >= 0.5)
    evals_to_half = int(reached[0] + 1) if len(reached) else None
    k = math.ceil(n_good / 2)
    expected_random = k * (N + 1) / (n_good + 1)
    return {
        "recall": recall,
        "recall_at_budget": float(recall[-1]) if budget else 0.0,
        "evals_to_half": evals_to_half,
        "AF_vs_random": expected_random / evals_to_half if evals_to_half else None,
        "EF_at_budget": (float(recall[-1]) if budget else 0.0) / (budget / N),
        "random_expected_evals_to_half": expected_random,
    }


GP_CEILING_MAX_POOL = 3000  # the exact GP's LOO needs an N x N Cholesky: about 1 s at 2,000, minutes at 10^4


def attainable(X: np.ndarray, targets: np.ndarray, goal: Goal, good: np.ndarray, budget: int, seed: int = 0) -> dict:
    """The leave-one-out ceiling: what a model with the pool's features could at best achieve.

    Every label of the pool is used: each candidate is predicted by a model that saw every
    other label (random-forest out-of-bag predictions, 200 trees; and, for pools of at most
    ``GP_CEILING_MAX_POOL``, the default GP's closed-form leave-one-out predictions at
    hyperparameters fitted on 300 labels), and the pool is acquired greedily in the order of
    those predictions of the goal's score. No strategy that learns from ``budget`` labels can
    be expected to do better with these features, so its ``recall_at_budget`` and
    ``AF_vs_random`` say what is attainable; ``spearman`` is the rank correlation of the
    predictions with the goal's score.

    Returns:
        ``{"rf_oob": {...}, "gp_loo": {...}}`` (``gp_loo`` only for small pools), each with
        recall_at_budget, evals_to_half, AF_vs_random, spearman and seconds.
    """
    from scipy.stats import spearmanr

    from matloop.agents.modelling.surrogates import GPSurrogate, RandomForestSurrogate

    score = goal.score(np.asarray(targets, dtype=float))
    X = np.asarray(X, dtype=float)
    out = {}

    def entry(pred, t0):
        order = np.argsort(-np.where(np.isfinite(pred), pred, -np.inf), kind="stable")
        m = run_metrics(order, good, budget)
        return {"recall_at_budget": m["recall_at_budget"], "evals_to_half": m["evals_to_half"],
                "AF_vs_random": m["AF_vs_random"], "spearman": float(spearmanr(score, pred, nan_policy="omit").statistic),
                "seconds": time.perf_counter() - t0}

    t0 = time.perf_counter()
    # every core: the ceiling forest sees the whole pool (35,000 rows: 474 s on one core)
    rf = RandomForestSurrogate(SurrogateSettings(kind="rf"), seed=seed, n_jobs=-1)
    rf.fit(X, score)
    out["rf_oob"] = entry(rf.loo_predictions()[1], t0)
    if len(score) <= GP_CEILING_MAX_POOL:
        t0 = time.perf_counter()
        lo, hi = X.min(axis=0), X.max(axis=0)
        gp = GPSurrogate(SurrogateSettings(), bounds=np.stack([lo, hi]), seed=seed)
        gp.fit(X, score)
        out["gp_loo"] = entry(gp.fitted_loo_predictions()[0], t0)
    return out


def mean_ci(values: Sequence[float]) -> dict:
    """Mean and 95 % Student-t interval over seeds (a single value has a zero-width interval)."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if len(v) == 0:
        return {"mean": None, "ci95": [None, None]}
    m = float(v.mean())
    if len(v) < 2:
        return {"mean": m, "ci95": [m, m]}
    from scipy.stats import t

    h = float(t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return {"mean": m, "ci95": [m - h, m + h]}


def censored_median(values: Sequence[float | None]) -> float | None:
    """Median where None (did not reach half recall) ranks below every number."""
    if not values:
        return None
    ranked = sorted(values, key=lambda x: (x is not None, x if x is not None else 0.0))
    n = len(ranked)
    mid = ranked[(n - 1) // 2 : n // 2 + 1]
    if any(x is None for x in mid):
        return None
    return float(np.mean(mid))


# -- strategies --------------------------------------------------------------------------------

LABEL = "target"  # the property the lookup oracle reports in a replay
ORACLE = "label"  # the lookup oracle's name


def strategy_agent(name: str, spec: CampaignSpec, goal: Goal, init_rows: np.ndarray) -> Agent:
    """The agent of one strategy, behind the shared initial design (``init_rows``, one iteration).

    ``matloop`` is the campaign's ``DefaultAgent`` (``build_agent``); the others are the
    baselines of ``matloop.agents.decision.baselines``.
    """
    if name == "matloop":
        agent = build_agent(spec, build_oracles(spec))
    elif name == "random":
        agent = RandomAgent(ORACLE)
    elif name in ("rf_ucb", "greedy_rf"):
        agent = ForestUcbAgent(ORACLE, LABEL, goal, beta=RF_UCB_BETA if name == "rf_ucb" else 0.0)
    else:
        raise InputError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}", where="strategies")
    return InitialDesign([(int(i), ORACLE) for i in init_rows], agent)


def _one_run(name: str, spec: CampaignSpec, pool: Pool, X: PoolFeatures, goal: Goal, init_idx: np.ndarray,
             rng: np.random.Generator) -> np.ndarray:
    """One strategy's acquisition order (pool indices), from a replay through the campaign loop."""
    row = {c.id: i for i, c in enumerate(pool.candidates)}
    requests = replay(spec, pool.candidates, X, strategy_agent(name, spec, goal, init_idx), rng)
    order = np.array([row[cid] for cid, _ in requests], dtype=int)
    if len(np.unique(order)) != len(order):
        raise RuntimeError(f"strategy {name} acquired a candidate twice")
    return order


# -- the benchmark -----------------------------------------------------------------------------


def _parse_strategies(strategies) -> list[str]:
    names = [s.strip() for s in strategies.split(",")] if isinstance(strategies, str) else list(strategies)
    names = [n for n in names if n]
    bad = [n for n in names if n not in STRATEGIES]
    if bad or not names:
        raise InputError(f"unknown strategies {bad}; known: {', '.join(STRATEGIES)}", where="strategies")
    return names


def run_benchmark(
    pool_compositions: Sequence[str],
    targets: np.ndarray,
    goal: Goal | str,
    *,
    top_fraction: float = 0.01,
    budget: int = 200,
    batch_size: int = 10,
    init: int = 10,
    seeds: int = 5,
    strategies: Sequence[str] | str = STRATEGIES,
    out_dir: str | Path | None = None,
    dataset_name: str = "dataset",
    X: np.ndarray | None = None,
    structures: Sequence | None = None,
    features: FeatureSettings | None = None,
    surrogate: SurrogateSettings | None = None,
    acquisition: AcquisitionSettings | None = None,
    file: str | None = None,
    log=None,
) -> dict:
    """Run every strategy for ``seeds`` seeds and write ``summary.json``, ``curves.csv`` and plots.

    Args:
        pool_compositions: ``n`` composition strings (duplicates are merged, see above).
        targets: ``n`` finite labels.
        goal: a ``Goal`` or ``max`` / ``min`` / ``window:LO:HI``.
        top_fraction: size of the good set for max/min goals.
        budget: evaluations per run, the ``init`` random ones included.
        batch_size: candidates per batch after the initial draw.
        init: random initial candidates, the same for every strategy at one seed.
        seeds: independent runs per strategy (seeds 0..seeds-1).
        strategies: names from ``STRATEGIES`` (or one comma-separated string).
        out_dir: where the outputs go (None: nothing written).
        dataset_name: the ``dataset`` field of the summary.
        X: ``n x d`` precomputed features (rows as in ``pool_compositions``); None featurizes.
        structures: ``n`` pymatgen structures (or None each) for structure features.
        features: featurizer settings (default: the campaign default).
        surrogate: settings of the ``matloop`` strategy (default: the campaign default). With
            ``kernel_structure='additive_fractions'`` the pool's element fractions
            (``fraction_block``) are appended for that strategy only.
        acquisition: settings of the ``matloop`` strategy (default: the campaign default).
        file: input file, named in errors.
        log: callable taking one progress line (default: stderr).

    Returns:
        The summary dict (the ``summary.json`` content).

    Raises:
        InputError: empty pool, non-finite labels, mismatched lengths, bad settings.
    """
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    goal = Goal.parse(goal) if isinstance(goal, str) else goal
    names = _parse_strategies(strategies)
    pool, good = _checked_pool(pool_compositions, targets, goal, top_fraction, budget, batch_size, init, seeds, X,
                               structures, file)
    N = len(pool.targets)
    surrogate = surrogate or SurrogateSettings()
    acquisition = acquisition or AcquisitionSettings()
    t0 = time.perf_counter()
    Xp = _pool_matrix(pool, X, features, surrogate.fraction_block and "matloop" in names)
    n_frac = Xp.fraction_columns
    log(f"[{dataset_name}] N={N} (merged {pool.n_merged_duplicates}), |G|={int(good.sum())}, "
        f"d={Xp.X.shape[1]}" + (f" ({n_frac} fraction columns last)" if n_frac else "")
        + f", features {time.perf_counter() - t0:.1f} s")
    runs: dict[str, list[dict]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="matloop-benchmark-") as tmp:
        table = write_labels(Path(tmp) / "labels.csv", pool.candidates, {LABEL: pool.targets})
        spec = replay_spec(dataset_name, table, [lookup_oracle(ORACLE, table, LABEL, LABEL)], objective_of(LABEL, goal),
                           {"evaluations": int(budget)}, batch_size,
                           agent={"surrogate": surrogate.model_dump(), "acquisition": acquisition.model_dump()},
                           features=(features or FeatureSettings()).model_dump())
        for seed in range(seeds):
            init_idx = np.random.default_rng(seed).choice(N, size=init, replace=False)
            for name in names:
                rng = np.random.default_rng([seed, 1 + STRATEGIES.index(name)])
                t1, c1 = time.perf_counter(), time.process_time()
                order = _one_run(name, spec, pool, Xp, goal, init_idx, rng)
                m = run_metrics(order, good, budget)
                m["seconds"] = time.perf_counter() - t1
                # CPU seconds of this process: with --threads 1 the wall time of the run on an idle
                # core, whatever else shares the machine (wall seconds inflate under load)
                m["cpu_seconds"] = time.process_time() - c1
                m["order"] = order
                runs[name].append(m)
                log(f"[{dataset_name}] seed {seed} {name}: recall {m['recall_at_budget']:.3f}, "
                    f"evals_to_half {m['evals_to_half']}, AF {_fmt(m['AF_vs_random'])}, {m['seconds']:.1f} s")
    summary = _summary(dataset_name, pool, good, goal, budget, batch_size, init, seeds, runs)
    summary["attainable"] = attainable(Xp.X[:, : Xp.X.shape[1] - n_frac], pool.targets, goal, good, budget)
    log(f"[{dataset_name}] attainable (leave-one-out ceiling): "
        + ", ".join(f"{k} recall {v['recall_at_budget']:.3f} AF {_fmt(v['AF_vs_random'])}"
                    for k, v in summary["attainable"].items()))
    if out_dir is not None:
        _write_outputs(Path(out_dir), summary, runs, pool, good, goal, Xp.X.shape[1] - n_frac, n_frac)
    return summary


def _checked_pool(pool_compositions, targets, goal, top_fraction, budget, batch_size, init, seeds, X, structures,
                  file) -> tuple[Pool, np.ndarray]:
    """The deduplicated pool and its good set, after checking the inputs (see ``run_benchmark``)."""
    y_in = np.asarray(targets, dtype=float).reshape(-1)
    if len(pool_compositions) == 0:
        raise InputError("empty pool", file=file)
    if len(y_in) != len(pool_compositions):
        raise InputError(f"{len(pool_compositions)} compositions but {len(y_in)} targets", file=file)
    bad = np.flatnonzero(~np.isfinite(y_in))
    if len(bad):
        raise InputError(f"non-finite target {y_in[bad[0]]!r} ({len(bad)} rows in all)", file=file, where=f"row {bad[0] + 1}")
    if X is not None and len(X) != len(y_in):
        raise InputError(f"X has {len(X)} rows for {len(y_in)} compositions", file=file)
    pool = deduplicate(pool_compositions, y_in, goal, structures, file=file)
    N = len(pool.targets)
    if not 0 < top_fraction <= 1:
        raise InputError(f"top_fraction must be in (0, 1], got {top_fraction}", where="top_fraction")
    if not (1 <= init <= budget <= N) or batch_size < 1 or seeds < 1:
        raise InputError(
            f"need 1 <= init ({init}) <= budget ({budget}) <= pool size ({N}), batch_size >= 1, seeds >= 1",
            where="budget",
        )
    good = good_mask(pool.targets, goal, top_fraction)
    if not good.any():
        raise InputError(f"no candidate satisfies the goal {goal}: the good set is empty", file=file)
    return pool, good


def _pool_matrix(pool: Pool, X: np.ndarray | None, features: FeatureSettings | None, fractions: bool) -> PoolFeatures:
    """The pool features every run shares; with ``fractions`` the element-fraction block goes last."""
    if X is None:
        Xp = pool_features(pool.candidates, features)
    else:
        Xp = FeaturePreprocessor().fit_transform(np.asarray(X, dtype=float)[pool.source_rows]).astype(np.float32)
    if not fractions:  # additive_fractions: element fractions go last, for the matloop strategy
        return PoolFeatures(Xp, 0)
    F = fraction_block(pool.candidates)
    return PoolFeatures(np.hstack([Xp, F]), F.shape[1])


def _summary(dataset_name, pool, good, goal, budget, batch_size, init, seeds, runs) -> dict:
    """The ``summary.json`` content: the settings and, per strategy, the aggregates over seeds."""
    summary = {
        "dataset": dataset_name,
        "n_pool": int(len(pool.targets)),
        "n_merged_duplicates": int(pool.n_merged_duplicates),
        "n_good": int(good.sum()),
        "goal": str(goal),
        "budget": int(budget),
        "batch_size": int(batch_size),
        "init": int(init),
        "seeds": int(seeds),
        "strategies": {},
    }
    for name, rs in runs.items():
        curve = np.mean([r["recall"] for r in rs], axis=0)
        e2h = [r["evals_to_half"] for r in rs]
        af = [r["AF_vs_random"] for r in rs]
        af_stats = {**mean_ci(af), "median": censored_median(af)}
        if af_stats["median"] is None:
            # half or more of the seeds never reached half recall: a mean over the few that did is
            # survivorship-biased, so it is withheld too (n_reached in evals_to_half says how many did)
            af_stats.update(mean=None, ci95=[None, None])
        summary["strategies"][name] = {
            "recall_at_budget": mean_ci([r["recall_at_budget"] for r in rs]),
            "evals_to_half": {**mean_ci(e2h), "n_reached": sum(e is not None for e in e2h)},
            "AF_vs_random": af_stats,
            "EF_at_budget": mean_ci([r["EF_at_budget"] for r in rs]),
            "curve": [[t + 1, float(c)] for t, c in enumerate(curve)],
            "seconds_per_run": {"mean": float(np.mean([r["seconds"] for r in rs]))},
            "cpu_seconds_per_run": {"mean": float(np.mean([r.get("cpu_seconds", np.nan) for r in rs]))},
        }
    return summary


def _fmt(x) -> str:
    return "null" if x is None else f"{x:.1f}"


def _write_outputs(out: Path, summary: dict, runs: dict, pool: Pool, good: np.ndarray, goal: Goal, d: int,
                   n_fraction_columns: int = 0) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    score = goal.score(pool.targets)
    with open(out / "curves.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["strategy", "seed", "t", "candidate", "formula", "target", "good", "recall", "best_so_far"])
        for name, rs in runs.items():
            for seed, r in enumerate(rs):
                best_i = None
                for t, i in enumerate(r["order"]):
                    if best_i is None or score[i] > score[best_i]:
                        best_i = i
                    w.writerow([name, seed, t + 1, pool.candidates[i].id, pool.candidates[i].formula,
                                f"{pool.targets[i]:.6g}", int(good[i]), f"{r['recall'][t]:.6g}",
                                f"{pool.targets[best_i]:.6g}"])
    details = {
        "goal": str(goal),
        "n_features": int(d),
        "n_fraction_columns": int(n_fraction_columns),  # appended for the matloop strategy (additive_fractions)
        "random_expected_evals_to_half": next(iter(runs.values()))[0]["random_expected_evals_to_half"],
        "per_seed": {
            name: [{k: r[k] for k in ("recall_at_budget", "evals_to_half", "AF_vs_random", "EF_at_budget", "seconds")}
                   for r in rs]
            for name, rs in runs.items()
        },
        "definitions": __doc__,
    }
    (out / "details.json").write_text(json.dumps(details, indent=1))
    _plots(out, summary, runs, pool, goal)


def _plots(out: Path, summary: dict, runs: dict, pool: Pool, goal: Goal) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import t as student_t

    N, budget = summary["n_pool"], summary["budget"]
    ts = np.arange(1, budget + 1)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for name, rs in runs.items():
        R = np.array([r["recall"] for r in rs])
        m = R.mean(axis=0)
        ax.plot(ts, m, label=name)
        if len(rs) > 1:
            h = student_t.ppf(0.975, len(rs) - 1) * R.std(axis=0, ddof=1) / math.sqrt(len(rs))
            ax.fill_between(ts, np.clip(m - h, 0, 1), np.clip(m + h, 0, 1), alpha=0.2)
    ax.plot(ts, ts / N, "k--", lw=1, label="random (expected)")
    ax.set_xlabel("evaluations")
    ax.set_ylabel(f"recall of the good set (|G| = {summary['n_good']})")
    ax.set_title(f"{summary['dataset']}: {summary['goal']}, N = {N}")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "recall.png", dpi=120)
    plt.close(fig)

    score = goal.score(pool.targets)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for name, rs in runs.items():
        B = np.array([np.maximum.accumulate(score[r["order"]]) for r in rs])
        sign = -1.0 if goal.kind == "min" else 1.0
        ax.plot(ts, sign * B.mean(axis=0), label=name)
    best = score.max() * (-1.0 if goal.kind == "min" else 1.0)
    ax.axhline(best, color="k", lw=0.8, ls=":", label="pool best")
    ax.set_xlabel("cost (1 unit per evaluation)")
    ax.set_ylabel("best so far" if goal.kind != "window" else "best so far: -distance to window")
    ax.set_title(f"{summary['dataset']}: best so far vs cost (mean of {summary['seeds']} seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "best_so_far.png", dpi=120)
    plt.close(fig)


# -- entry points ------------------------------------------------------------------------------


def read_table(path: str | Path, columns: Sequence[str] = (), *, not_found: str = "file not found",
               where: str | None = None, text_columns: Sequence[str | None] = ()):
    """Read a CSV into a DataFrame, or raise ``InputError`` naming the file (and ``where``):
    missing file (``not_found``), unreadable CSV, or a missing column of ``columns``.
    ``text_columns`` (formulas, structures, keys) are read verbatim (``core.tables.read_csv``)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(not_found, file=str(path), where=where)
    try:
        df = read_csv(path, text_columns)
    except Exception as exc:
        raise InputError(f"cannot read CSV: {exc}", file=str(path), where=where) from None
    for col in columns:
        if col not in df.columns:
            raise InputError(f"no column {col!r} (columns: {', '.join(map(str, df.columns))})", file=str(path),
                             where=f"{where + ', ' if where else ''}column {col!r}")
    return df


def benchmark_from_csv(
    path: str | Path,
    composition_column: str,
    target_column: str,
    goal: str | Goal,
    *,
    out_dir: str | Path | None = None,
    dataset_name: str | None = None,
    structure_column: str | None = None,
    **kwargs,
) -> dict:
    """``run_benchmark`` on a CSV file: one composition column and one target column.

    Args:
        path: the CSV file.
        composition_column: column of composition strings.
        target_column: column of labels.
        goal: ``max``, ``min`` or ``window:LO:HI``.
        out_dir: output folder.
        dataset_name: default: the file's stem (its folder's name for ``composition.csv``).
        structure_column: optional column of CIF strings, featurized with structure features.
        **kwargs: passed to ``run_benchmark`` (top_fraction, budget, batch_size, init, seeds,
            strategies, ...).

    Raises:
        InputError: missing file or column, unparseable goal, empty pool, non-finite label or
            unparseable composition (naming the row: 1 = the first data row).
    """
    import pandas as pd

    path = Path(path)
    goal = Goal.parse(goal) if isinstance(goal, str) else goal
    df = read_table(path, (composition_column, target_column) + ((structure_column,) if structure_column else ()),
                    text_columns=(composition_column, structure_column))
    if len(df) == 0:
        raise InputError("empty pool: no data rows", file=str(path))
    y = pd.to_numeric(df[target_column], errors="coerce").to_numpy(dtype=float)
    bad = np.flatnonzero(~np.isfinite(y))
    if len(bad):
        raise InputError(f"non-finite or non-numeric {target_column!r} = {df[target_column].iloc[bad[0]]!r} "
                         f"({len(bad)} rows in all)", file=str(path), where=f"row {bad[0] + 1}, column {target_column!r}")
    comps = df[composition_column].astype(str).tolist()
    structures = None
    if structure_column:
        from pymatgen.core import Structure

        structures = []
        for i, cif in enumerate(df[structure_column]):
            try:
                structures.append(Structure.from_str(str(cif), fmt="cif"))
            except Exception as exc:
                raise InputError(f"cannot parse structure: {exc}", file=str(path),
                                 where=f"row {i + 1}, column {structure_column!r}") from None
    if dataset_name is None:
        dataset_name = path.parent.name if path.stem == "composition" else path.stem
    return run_benchmark(comps, y, goal, out_dir=out_dir, dataset_name=dataset_name, structures=structures,
                         file=str(path), **kwargs)


def benchmark_from_campaign(
    path: str | Path,
    *,
    out_dir: str | Path | None = None,
    seeds: int | None = None,
    strategies: Sequence[str] | str | None = None,
    budget: int | None = None,
    batch_size: int | None = None,
    init: int | None = None,
    top_fraction: float | None = None,
) -> dict:
    """Benchmark the campaign a YAML file describes: its file pool, lookup oracle and agent.

    The pool is the campaign's first ``file`` source; labels come from its lookup oracle's
    table for the objective's property. Constraints (``min``/``max`` on other columns of the
    same table) make a combined criterion: the good set is the candidates meeting the
    objective window *and* every constraint, and every strategy targets the derived scalar
    ``v = max(window violation, constraint violations)`` (``|y - centre| - half_width`` for
    a window, ``y - max`` / ``min - y`` for a constraint; each in its own units) with the
    goal ``v <= 0``. Arguments given here override the campaign's; budget defaults to the
    campaign's evaluation budget, init to the agent's.
    """
    import pandas as pd

    spec = load_campaign(path)
    src = next((s for s in spec.sources if s.kind == "file"), None)
    if src is None:
        raise InputError("a benchmark campaign needs a 'file' source", file=str(path), where="sources")
    oracle = spec.objective_oracle
    if oracle.kind != "lookup":
        raise InputError(f"a benchmark campaign needs a lookup oracle, not {oracle.kind!r}", file=str(path),
                         where="oracles")
    table = spec.resolve(oracle.settings.get("table", src.settings.get("path")))
    key_col = oracle.settings.get("key_column", src.settings.get("composition_column", "composition"))
    colmap = oracle.settings.get("columns", {})
    df = read_table(table, not_found="lookup table not found", text_columns=(key_col,))
    prop = spec.objective.property

    def column(p: str, where: str) -> np.ndarray:
        """The finite values of property ``p``'s column, or an ``InputError`` naming ``where``."""
        c = colmap.get(p, p)
        if c not in df.columns:
            raise InputError(f"no column {c!r} for property {p!r}", file=str(table), where=where)
        v = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=float)
        bad = np.flatnonzero(~np.isfinite(v))
        if len(bad):
            raise InputError(f"non-finite {c!r}", file=str(table), where=f"row {bad[0] + 1}, column {c!r}")
        return v

    y = column(prop, "objective.property")
    goal = Goal.from_objective(spec.objective.goal, spec.objective.window)
    if spec.constraints:
        y, goal = _combined_criterion(y, goal, spec, column, str(path))
    comps = df[key_col].astype(str).tolist()
    acq = AcquisitionSettings(**spec.agent.acquisition)
    return run_benchmark(
        comps, y, goal,
        top_fraction=top_fraction or 0.01,
        budget=budget or int(spec.budget.evaluations or 200),
        batch_size=batch_size or spec.batch_size,
        init=init if init is not None else acq.init,
        seeds=seeds or 5,
        strategies=strategies or STRATEGIES,
        out_dir=out_dir,
        dataset_name=spec.name,
        features=spec.features,
        surrogate=SurrogateSettings(**spec.agent.surrogate),
        acquisition=acq,
        file=str(table),
    )


def _combined_criterion(y: np.ndarray, goal: Goal, spec: CampaignSpec, column, file: str) -> tuple[np.ndarray, Goal]:
    """Objective window and constraints as one scalar ``v`` (``n``) with the goal ``v <= 0`` (see above)."""
    if goal.kind != "window":
        raise InputError("constraints in a benchmark need a window objective", file=file, where="constraints")
    lo, hi = goal.lo, goal.hi
    parts = [np.abs(y - 0.5 * (lo + hi)) - 0.5 * (hi - lo) if math.isfinite(hi - lo)
             else (lo - y if math.isfinite(lo) else y - hi)]
    for i, c in enumerate(spec.constraints):
        v = column(c.property, f"constraints[{i}].property")
        if c.max is not None:
            parts.append(v - c.max)
        if c.min is not None:
            parts.append(c.min - v)
    return np.max(np.stack(parts), axis=0), Goal("window", -math.inf, 0.0)


def print_summary(summary: dict, file=None) -> None:
    """One line per strategy: recall at budget, AF (median / mean), EF, seconds per run."""
    file = file or sys.stdout
    print(f"{summary['dataset']}: goal {summary['goal']}, N={summary['n_pool']} "
          f"(merged {summary['n_merged_duplicates']}), |G|={summary['n_good']}, budget {summary['budget']}, "
          f"batch {summary['batch_size']}, init {summary['init']}, {summary['seeds']} seeds", file=file)
    print(f"  {'strategy':<10} {'recall@budget [95% CI]':<26} {'AF median':>9} {'AF mean':>8} "
          f"{'reached':>7} {'EF':>6} {'s/run':>7}", file=file)
    for name, s in summary["strategies"].items():
        r = s["recall_at_budget"]
        ci = f"{r['mean']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]"
        af = s["AF_vs_random"]
        print(f"  {name:<10} {ci:<26} {_fmt(af['median']):>9} {_fmt(af['mean']):>8} "
              f"{s['evals_to_half']['n_reached']:>4}/{summary['seeds']:<2} {s['EF_at_budget']['mean']:>6.1f} "
              f"{s['seconds_per_run']['mean']:>7.1f}", file=file)
    for name, a in (summary.get("attainable") or {}).items():
        print(f"  ceiling {name:<8} recall@budget {a['recall_at_budget']:.3f}, AF {_fmt(a['AF_vs_random'])} "
              f"(leave-one-out predictions from every other label, Spearman {a['spearman']:.2f})", file=file)


def main(argv: list[str] | None = None) -> int:
    """``python -m matloop.loop.benchmark CSV --composition-column C --target-column T --goal G --out DIR``."""
    p = argparse.ArgumentParser(description="matloop retrospective benchmark")
    p.add_argument("csv")
    p.add_argument("--composition-column", required=True)
    p.add_argument("--target-column", required=True)
    p.add_argument("--goal", required=True, help="max | min | window:LO:HI")
    p.add_argument("--structure-column")
    p.add_argument("--name")
    p.add_argument("--top-fraction", type=float, default=0.01)
    p.add_argument("--budget", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--init", type=int, default=10)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", required=True)
    p.add_argument("--acquisition", default="{}",
                   help="the matloop strategy's acquisition settings as YAML, e.g. '{skill_aware: false}'")
    p.add_argument("--surrogate", default="{}",
                   help="the matloop strategy's surrogate settings as YAML, e.g. '{loo_fit_maxiter: 100}'")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    try:
        s = benchmark_from_csv(a.csv, a.composition_column, a.target_column, a.goal, out_dir=a.out,
                               dataset_name=a.name, structure_column=a.structure_column, top_fraction=a.top_fraction,
                               budget=a.budget, batch_size=a.batch_size, init=a.init, seeds=a.seeds,
                               strategies=a.strategies,
                               acquisition=_settings_option(a.acquisition, AcquisitionSettings, "--acquisition"),
                               surrogate=_settings_option(a.surrogate, SurrogateSettings, "--surrogate"))
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_summary(s)
    return 0


def _settings_option(text: str, cls, option: str):
    """``--acquisition`` / ``--surrogate``: a YAML mapping of ``cls``'s fields; InputError naming the
    option otherwise."""
    import yaml
    from pydantic import ValidationError

    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"not YAML: {exc}", where=option) from None
    if not isinstance(values, dict):
        raise InputError(f"expected a mapping such as '{{key: value}}', got {text!r}", where=option)
    try:
        return cls(**values)
    except ValidationError as exc:
        raise InputError(str(exc), where=option) from None


if __name__ == "__main__":
    sys.exit(main())
