import csv
import json
import math
import os

import numpy as np
import pytest

from matloop.agents.decision.acquisition import Goal
from matloop.loop import benchmark as bm
from matloop.core.records import Candidate, InputError

# -- metrics by hand ------------------------------------------------------------------------------


def test_perfect_ordering():
    good = np.zeros(100, dtype=bool)
    good[[7, 8, 9, 10]] = True  # |G| = 4, N = 100
    order = np.array([7, 8, 9, 10, 0, 1, 2, 3, 4, 5])
    m = bm.run_metrics(order, good)
    np.testing.assert_allclose(m["recall"], [0.25, 0.5, 0.75, 1, 1, 1, 1, 1, 1, 1])
    assert m["evals_to_half"] == 2
    # random needs k (N+1)/(|G|+1) = 2 * 101 / 5 = 40.4 evaluations for k = 2
    assert m["AF_vs_random"] == pytest.approx(40.4 / 2)
    assert m["EF_at_budget"] == pytest.approx(1.0 / (10 / 100))


def test_worst_ordering():
    good = np.zeros(50, dtype=bool)
    good[-3:] = True
    m = bm.run_metrics(np.arange(20), good)
    assert m["recall_at_budget"] == 0 and m["evals_to_half"] is None
    assert m["AF_vs_random"] is None and m["EF_at_budget"] == 0


def test_half_recall_with_an_odd_good_set():
    good = np.zeros(30, dtype=bool)
    good[[1, 4, 6]] = True  # |G| = 3, k = ceil(1.5) = 2
    m = bm.run_metrics(np.array([0, 1, 2, 3, 4, 5]), good)
    assert m["evals_to_half"] == 5  # recall 1/3 at t = 2, 2/3 at t = 5
    assert m["AF_vs_random"] == pytest.approx(2 * 31 / 4 / 5)
    assert m["EF_at_budget"] == pytest.approx((2 / 3) / (6 / 30))


def test_window_good_set_and_top_fraction():
    y = np.array([0.5, 1.2, 1.7, 1.8, 1.1])
    assert bm.good_mask(y, Goal("window", 1.1, 1.7), 0.01).tolist() == [False, True, True, False, True]
    y = np.arange(150.0)
    g = bm.good_mask(y, Goal("min"), 0.01)  # ceil(1.5) = 2 smallest
    assert np.flatnonzero(g).tolist() == [0, 1]
    g = bm.good_mask(y, Goal("max"), 0.02)  # 3 largest
    assert np.flatnonzero(g).tolist() == [147, 148, 149]


def test_aggregates():
    r = bm.mean_ci([1.0, 2.0, 3.0])
    h = 4.302653 / math.sqrt(3)  # t(0.975, 2) * s / sqrt(n), s = 1
    assert r["mean"] == 2.0 and r["ci95"] == pytest.approx([2 - h, 2 + h], abs=1e-5)
    assert bm.mean_ci([None, 4.0]) == {"mean": 4.0, "ci95": [4.0, 4.0]}
    assert bm.censored_median([5.0, None, 3.0]) == 3.0
    assert bm.censored_median([None, None, 3.0]) is None
    assert bm.censored_median([1.0, 2.0, 3.0, 4.0]) == 2.5
    assert bm.censored_median([None, 2.0, 3.0, 4.0]) == 2.5


# -- deduplication ------------------------------------------------------------------------------


def test_dedup_keeps_the_best_label_per_goal():
    comps = ["Fe2O3", "Fe4O6", "Ni0.1Fe0.9", "NiFe9", "Fe0.9Ni0.1", "NiO"]
    y = np.array([3.0, 1.0, 5.0, 4.0, 6.0, 2.0])
    p = bm.deduplicate(comps, y, Goal("min"))
    assert p.n_merged_duplicates == 3 and len(p.candidates) == 3
    assert sorted(p.targets.tolist()) == [1.0, 2.0, 4.0]
    p = bm.deduplicate(comps, y, Goal("max"))
    assert sorted(p.targets.tolist()) == [2.0, 3.0, 6.0]


def test_dedup_window_rule():
    comps = ["Fe2O3", "Fe4O6", "Fe6O9", "NiO", "Ni2O2"]
    y = np.array([0.5, 1.4, 1.9, 3.0, 2.6])
    p = bm.deduplicate(comps, y, Goal("window", 1.0, 2.0))
    # inside: the value nearest the centre 1.5; all outside: the nearest to the window
    assert sorted(p.targets.tolist()) == [1.4, 2.6]
    p = bm.deduplicate(["NbN", "NbN", "NbN"], np.array([70.0, 80.0, 100.0]), Goal("window", 77, math.inf))
    assert p.targets.tolist() == [100.0]  # half-open window: the deepest inside


