"""Cost-normalised retrospective benchmark of multi-fidelity agents (experimental vs PBE gaps).

The pool is every formula with both an experimental band gap (the top fidelity, the one
that counts) and a PBE gap (the cheap fidelity) in ``bandgap_expt_vs_pbe.csv``. Labels
are hidden and revealed, at a fidelity, when an agent pays for them.

Definitions (``summary.json``), following ``matloop.loop.benchmark`` where they overlap:

* **Pool.** Rows are deduplicated with ``matloop.loop.benchmark.deduplicate`` on the
  experimental gap (the PBE gap comes from the same row); features are the default
  matminer composition features (``pool_features``) projected onto their first
  ``n_components`` principal components over the pool (unlabelled, so nothing leaks).
* **Good set G** (``good_mask``): experimental gap in the goal window (default
  ``window:1.1:1.7`` eV, single-junction solar absorbers) or the top fraction.
* **Found.** A candidate counts once its *top-fidelity* measurement has been paid for and
  it is in G; cheap measurements find nothing by themselves.
* **Cost.** Each measurement costs ``costs[fidelity]`` (default PBE 1, experiment 10).
  ``recall(C)`` = |found within cumulative cost C| / |G|; ``cost_to_half`` = the
  cumulative cost at which recall first reaches 0.5 (null if the budget runs out first);
  ``recall_at_cost`` = recall at the fixed cost ``eval_cost`` (default: the budget).
* **Aggregates** over seeds: mean and 95 % Student-t interval (``mean_ci``);
  ``cost_to_half`` over the seeds that reached half recall (``n_reached``). The paired
  ratio ``cost_to_half(agent) / cost_to_half(multi_fidelity)`` is per seed, over the
  seeds where both reached half.

Agents (same ``n_init`` random candidates per seed, as the first iteration; rounds until
the budget is spent). Every run is the real campaign loop (``matloop.loop.replay``): a
lookup oracle per fidelity over the pool's labels, a cost budget, one ``Campaign`` on an
in-memory store per run, the agent from ``matloop.agents.decision.baselines``:

* ``single_fidelity``: top fidelity only. Init at the top, then the default agent (GP, UCB
  on the goal score) on experimental labels, ``round_cost / c_top`` per round.
* ``funnel`` (``FunnelAgent``): the rule a practitioner writes. A screening round has the
  default agent (GP on the PBE labels, goal = the widened PBE window) pick ``funnel_batch``
  candidates for PBE; the next round promotes every PBE-measured candidate whose PBE gap
  lies in the widened window (default ``[lo - 0.7, hi + 0.2]`` eV, because PBE
  underestimates gaps) to the top fidelity. The init candidates get PBE and the same rule.
* ``multi_fidelity`` (``MultiFidelityRoundAgent``): ``MultiFidelityGP`` on every label of
  both fidelities (in the order paid for) and ``choose_requests`` (default criterion
  ``ucb``: candidates by the single-fidelity UCB on the goal score, each at its best
  screen-or-confirm fidelity) up to ``round_cost`` per round. The init candidates are
  measured at both fidelities. Hyperparameters are refitted every ``refit_every`` rounds
  and reused (conditioning on the new labels only) in between.
* ``mf_variance``: the same model with ``choose_requests(criterion='variance_per_cost')``.
* ``mf_hits``: the same model with ``choose_requests(criterion='hits_per_cost')`` (candidates
  and fidelities by expected hits per unit cost; the default before ``ucb``).

Model comparison (``compare_models``): held-out RMSE and Gaussian NLL of the experimental
gap, given every pool candidate's PBE gap plus a fraction of the training candidates'
experimental gaps; ``splits`` random 80/20 splits (fractions nested within a split).
Figures: ``matloop.agents.modelling.multifidelity``.

Measured (``python benchmarks/multifidelity.py campaign --out DIR``: MP PBE, N = 1118,
|G| = 78, costs 1 / 10, budget 3000, rounds of 100, 10 initial candidates, funnel window
[0.4, 1.9] eV in batches of 40 PBE, 5 seeds, 19 min on 2 shared cores):

==============  =======================  =========  ==========================
agent           cost to half recall      reached    recall at cost 3000
==============  =======================  =========  ==========================
multi_fidelity  2108 [1959, 2257]        5 / 5      0.685 [0.646, 0.723]
funnel          2608 [2522, 2694]        5 / 5      0.531 [0.513, 0.549]
single_fidelity 1830 (the one seed)      1 / 5      0.500 [0.352, 0.648]
mf_variance     --                       0 / 5      0.269 [0.230, 0.308]
==============  =======================  =========  ==========================

(``mf_variance`` from ``--agents mf_variance``, same seeds: ranking by variance reduction
per unit cost screens nearly the whole pool at PBE and confirms too few candidates.)

The funnel needed 1.24x [1.12, 1.36] the multi-fidelity agent's cost (paired by seed),
not the ~3x of Fare et al. (npj Comput. Mater. 2022). The ceiling here is the scatter of
the experimental gap around a linear fit on the PBE gap (0.7 eV sd, wider than the
window): even
confirming candidates in the order of their calibrated PBE gap, with every PBE gap known
for free, takes 166 experiments (cost 1660) for half recall, so no agent can be much more
than ~1.5x cheaper than the funnel on this data. 19 of the 78 good candidates have a PBE
gap below 0.05 eV and the funnel's window holds only 45 of them (recall ceiling 0.58).
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from matloop.agents.decision.baselines import FunnelAgent, InitialDesign, MultiFidelityRoundAgent
from matloop.agents.modelling.features import FeatureSettings
from matloop.agents.decision.multifidelity import ChoiceSettings
from matloop.agents.modelling.multifidelity import MultiFidelityGP, MultiFidelitySettings
from matloop.agents.modelling.surrogates import GPSurrogate, SurrogateSettings, fit_pca
from matloop.core.goals import Goal
from matloop.core.protocols import Agent
from matloop.core.records import Candidate, InputError

from .benchmark import deduplicate, good_mask, mean_ci, pool_features, read_table
from .planning import build_agent
from .pool import PoolFeatures
from .replay import lookup_oracle, objective_of, replay, replay_spec, write_labels
from .spec import CampaignSpec, load_campaign
from .tiers import build_oracles

AGENTS = ("single_fidelity", "funnel", "multi_fidelity", "mf_variance", "mf_hits")
MODELS = ("mtgp", "mtgp_point", "mtgp_lcm2", "smfgp", "single", "single_pbe_feature", "pbe_linear")
PBE_COLUMNS = {"mp": "pbe_gap_mp_eV", "aflow": "pbe_gap_aflow_eV"}
CHEAP, TOP = 0, 1


@dataclass
class MFPool:
    """A deduplicated two-fidelity pool.

    Attributes:
        candidates: ``N`` candidates.
        X: ``N x k`` features (principal components of the standardised features).
        y: ``N x 2`` labels: column 0 the cheap fidelity (PBE), column 1 the top (experiment).
        good: ``N`` boolean mask of the good set (top fidelity).
        goal: the goal at the top fidelity.
        info: provenance: file, PBE source, sizes, merged duplicates, subsampling.
    """

    candidates: list[Candidate]
    X: np.ndarray
    y: np.ndarray
    good: np.ndarray
    goal: Goal
    info: dict


def load_bandgap_pool(
    path: str | Path,
    goal: Goal | str = "window:1.1:1.7",
    *,
    pbe_source: str = "mp",
    top_fraction: float = 0.01,
    n_components: int = 30,
    max_pool: int | None = None,
    seed: int = 0,
    features: FeatureSettings | None = None,
) -> MFPool:
    """Read ``bandgap_expt_vs_pbe.csv`` into a two-fidelity pool.

    Args:
        path: the CSV (columns ``reduced_formula``, ``expt_gap_eV`` and the PBE columns).
        goal: goal on the experimental gap.
        pbe_source: ``mp`` (Materials Project), ``aflow``, or ``either`` (MP where present,
            else AFLOW).
        top_fraction: size of the good set for max/min goals.
        n_components: principal components kept (None or 0: all standardised features).
        max_pool: subsample the pool to this many candidates (seeded) to save time.
        seed: seed of the subsample.
        features: featurizer settings (default: the campaign default).

    Raises:
        InputError: missing file or column, unknown PBE source.
    """
    path = Path(path)
    goal = Goal.parse(goal) if isinstance(goal, str) else goal
    df = read_table(path, ["reduced_formula", "expt_gap_eV"] + list(PBE_COLUMNS.values()),
                    text_columns=("reduced_formula",))
    if pbe_source in PBE_COLUMNS:
        pbe = df[PBE_COLUMNS[pbe_source]].to_numpy(dtype=float)
    elif pbe_source == "either":
        pbe = df["pbe_gap_mp_eV"].fillna(df["pbe_gap_aflow_eV"]).to_numpy(dtype=float)
    else:
        raise InputError(f"unknown PBE source {pbe_source!r}; known: mp, aflow, either", where="pbe_source")
    expt = df["expt_gap_eV"].to_numpy(dtype=float)
    pool = two_fidelity_pool(
        df["reduced_formula"].astype(str).tolist(), pbe, expt, goal, file=str(path), top_fraction=top_fraction,
        n_components=n_components, max_pool=max_pool, seed=seed, features=features,
    )
    pool.info["pbe_source"] = pbe_source
    return pool


def two_fidelity_pool(
    formulas: Sequence[str],
    cheap: np.ndarray,
    top: np.ndarray,
    goal: Goal | str,
    *,
    file: str = "",
    top_fraction: float = 0.01,
    n_components: int | None = 30,
    max_pool: int | None = None,
    seed: int = 0,
    features: FeatureSettings | None = None,
) -> MFPool:
    """A two-fidelity pool from parallel arrays: rows with both labels finite are kept and
    deduplicated on the top-fidelity label (the cheap label comes from the same row).

    Args:
        formulas: one composition per row.
        cheap: cheap-fidelity label per row (NaN = unknown; the row is dropped).
        top: top-fidelity label per row (the one that counts).
        goal: goal on the top fidelity.
        file: file name for messages and provenance.
        top_fraction, n_components, max_pool, seed, features: as in ``load_bandgap_pool``.
    """
    goal = Goal.parse(goal) if isinstance(goal, str) else goal
    pbe = np.asarray(cheap, dtype=float)
    expt = np.asarray(top, dtype=float)
    keep = np.flatnonzero(np.isfinite(pbe) & np.isfinite(expt))
    if len(keep) < 3:
        raise InputError(f"only {len(keep)} rows have both fidelities' labels", file=file)
    pool = deduplicate(np.asarray(formulas, dtype=object)[keep].tolist(), expt[keep], goal, file=file)
    rows = keep[pool.source_rows]
    cands = pool.candidates
    info = {"file": file, "n_rows_with_both": int(len(keep)), "n_merged_duplicates": int(pool.n_merged_duplicates)}
    if max_pool is not None and max_pool < len(rows):
        sub = np.sort(np.random.default_rng(seed).choice(len(rows), max_pool, replace=False))
        rows, cands = rows[sub], [cands[i] for i in sub]
        info["subsampled_from"] = int(len(pool.source_rows))
    y = np.column_stack([pbe[rows], expt[rows]])
    X = pool_features(cands, features)
    if n_components:
        view = fit_pca(X, 1.0)
        k = int(min(n_components, view.shape[1]))
        X = np.asarray((np.asarray(X, dtype=float) - view.mean) @ view.components[:, :k])
        info["pca_components"] = k
    info.update(n_pool=len(cands), n_features=int(X.shape[1]))
    good = good_mask(y[:, TOP], goal, top_fraction)
    info["n_good"] = int(good.sum())
    return MFPool(cands, np.asarray(X, dtype=float), y, good, goal, info)


def _bounds(X: np.ndarray) -> np.ndarray:
    return np.stack([X.min(axis=0), X.max(axis=0)])


# -- which multi-fidelity model ----------------------------------------------------------------


def _gauss_nll(y, mean, var) -> float:
    var = np.maximum(var, 1e-12)
    return float(np.mean(0.5 * np.log(2 * math.pi * var) + 0.5 * (y - mean) ** 2 / var))


def _predict_model(name: str, pool: MFPool, top_idx: np.ndarray, test: np.ndarray, seed: int, max_fit_points: int):
    """Mean and predictive variance of the experimental gap at ``test`` for model ``name``."""
    X, y = pool.X, pool.y
    N = len(X)
    if name == "pbe_linear":  # least-squares top = a * cheap + b on the candidates with both labels
        A = np.column_stack([y[top_idx, CHEAP], np.ones(len(top_idx))])
        coef, *_ = np.linalg.lstsq(A, y[top_idx, TOP], rcond=None)
        resid = y[top_idx, TOP] - A @ coef
        return coef[0] * y[test, CHEAP] + coef[1], np.full(len(test), resid.var(ddof=2))
    if name in ("single", "single_pbe_feature"):
        Xf = X if name == "single" else np.column_stack([X, y[:, CHEAP]])
        g = GPSurrogate(SurrogateSettings(max_fit_points=max_fit_points), bounds=_bounds(Xf), seed=seed)
        g.fit(Xf[top_idx], y[top_idx, TOP])
        mu, sd = g.predict(Xf[test])
        return mu, sd**2 + g.noise_variance()
    settings = {
        "mtgp": MultiFidelitySettings(kind="mtgp", max_fit_points=max_fit_points),
        "mtgp_point": MultiFidelitySettings(kind="mtgp", point_term=True, max_fit_points=max_fit_points),
        "mtgp_lcm2": MultiFidelitySettings(kind="mtgp", components=2, max_fit_points=max_fit_points),
        "smfgp": MultiFidelitySettings(kind="smfgp", max_fit_points=max_fit_points),
        "smfgp_botorch_prior": MultiFidelitySettings(
            kind="smfgp", smfgp_prior="botorch", max_fit_points=max_fit_points
        ),
    }[name]
    Xtr = np.vstack([X, X[top_idx]])
    fid = np.r_[np.full(N, CHEAP), np.full(len(top_idx), TOP)]
    ytr = np.r_[y[:, CHEAP], y[top_idx, TOP]]
    m = MultiFidelityGP(settings, bounds=_bounds(X), seed=seed).fit(Xtr, fid, ytr)
    mu, sd = m.predict(X[test], TOP, observation_noise=True)
    return mu, sd**2, m


def compare_models(
    pool: MFPool,
    *,
    fractions: Sequence[float] = (0.1, 0.25, 0.5),
    splits: int = 5,
    test_fraction: float = 0.2,
    models: Sequence[str] = MODELS,
    max_fit_points: int = 400,
    log=None,
) -> dict:
    """Held-out RMSE / NLL of the top fidelity for each model (see the module docstring).

    Returns:
        ``{"fractions": ..., "models": {name: {fraction: {"rmse": mean_ci, "nll": mean_ci,
        "seconds": mean, "task_correlation": mean_ci (multi-fidelity models)}}}, ...}``.
    """
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    N = len(pool.X)
    res = {m: {f: {"rmse": [], "nll": [], "seconds": [], "corr": []} for f in fractions} for m in models}
    for s in range(splits):
        perm = np.random.default_rng(1000 + s).permutation(N)
        n_test = int(round(test_fraction * N))
        test, train = perm[:n_test], perm[n_test:]
        for f in fractions:
            top_idx = train[: max(2, int(round(f * len(train))))]  # nested across fractions
            for name in models:
                t0 = time.perf_counter()
                out = _predict_model(name, pool, top_idx, test, s, max_fit_points)
                mu, var = out[0], out[1]
                r = res[name][f]
                r["rmse"].append(float(np.sqrt(np.mean((mu - pool.y[test, TOP]) ** 2))))
                r["nll"].append(_gauss_nll(pool.y[test, TOP], mu, var))
                r["seconds"].append(time.perf_counter() - t0)
                if len(out) > 2:
                    r["corr"].append(float(out[2].task_correlation()[CHEAP, TOP]))
                log(f"[models] split {s} fraction {f:g} {name}: RMSE {r['rmse'][-1]:.3f} NLL {r['nll'][-1]:.3f} "
                    f"{r['seconds'][-1]:.1f} s" + (f" corr {r['corr'][-1]:.2f}" if len(out) > 2 else ""))
    summary = {
        "n_pool": N,
        "n_test": int(round(test_fraction * N)),
        "fractions": list(fractions),
        "splits": splits,
        "pool": pool.info,
        "pbe_as_prediction_rmse": float(np.sqrt(np.mean((pool.y[:, CHEAP] - pool.y[:, TOP]) ** 2))),
        "models": {},
    }
    for name in models:
        summary["models"][name] = {}
        for f in fractions:
            r = res[name][f]
            entry = {"rmse": mean_ci(r["rmse"]), "nll": mean_ci(r["nll"]), "seconds": float(np.mean(r["seconds"]))}
            if r["corr"]:
                entry["task_correlation"] = mean_ci(r["corr"])
            summary["models"][name][str(f)] = entry
    return summary


# -- agents ------------------------------------------------------------------------------------

LABEL = "target"  # the property both lookup oracles report in a replay
ORACLES = ("cheap", "top")  # oracle names (and label columns) by fidelity


def _funnel_window(goal: Goal, widen: tuple[float, float]) -> Goal:
    if goal.kind != "window":
        raise InputError("the funnel agent needs a window goal", where="goal")
    return Goal("window", goal.lo - widen[0], goal.hi + widen[1])


@dataclass
class _Replay:
    """What every run of one benchmark shares: the labels table, the costs and the pool features."""

    table: Path
    costs: dict[int, float]
    budget: float
    round_cost: float
    pool: MFPool

    def spec(self, fidelities: Sequence[int], batch_size: int, objective: Goal | None = None) -> CampaignSpec:
        """A campaign over the lookup oracles of ``fidelities`` with the cost budget."""
        oracles = [lookup_oracle(ORACLES[f], self.table, LABEL, ORACLES[f], cost=self.costs[f], fidelity=f)
                   for f in fidelities]
        return replay_spec("mf_benchmark", self.table, oracles, objective_of(LABEL, objective or self.pool.goal),
                           {"cost": self.budget}, max(1, int(batch_size)))


def _agent_run(name: str, r: _Replay, init_idx: np.ndarray, funnel_widen, funnel_batch, model_settings,
               refit_every) -> tuple[CampaignSpec, Agent, Callable[[], dict]]:
    """The campaign, the agent (behind its initial design) and its run statistics, for one agent name."""
    costs = {ORACLES[f]: c for f, c in r.costs.items()}
    if name == "single_fidelity":
        spec = r.spec([TOP], r.round_cost // r.costs[TOP])
        first = [(int(i), ORACLES[TOP]) for i in init_idx]
        return spec, InitialDesign(first, build_agent(spec, build_oracles(spec)), costs), lambda: {}
    if name == "funnel":
        window = _funnel_window(r.pool.goal, funnel_widen)
        screen_spec = r.spec([CHEAP], funnel_batch, objective=window)
        agent = FunnelAgent(build_agent(screen_spec, build_oracles(screen_spec)), ORACLES[CHEAP], ORACLES[TOP], LABEL,
                            window, costs)
        first = [(int(i), ORACLES[CHEAP]) for i in init_idx]
        return (r.spec([CHEAP, TOP], funnel_batch), InitialDesign(first, agent, costs),
                lambda: {"funnel_window": [window.lo, window.hi], "rounds": agent.rounds})
    choice = ChoiceSettings(criterion={"mf_variance": "variance_per_cost", "mf_hits": "hits_per_cost"}.get(name, "ucb"))
    first = [(int(i), ORACLES[f]) for i in init_idx for f in (CHEAP, TOP)]
    agent = MultiFidelityRoundAgent(list(ORACLES), [r.costs[CHEAP], r.costs[TOP]], LABEL, r.pool.goal, model_settings,
                                    choice, r.round_cost, refit_every, first=first)
    spec = r.spec([CHEAP, TOP], r.round_cost // min(r.costs.values()))
    return spec, InitialDesign(first, agent), lambda: dict(agent.stats)


def _one_run(name: str, r: _Replay, seed: int, init_idx: np.ndarray, **settings) -> tuple[list, list, dict]:
    """One agent's requests (pool indices and fidelities, in the order paid for) and its statistics."""
    spec, agent, stats = _agent_run(name, r, init_idx, **settings)
    rng = np.random.default_rng([seed, AGENTS.index(name)])
    row = {c.id: i for i, c in enumerate(r.pool.candidates)}
    X = PoolFeatures(r.pool.X)
    requests = replay(spec, r.pool.candidates, X, agent, rng)
    return [row[cid] for cid, _ in requests], [ORACLES.index(o) for _, o in requests], stats()


