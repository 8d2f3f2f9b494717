"""Cost-normalised multi-fidelity benchmark: metrics with known answers, agents on a small pool."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from matloop.agents.decision.acquisition import Goal
from matloop.agents.modelling.multifidelity import MultiFidelitySettings
from matloop.loop.mf_benchmark import MFPool, cost_metrics, load_bandgap_pool, run_mf_benchmark
from matloop.core.records import Candidate, InputError

torch.set_num_threads(1)


def test_cost_metrics_known_answer():
    good = np.array([True, True, False, True, False, False])
    costs = {0: 1.0, 1: 10.0}
    # cheap look at 0 (1), top 0 (11, found 1/3), top 2 (21, miss), cheap 1 (22),
    # top 1 (32, found 2/3 >= 0.5), top 0 again (42, no double count), top 3 (52, 3/3)
    index = [0, 0, 2, 1, 1, 0, 3]
    fidelity = [0, 1, 1, 0, 1, 1, 1]
    grid = np.array([0.0, 10.0, 11.0, 31.9, 32.0, 100.0])
    m = cost_metrics(index, fidelity, good, costs, grid, eval_cost=40.0)
    assert m["cost_to_half"] == 32.0
    assert m["recall_curve"] == pytest.approx([0, 0, 1 / 3, 1 / 3, 2 / 3, 1.0])
    assert m["recall_at_cost"] == pytest.approx(2 / 3)
    assert m["total_cost"] == 52.0
    assert m["n_by_fidelity"] == {"0": 2, "1": 5}
    # a cheap measurement of a good candidate finds nothing
    assert cost_metrics([0, 1, 3], [0, 0, 0], good, costs, grid, 40.0)["cost_to_half"] is None


def _synthetic_pool(n: int = 120, seed: int = 0) -> MFPool:
    """2-D pool; the top fidelity is 1.3 x the cheap one + 0.4; good = top in [1.1, 1.7]."""
    rng = np.random.default_rng(seed)
    X = rng.random((n, 2))
    cheap = np.clip(np.sin(4 * X[:, 0]) + X[:, 1], 0, None)
    top = 1.3 * cheap + 0.4 + 0.05 * rng.standard_normal(n)
    goal = Goal("window", 1.1, 1.7)
    cands = [Candidate.from_composition(f"Fe{i + 1}O", source="test") for i in range(n)]
    return MFPool(cands, X, np.column_stack([cheap, top]), goal.contains(top), goal, {"n_pool": n})


def test_agents_respect_budget_and_fidelity_rules(tmp_path):
    pool = _synthetic_pool()
    assert 10 < pool.good.sum() < 60
    s = run_mf_benchmark(
        pool, costs={0: 1.0, 1: 10.0}, budget=160.0, round_cost=50.0, n_init=4, seeds=1,
        agents=("single_fidelity", "funnel", "multi_fidelity"), funnel_widen=(0.7, 0.2), funnel_batch=5,
        model_settings=MultiFidelitySettings(fit_maxiter=25), out_dir=tmp_path, log=lambda m: None,
    )
    runs = json.loads((tmp_path / "runs.json").read_text())["runs"]
    assert (tmp_path / "recall_vs_cost.png").stat().st_size > 1000
    for name, (r,) in runs.items():
        assert r["total_cost"] <= 160.0
        pairs = list(zip(r["index"], r["fidelity"]))
        assert len(set(pairs)) == len(pairs), name  # nothing measured twice at one fidelity
    sf = runs["single_fidelity"][0]
    assert set(sf["fidelity"]) == {1} and sf["total_cost"] == 160.0
    # the funnel promotes exactly the screened candidates whose cheap value is in the widened window
    fu = runs["funnel"][0]
    screened = [i for i, f in zip(fu["index"], fu["fidelity"]) if f == 0]
    promoted = [i for i, f in zip(fu["index"], fu["fidelity"]) if f == 1]
    in_window = [i for i in screened if 0.4 <= pool.y[i, 0] <= 1.9]
    assert promoted and promoted == in_window[: len(promoted)]
    mf = runs["multi_fidelity"][0]
    assert mf["n_by_fidelity"]["0"] >= 4 and mf["n_by_fidelity"]["1"] >= 4
    assert s["agents"]["multi_fidelity"]["evaluations"]["1"] >= 4
    assert "cost_ratio_vs_multi_fidelity" in s["agents"]["funnel"]


def test_bad_costs_and_agents():
    pool = _synthetic_pool(30)
    with pytest.raises(InputError):
        run_mf_benchmark(pool, costs={0: 1.0, 1: 0.0}, seeds=1, log=lambda m: None)
    with pytest.raises(InputError):
        run_mf_benchmark(pool, agents=("oracle",), seeds=1, log=lambda m: None)


def test_load_bandgap_pool(shared_data):
    path = shared_data / "bandgap_expt_vs_pbe" / "bandgap_expt_vs_pbe.csv"
    if not path.exists():
        pytest.skip(f"{path} not found")
    pool = load_bandgap_pool(path, "window:1.1:1.7", n_components=10)
    # every formula with both an MP PBE gap and an experimental gap, one per composition
    assert 1000 < pool.info["n_pool"] <= 1118
    assert pool.X.shape == (pool.info["n_pool"], 10)
    assert np.all(np.isfinite(pool.y))
    assert pool.good.sum() == np.sum((pool.y[:, 1] >= 1.1) & (pool.y[:, 1] <= 1.7))
    assert np.corrcoef(pool.y[:, 0], pool.y[:, 1])[0, 1] > 0.8  # PBE tracks experiment
    with pytest.raises(InputError):
        load_bandgap_pool(path, pbe_source="hse")


def test_matloop_benchmark_two_fidelity_csv_form(tmp_path):
    """`matloop benchmark --cheap-column`: the cost-normalised two-fidelity benchmark from a CSV."""
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    els = ["Li", "Na", "K", "Mg", "Ca", "Sr", "Ba", "Zn", "Al", "Ga", "In"]
    rows = []
    for a in els:
        for b in ["O", "S", "Se", "F", "Cl"]:
            for n in (1, 2, 3):
                top = rng.uniform(0, 4)
                rows.append((f"{a}{n}{b}", top - 0.6 + 0.2 * rng.standard_normal(), top))
    path = tmp_path / "two.csv"
    path.write_text("formula,cheap,top\n" + "\n".join(f"{f},{c:.4f},{t:.4f}" for f, c, t in rows))
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "matloop.loop.cli", "benchmark", "--dataset", str(path), "--composition-column",
         "formula", "--cheap-column", "cheap", "--target-column", "top", "--goal", "window:1.1:1.7",
         "--costs", "1,10", "--budget", "300", "--seeds", "1", "--init", "5",
         "--strategies", "single_fidelity,multi_fidelity", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["costs"] == {"0": 1.0, "1": 10.0} and s["budget"] == 300
    assert set(s["agents"]) == {"single_fidelity", "multi_fidelity"}
    assert s["agents"]["single_fidelity"]["evaluations"]["0"] == 0  # top fidelity only
    assert s["agents"]["multi_fidelity"]["evaluations"]["0"] > 0  # it screens cheaply too
    for a in s["agents"].values():
        spent = a["evaluations"]["0"] * 1 + a["evaluations"]["1"] * 10
        assert spent <= 300
    assert "multi_fidelity" in r.stdout and (out / "recall_vs_cost.png").is_file()


def test_matloop_benchmark_two_fidelity_bad_costs(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "two.csv"
    path.write_text("formula,cheap,top\nNaCl,1,2\nKCl,2,3\nLiF,3,4\n")
    r = subprocess.run(
        [sys.executable, "-m", "matloop.loop.cli", "benchmark", "--dataset", str(path), "--composition-column",
         "formula", "--cheap-column", "cheap", "--target-column", "top", "--goal", "max", "--costs", "1",
         "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 2 and "--costs" in r.stderr and "Traceback" not in r.stderr