def test_dedup_with_structures_keeps_polymorphs_apart():
    from pymatgen.core import Lattice, Structure

    coords = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    a = Structure(Lattice.cubic(3.9), ["Sr", "Ti", "O", "O", "O"], coords)
    b = Structure(Lattice.cubic(4.3), ["Ti", "Sr", "O", "O", "O"], coords)  # A/B sites swapped
    p = bm.deduplicate(["SrTiO3"] * 3, np.array([1.0, 2.0, 3.0]), Goal("max"), structures=[a, b, a.copy()])
    assert p.n_merged_duplicates == 1 and sorted(p.targets.tolist()) == [2.0, 3.0]
    assert all(c.structure is not None for c in p.candidates)


def test_dedup_names_the_bad_row():
    with pytest.raises(InputError, match="pool.csv row 2"):
        bm.deduplicate(["Fe2O3", "Fe2O3)("], np.array([1.0, 2.0]), Goal("max"), file="pool.csv")
    with pytest.raises(InputError, match="row 3.*Xx"):
        bm.deduplicate(["Fe2O3", "NiO", "Xx9Qq"], np.array([1.0, 2.0, 3.0]), Goal("max"))


# -- runs ----------------------------------------------------------------------------------------


def _rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_benchmark_runs_share_the_init_draw_and_never_repeat(grid_csv, tmp_path):
    out = tmp_path / "bm"
    s = bm.benchmark_from_csv(grid_csv, "composition", "target", "min", out_dir=out, top_fraction=0.05,
                              budget=17, batch_size=6, init=5, seeds=2, strategies="random,greedy_rf,matloop",
                              log=lambda m: None)
    assert set(s) == {"dataset", "n_pool", "n_merged_duplicates", "n_good", "goal", "budget", "batch_size", "init",
                      "seeds", "strategies", "attainable"}
    assert s["n_pool"] == 286 and s["n_good"] == math.ceil(0.05 * 286) and s["goal"] == "min"
    for name, st in s["strategies"].items():
        assert set(st) == {"recall_at_budget", "evals_to_half", "AF_vs_random", "EF_at_budget", "curve",
                           "seconds_per_run", "cpu_seconds_per_run"}
        # CPU seconds are the load-independent speed figure: positive, and at most the wall time
        # on every core
        assert 0 < st["cpu_seconds_per_run"]["mean"] <= (os.cpu_count() or 1) * st["seconds_per_run"]["mean"] + 0.5
        assert len(st["curve"]) == 17 and st["curve"][0][0] == 1
        assert "median" in st["AF_vs_random"] and "n_reached" in st["evals_to_half"]
    assert json.loads((out / "summary.json").read_text()) == s
    assert (out / "recall.png").stat().st_size > 0 and (out / "best_so_far.png").stat().st_size > 0
    rows = _rows(out / "curves.csv")
    for seed in ("0", "1"):
        runs = {n: [r["candidate"] for r in rows if r["strategy"] == n and r["seed"] == seed] for n in s["strategies"]}
        firsts = {tuple(v[:5]) for v in runs.values()}
        assert len(firsts) == 1  # the same initial draw for every strategy
        for v in runs.values():
            assert len(v) == 17 and len(set(v)) == 17  # the budget, no candidate twice
    # a model that learns the smooth target beats random picks
    assert s["strategies"]["matloop"]["recall_at_budget"]["mean"] > s["strategies"]["random"]["recall_at_budget"]["mean"]


def test_window_benchmark_and_precomputed_features(tmp_path):
    """Labels follow the precomputed feature, not the composition: a forest on X finds the whole window, which random
    picks of the same budget do only 4 % of the time (C(8,3) / C(21,3))."""
    rng = np.random.default_rng(0)
    a = np.arange(21)
    comps = [f"Fe{x}Ni{20 - x}" if 0 < x < 20 else ("Fe" if x == 20 else "Ni") for x in a] * 2
    rank = rng.permutation(21)  # the label's order, unrelated to the Fe fraction
    y = np.r_[rank / 20, rank / 20 + 5]  # duplicates: the copy is far from the window
    X = np.c_[np.r_[rank, rank].astype(float), rng.standard_normal(42)]
    s = bm.run_benchmark(comps, y, "window:0.12:0.28", budget=8, batch_size=1, init=3, seeds=2,
                         strategies=["random", "rf_ucb"], X=X, out_dir=tmp_path, log=lambda m: None)
    assert s["n_pool"] == 21 and s["n_merged_duplicates"] == 21
    assert s["n_good"] == 3  # ranks 3, 4, 5
    assert s["strategies"]["rf_ucb"]["recall_at_budget"]["mean"] == 1.0
    good = {f"Fe{x}Ni{20 - x}" for x in a[np.isin(rank, (3, 4, 5))]}
    for r in _rows(tmp_path / "curves.csv"):  # each pick is scored against the merged label (the window's copy)
        assert int(r["good"]) == (r["formula"] in {_formula(c) for c in good})