def cost_metrics(run_index: Sequence[int], run_fidelity: Sequence[int], good: np.ndarray, costs: dict,
                 grid: np.ndarray, eval_cost: float) -> dict:
    """Recall against cumulative cost for one run.

    Args:
        run_index, run_fidelity: requests in the order paid for.
        good: ``N`` mask of the good set.
        costs: cost per fidelity.
        grid: costs at which to report the recall curve.
        eval_cost: the fixed cost for ``recall_at_cost``.

    Returns:
        ``recall_curve`` (on ``grid``), ``cost_to_half`` (or None), ``recall_at_cost``,
        ``total_cost``, ``n_by_fidelity``.
    """
    idx = np.asarray(run_index, dtype=int)
    fid = np.asarray(run_fidelity, dtype=int)
    n_good = int(good.sum())
    cum = np.cumsum([costs[int(f)] for f in fid]) if len(fid) else np.zeros(0)
    seen: set[int] = set()
    hits = np.zeros(len(idx))
    for t, (i, f) in enumerate(zip(idx, fid)):
        if f == TOP and good[i] and i not in seen:
            seen.add(int(i))
            hits[t] = 1
    recall = np.cumsum(hits) / n_good

    def at(c):
        """Recall once cumulative cost ``c`` is spent."""
        k = np.searchsorted(cum, c + 1e-9, side="right")
        return float(recall[k - 1]) if k > 0 else 0.0

    reached = np.flatnonzero(recall >= 0.5)
    return {
        "recall_curve": [at(c) for c in grid],
        "cost_to_half": float(cum[reached[0]]) if len(reached) else None,
        "recall_at_cost": at(eval_cost),
        "total_cost": float(cum[-1]) if len(cum) else 0.0,
        "n_by_fidelity": {str(f): int(np.sum(fid == f)) for f in sorted(costs)},
    }


def run_mf_benchmark(
    pool: MFPool,
    *,
    costs: dict[int, float] | None = None,
    budget: float = 3000.0,
    round_cost: float = 100.0,
    n_init: int = 10,
    seeds: int = 5,
    agents: Sequence[str] = ("single_fidelity", "funnel", "multi_fidelity"),
    eval_cost: float | None = None,
    funnel_widen: tuple[float, float] = (0.7, 0.2),
    funnel_batch: int = 40,
    model_settings: MultiFidelitySettings | None = None,
    refit_every: int = 3,
    out_dir: str | Path | None = None,
    log=None,
) -> dict:
    """Run every agent for ``seeds`` seeds; write ``summary.json``, ``runs.json`` and ``recall_vs_cost.png``.

    Args:
        pool: the two-fidelity pool.
        costs: cost per fidelity (default ``{0: 1, 1: 10}``).
        budget: total cost per run.
        round_cost: cost planned per round (single-fidelity: ``round_cost / c_top``
            candidates; multi-fidelity: ``choose_requests(max_cost=round_cost)``).
        n_init: random initial candidates (the same per seed for every agent).
        seeds: runs per agent.
        agents: names from ``AGENTS``.
        eval_cost: fixed cost for ``recall_at_cost`` (default: the budget).
        funnel_widen: the funnel promotes PBE gaps in ``[lo - widen[0], hi + widen[1]]``.
        funnel_batch: PBE candidates per funnel round.
        model_settings: the multi-fidelity GP settings (default ``MultiFidelitySettings()``).
        refit_every: multi-fidelity hyperparameter refit period in rounds.
        out_dir: output folder (None: nothing written).
        log: progress callable (default: stderr).
    """
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    costs = {int(k): float(v) for k, v in (costs or {CHEAP: 1.0, TOP: 10.0}).items()}
    if set(costs) != {CHEAP, TOP} or min(costs.values()) <= 0:
        raise InputError(f"costs must give positive costs for fidelities 0 and 1, got {costs}", where="costs")
    bad = [a for a in agents if a not in AGENTS]
    if bad:
        raise InputError(f"unknown agents {bad}; known: {', '.join(AGENTS)}", where="agents")
    eval_cost = float(eval_cost or budget)
    model_settings = model_settings or MultiFidelitySettings()
    grid = np.linspace(0.0, budget, 121)
    runs: dict[str, list] = {a: [] for a in agents}
    N = len(pool.X)
    settings = dict(funnel_widen=funnel_widen, funnel_batch=funnel_batch, model_settings=model_settings,
                    refit_every=refit_every)
    with tempfile.TemporaryDirectory(prefix="matloop-mf-benchmark-") as tmp:
        table = write_labels(Path(tmp) / "labels.csv", pool.candidates,
                             {ORACLES[CHEAP]: pool.y[:, CHEAP], ORACLES[TOP]: pool.y[:, TOP]})
        r = _Replay(table, costs, float(budget), float(round_cost), pool)
        for seed in range(seeds):
            init_idx = np.random.default_rng(seed).choice(N, n_init, replace=False)
            for name in agents:
                t0 = time.perf_counter()
                index, fidelity, extra = _one_run(name, r, seed, init_idx, **settings)
                m = cost_metrics(index, fidelity, pool.good, costs, grid, eval_cost)
                m.update(extra, seconds=time.perf_counter() - t0, index=index, fidelity=fidelity)
                runs[name].append(m)
                c2h = m["cost_to_half"]
                log(f"[mf] seed {seed} {name}: cost_to_half {c2h if c2h is None else round(c2h)}, "
                    f"recall@{eval_cost:g} {m['recall_at_cost']:.3f}, evaluations {m['n_by_fidelity']}, "
                    f"{m['seconds']:.0f} s")

    summary = _mf_summary(pool, costs, budget, round_cost, eval_cost, n_init, seeds, funnel_widen, model_settings,
                          refit_every, runs, grid)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        (out / "runs.json").write_text(json.dumps({"definitions": __doc__, "runs": runs}, default=float))
        plot_recall_vs_cost(runs, grid, summary, out / "recall_vs_cost.png")
    return summary