def _formula(comp: str) -> str:
    from pymatgen.core import Composition

    from matloop.core.records import Candidate

    return Candidate.from_composition(Composition(comp).formula.replace(" ", "")).formula


# -- bad input -----------------------------------------------------------------------------------


def test_bad_input_names_file_row_and_column(tmp_path, grid_csv):
    with pytest.raises(InputError, match="not found"):
        bm.benchmark_from_csv(tmp_path / "nope.csv", "composition", "target", "max")
    with pytest.raises(InputError, match="'formula'"):
        bm.benchmark_from_csv(grid_csv, "formula", "target", "max")
    with pytest.raises(InputError, match="goal"):
        bm.benchmark_from_csv(grid_csv, "composition", "target", "maximum")
    p = tmp_path / "nan.csv"
    p.write_text("composition,target\nFe2O3,1.0\nNiO,nan\n")
    with pytest.raises(InputError, match=r"nan\.csv row 2, column 'target'"):
        bm.benchmark_from_csv(p, "composition", "target", "max")
    p.write_text("composition,target\nFe2O3,1.0\nNiO,inf\n")
    with pytest.raises(InputError, match="row 2"):
        bm.benchmark_from_csv(p, "composition", "target", "max")
    p.write_text("composition,target\n")
    with pytest.raises(InputError, match="empty pool"):
        bm.benchmark_from_csv(p, "composition", "target", "max")
    with pytest.raises(InputError, match="budget"):
        bm.benchmark_from_csv(grid_csv, "composition", "target", "max", budget=10_000)
    with pytest.raises(InputError, match="strateg"):
        bm.benchmark_from_csv(grid_csv, "composition", "target", "max", strategies="random,bogus")
    with pytest.raises(InputError, match="good set is empty"):
        bm.run_benchmark(["Fe", "Ni"], np.array([0.0, 1.0]), "window:5:6", budget=2, init=1, log=lambda m: None)


def test_benchmark_from_campaign_with_a_constraint(tmp_path):
    rows = ["composition,gap,heat"]
    gaps = [0.5, 1.2, 1.5, 1.9, 2.5, 1.4, 1.6, 3.0, 1.1, 0.0]
    heats = [0.0, 0.1, 0.5, 0.2, 0.0, 0.3, 0.1, 0.0, 0.25, 0.0]
    metals = ["Li", "Na", "K", "Rb", "Mg", "Ca", "Sr", "Ba", "Zn", "Cd"]
    for m, g, h in zip(metals, gaps, heats):
        rows.append(f"{m}O,{g},{h}")
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "c.yaml").write_text(
        "name: tiny\nobjective: {property: gap_ev, goal: window, window: [1.0, 2.0]}\n"
        "constraints: [{property: heat_ev, max: 0.2}]\n"
        "sources: [{kind: file, settings: {path: t.csv, composition_column: composition}}]\n"
        "oracles: [{name: t, kind: lookup, settings: {table: t.csv, key_column: composition, "
        "columns: {gap_ev: gap, heat_ev: heat}}}]\n"
        "batch_size: 2\nbudget: {evaluations: 6}\nstore: s.sqlite\n"
    )
    s = bm.benchmark_from_campaign(tmp_path / "c.yaml", seeds=2, strategies="random", init=2)
    # both hold for NaO (1.2, 0.1), RbO (1.9, 0.2) and SrO (1.6, 0.1)
    assert s["n_good"] == 3 and s["goal"] == "window:-inf:0"
    assert s["budget"] == 6 and s["batch_size"] == 2 and s["dataset"] == "tiny"