def _mf_summary(pool, costs, budget, round_cost, eval_cost, n_init, seeds, funnel_widen, model_settings, refit_every,
                runs, grid) -> dict:
    """The ``summary.json`` content: the settings, per agent the aggregates, and the paired cost ratios."""
    summary = {
        "pool": pool.info,
        "goal": str(pool.goal),
        "n_good": int(pool.good.sum()),
        "costs": {str(k): v for k, v in costs.items()},
        "budget": budget,
        "round_cost": round_cost,
        "eval_cost": eval_cost,
        "n_init": n_init,
        "seeds": seeds,
        "funnel_widen": list(funnel_widen),
        "model": model_settings.model_dump(),
        "refit_every": refit_every,
        "agents": {},
    }
    for name, rs in runs.items():
        c2h = [r["cost_to_half"] for r in rs]
        summary["agents"][name] = {
            "cost_to_half": {**mean_ci(c2h), "n_reached": sum(c is not None for c in c2h), "per_seed": c2h},
            "recall_at_cost": {
                **mean_ci([r["recall_at_cost"] for r in rs]),
                "per_seed": [r["recall_at_cost"] for r in rs],
            },
            "evaluations": {f: float(np.mean([r["n_by_fidelity"][f] for r in rs])) for f in rs[0]["n_by_fidelity"]},
            "seconds_per_run": float(np.mean([r["seconds"] for r in rs])),
            "curve": [[float(c), float(v)] for c, v in zip(grid, np.mean([r["recall_curve"] for r in rs], axis=0))],
        }
    ref = "multi_fidelity" if "multi_fidelity" in runs else None
    if ref:
        for name, rs in runs.items():
            if name == ref:
                continue
            ratios = [a["cost_to_half"] / b["cost_to_half"] for a, b in zip(rs, runs[ref])
                      if a["cost_to_half"] is not None and b["cost_to_half"] is not None]
            summary["agents"][name]["cost_ratio_vs_multi_fidelity"] = {**mean_ci(ratios), "n_pairs": len(ratios)}
    return summary


def plot_recall_vs_cost(runs: dict, grid: np.ndarray, summary: dict, path: Path) -> None:
    """Mean recall against cumulative cost per agent with 95 % Student-t bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import t as student_t

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name, rs in runs.items():
        R = np.array([r["recall_curve"] for r in rs])
        m = R.mean(axis=0)
        ax.plot(grid, m, label=name)
        if len(rs) > 1:
            h = student_t.ppf(0.975, len(rs) - 1) * R.std(axis=0, ddof=1) / math.sqrt(len(rs))
            ax.fill_between(grid, np.clip(m - h, 0, 1), np.clip(m + h, 0, 1), alpha=0.2)
    ax.axhline(0.5, color="k", lw=0.7, ls=":")
    c = summary["costs"]
    ax.set_xlabel(f"cumulative cost (PBE {c['0']:g}, experiment {c['1']:g} per candidate)")
    ax.set_ylabel(f"recall of experimental good set (|G| = {summary['n_good']})")
    ax.set_title(f"{summary['goal']} eV, N = {summary['pool']['n_pool']}, {summary['seeds']} seeds, 95 % t-bands")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def mf_benchmark_from_campaign(
    path: str | Path,
    *,
    out_dir: str | Path | None = None,
    seeds: int | None = None,
    strategies: Sequence[str] | str | None = None,
    budget: float | None = None,
    init: int | None = None,
    round_cost: float | None = None,
    log=None,
) -> dict:
    """Benchmark a two-fidelity campaign (``agent.fidelity.strategy: multi_fidelity``) offline.

    The pool is the campaign's first ``file`` source; the two fidelities are its two lookup
    oracles reporting the objective property (their tables' columns give the labels, their
    ``cost`` the costs); the good set is the objective on the top fidelity. Runs
    ``run_mf_benchmark`` with the campaign's multi-fidelity model settings. Defaults:
    budget = the campaign's cost budget, init = ``agent.fidelity.init``, round cost = 10
    top-fidelity measurements, strategies single_fidelity, funnel, multi_fidelity. Features:
    the default composition features, projected onto 30 principal components when the
    campaign sets ``agent.fidelity.pca_variance`` (as ``benchmarks/multifidelity.py``).
    """
    import pandas as pd

    spec = load_campaign(path)
    file = str(path)
    if spec.agent.fidelity.strategy != "multi_fidelity" or spec.objectives:
        raise InputError("a multi-fidelity benchmark needs one objective and agent.fidelity.strategy: "
                         "multi_fidelity", file=file, where="agent.fidelity.strategy")
    src = next((s for s in spec.sources if s.kind == "file"), None)
    if src is None:
        raise InputError("a benchmark campaign needs a 'file' source", file=file, where="sources")
    fids = spec.fidelity_oracles()
    if len(fids) != 2 or any(o.kind != "lookup" for o in fids):
        raise InputError(f"a multi-fidelity benchmark needs exactly two lookup oracles reporting "
                         f"{spec.primary_objective.property!r}, found {[(o.name, o.kind) for o in fids]}",
                         file=file, where="oracles")
    prop = spec.primary_objective.property
    labels = []
    for i, o in enumerate(fids):
        table = spec.resolve(o.settings.get("table", src.settings.get("path")))
        key = o.settings.get("key_column", src.settings.get("composition_column", "composition"))
        col = o.settings.get("columns", {}).get(prop, prop)
        df = read_table(table, (key, col), not_found="lookup table not found", where=f"oracles[{o.name}].settings",
                        text_columns=(key,))
        labels.append(df.groupby(df[key].astype(str))[col].apply(lambda v: pd.to_numeric(v, errors="coerce").iloc[0]))
    formulas = sorted(set(labels[0].index) & set(labels[1].index))
    obj = spec.primary_objective
    goal = Goal.from_objective(obj.goal, obj.window)
    fs = spec.agent.fidelity
    pca = fs.pca_variance
    pool = two_fidelity_pool(
        formulas, labels[0].loc[formulas].to_numpy(float), labels[1].loc[formulas].to_numpy(float), goal,
        file=file, n_components=30 if pca is not None else None,
    )
    costs = {CHEAP: float(fids[0].cost), TOP: float(fids[1].cost)}
    if budget is None:
        if spec.budget.cost is None:
            raise InputError("give --budget (cost units): the campaign has no budget.cost", file=file, where="budget")
        budget = float(spec.budget.cost)
    if isinstance(strategies, str):
        strategies = [s for s in strategies.split(",") if s]
    return run_mf_benchmark(
        pool, costs=costs, budget=float(budget), round_cost=float(round_cost or 10 * costs[TOP]),
        n_init=int(init if init is not None else max(fs.init, 10)), seeds=int(seeds or 5),
        agents=strategies or ("single_fidelity", "funnel", "multi_fidelity"),
        model_settings=MultiFidelitySettings(**fs.model), out_dir=out_dir, log=log,
    )


def print_mf_summary(summary: dict) -> None:
    """One line per agent: cost to half recall (CI95, seeds reached) and recall at the budget."""
    print(f"{summary['pool'].get('file', '')}: N={summary['pool']['n_pool']}, |G|={summary['n_good']}, "
          f"goal {summary['goal']}, costs {summary['costs']}, budget {summary['budget']:g}, {summary['seeds']} seeds")
    for name, r in summary["agents"].items():
        c = r["cost_to_half"]
        c2h = "--" if c["mean"] is None else f"{c['mean']:.0f} [{c['ci95'][0]:.0f}, {c['ci95'][1]:.0f}]"
        rc = r["recall_at_cost"]
        print(f"  {name:<16} cost to half recall {c2h} ({c['n_reached']}/{summary['seeds']} seeds), "
              f"recall at {summary['eval_cost']:g}: {rc['mean']:.3f} [{rc['ci95'][0]:.3f}, {rc['ci95'][1]:.3f}]")