def test_additive_fractions_benchmark_appends_the_fraction_block_for_matloop_only(grid_csv, tmp_path, monkeypatch):
    from matloop.agents.decision import baselines
    from matloop.agents.decision.acquisition import SurrogateSettings

    seen, forest_widths = [], []
    real_replay, real_make = bm.replay, baselines.make_surrogate

    def spy_replay(spec, candidates, pool, agent, rng):
        inner = agent.then  # behind the shared initial design
        seen.append((type(inner).__name__, pool.X.shape[1], pool.fraction_columns,
                     getattr(getattr(inner, "config", None), "surrogate", None)))
        return real_replay(spec, candidates, pool, agent, rng)

    def spy_make(*a, **kw):
        model = real_make(*a, **kw)
        fit = model.fit

        def recording_fit(X, y, yvar=None):
            forest_widths.append(X.shape[1])
            return fit(X, y, yvar)

        model.fit = recording_fit
        return model

    monkeypatch.setattr(bm, "replay", spy_replay)
    monkeypatch.setattr(baselines, "make_surrogate", spy_make)
    out = tmp_path / "bm"
    s = bm.benchmark_from_csv(grid_csv, "composition", "target", "min", out_dir=out, top_fraction=0.05, budget=16,
                              batch_size=3, init=10, seeds=1, strategies="rf_ucb,matloop",
                              surrogate=SurrogateSettings(kernel_structure="additive_fractions"), log=lambda m: None)
    details = json.loads((out / "details.json").read_text())
    d, k = details["n_features"], details["n_fraction_columns"]
    assert k == 4  # Fe, Ni, Co, Mn: the element fractions, appended last
    matloop = [t for t in seen if t[0] == "DefaultAgent"]
    assert len(matloop) == 1 and matloop[0][1:3] == (d + k, k)
    assert matloop[0][3].kernel_structure == "additive_fractions"
    assert forest_widths and set(forest_widths) == {d}  # the forest baseline keeps the default features
    assert s["strategies"]["matloop"]["recall_at_budget"]["mean"] > 0


def test_every_run_is_the_campaign_loop(grid_csv, monkeypatch):
    """Each (seed, strategy) run goes through Campaign.run on its own in-memory store."""
    from matloop.loop import campaign

    runs = []
    real_run = campaign.Campaign.run

    def spy(self):
        summary = real_run(self)
        runs.append((str(self.store_path), summary["agent"]["evaluations"], summary["stop_reason"]))
        return summary

    monkeypatch.setattr(campaign.Campaign, "run", spy)
    bm.benchmark_from_csv(grid_csv, "composition", "target", "min", top_fraction=0.05, budget=12, batch_size=4,
                          init=4, seeds=2, strategies="random,greedy_rf", log=lambda m: None)
    assert len(runs) == 4
    assert all(path == ":memory:" and n == 12 and "evaluation budget" in why for path, n, why in runs)


def test_benchmark_replays_polymorphs_with_their_own_labels():
    """perov5-style pools: one composition, several structures, each with its own label."""
    from pymatgen.core import Lattice, Structure

    coords = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    structures, comps, y = [], [], []
    for k, (a_el, b_el) in enumerate([("Sr", "Ti"), ("Ba", "Ti"), ("Ca", "Zr"), ("Sr", "Zr"), ("Ba", "Zr"), ("Ca", "Ti")]):
        for swap in (False, True):
            sp = [b_el, a_el] if swap else [a_el, b_el]
            structures.append(Structure(Lattice.cubic(3.9 + 0.1 * k + 0.3 * swap), [*sp, "O", "O", "O"], coords))
            comps.append(f"{a_el}{b_el}O3")
            y.append(float(k) + (10.0 if swap else 0.0))  # the swapped polymorph is the better one
    X = np.c_[np.arange(12.0), np.array(y)]
    s = bm.run_benchmark(comps, np.array(y), "max", budget=12, batch_size=4, init=4, seeds=1, top_fraction=0.1,
                         strategies=["random"], X=X, structures=structures, log=lambda m: None)
    assert s["n_pool"] == 12 and s["n_merged_duplicates"] == 0
    # every polymorph was evaluated with its own label: the whole pool, so recall is 1
    assert s["strategies"]["random"]["recall_at_budget"]["mean"] == 1.0


# -- the benchmark's promises ----------------------------------------------------------------------


def _picks(curves_csv) -> dict:
    """(strategy, seed) -> candidate ids in acquisition order, from ``curves.csv``."""
    out: dict = {}
    for r in _rows(curves_csv):
        out.setdefault((r["strategy"], r["seed"]), []).append(r["candidate"])
    return out


def test_labels_never_acquired_are_never_seen(grid_csv, tmp_path):
    """Replace every label that no strategy acquires with noise: every strategy's picks stay identical."""
    import pandas as pd
    from pymatgen.core import Composition

    df = pd.read_csv(grid_csv)
    comps = df["composition"].tolist()
    # precomputed features (element fractions) keep the test fast; featurization never reads labels either way
    X = np.array([[Composition(c).get_atomic_fraction(el) for el in ("Fe", "Ni", "Co", "Mn")] for c in comps])
    kw = dict(top_fraction=0.05, budget=10, batch_size=3, init=4, seeds=1, strategies=bm.STRATEGIES, X=X,
              log=lambda m: None)
    bm.run_benchmark(comps, df["target"].to_numpy(), "min", out_dir=tmp_path / "true", **kw)
    picks = _picks(tmp_path / "true" / "curves.csv")
    assert {s for s, _ in picks} == set(bm.STRATEGIES)
    acquired = {c for seq in picks.values() for c in seq}
    ids = df["composition"].map(lambda f: Candidate.from_composition(f).id)
    hidden = ~ids.isin(acquired).to_numpy()
    assert hidden.sum() == len(df) - len(acquired) > 200
    noisy = df["target"].to_numpy().copy()
    noisy[hidden] = np.random.default_rng(7).uniform(-1.0, 2.0, int(hidden.sum()))
    bm.run_benchmark(comps, noisy, "min", out_dir=tmp_path / "noisy", **kw)
    assert _picks(tmp_path / "noisy" / "curves.csv") == picks


def _negative_hypergeometric(N: int, G: int, k: int) -> tuple[float, float]:
    """Mean and standard deviation of the draws (without replacement, uniformly at random) that find k of the G good
    among N, from the exact distribution P(T = t) = C(t-1, k-1) C(N-t, G-k) / C(N, G)."""
    from scipy.special import comb

    t = np.arange(k, N - G + k + 1)
    p = comb(t - 1, k - 1, exact=False) * comb(N - t, G - k, exact=False) / comb(N, G, exact=False)
    assert abs(p.sum() - 1) < 1e-9
    mean = float((t * p).sum())
    return mean, float(np.sqrt(((t - mean) ** 2 * p).sum()))


def test_random_strategy_matches_its_exact_expectation():
    """The random strategy's evaluations to half recall agree with the exact (negative hypergeometric) expectation
    the benchmark divides by, k (N+1) / (|G|+1), within 4 standard errors over 120 seeds."""
    from pymatgen.core.periodic_table import Element

    comps = [f"{Element.from_Z(z).symbol}O" for z in range(3, 60) if Element.from_Z(z).group != 18][:40]
    N, seeds = len(comps), 120
    y = np.arange(N, dtype=float)  # the good set: the top 20 % by label
    X = np.random.default_rng(0).standard_normal((N, 2))
    s = bm.run_benchmark(comps, y, "max", top_fraction=0.2, budget=N, batch_size=N, init=1, seeds=seeds,
                         strategies=["random"], X=X, log=lambda m: None)
    G = s["n_good"]
    k = math.ceil(G / 2)
    mean, sd = _negative_hypergeometric(N, G, k)
    assert G == 8 and mean == pytest.approx(k * (N + 1) / (G + 1))  # the formula the benchmark uses
    assert bm.run_metrics(np.arange(N), np.arange(N) >= N - G)["random_expected_evals_to_half"] == pytest.approx(mean)
    e2h = s["strategies"]["random"]["evals_to_half"]
    assert e2h["n_reached"] == seeds
    assert abs(e2h["mean"] - mean) < 4 * sd / math.sqrt(seeds), (e2h["mean"], mean, sd)
    # and the whole recall curve: after t random picks the expected recall is t / N (hypergeometric mean)
    curve = np.array([c for _, c in s["strategies"]["random"]["curve"]])
    t = np.arange(1, N + 1)
    sd_curve = np.sqrt(t * (G / N) * (1 - G / N) * (N - t) / (N - 1)) / G  # hypergeometric sd of one run's recall
    assert np.all(np.abs(curve - t / N) <= 4 * sd_curve / math.sqrt(seeds) + 1e-12)


@pytest.mark.parametrize(
    "option, value",
    [(o, v) for o in ("--acquisition", "--surrogate") for v in ("{bad", "[1]", "{no_such_setting: 1}")]
    + [("--acquisition", "{beta: -1}"), ("--surrogate", "{fit_maxiter: 0}")],
)
def test_bad_settings_option_is_a_clean_error(option, value, tmp_path, capsys):
    """``python -m matloop.loop.benchmark --acquisition/--surrogate``: bad YAML or settings exit 2,
    naming the option."""
    rc = bm.main(["pool.csv", "--composition-column", "formula", "--target-column", "y", "--goal", "max",
                  "--out", str(tmp_path / "out"), option, value])
    err = capsys.readouterr().err
    assert rc == 2 and option in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
