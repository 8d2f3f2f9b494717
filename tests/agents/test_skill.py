"""Skill-aware acquisition: the agent measures its model's out-of-sample skill and explores when it has none.

The no-signal case is a real data set with its labels shuffled against the compositions (so the
features say nothing about the labels), run through the real CLI as a lookup-oracle campaign.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from matloop.agents.decision.acquisition import AcquisitionSettings, select_batch
from matloop.agents.decision.skill import measure_skill, space_filling
from matloop.agents.modelling.surrogates import GPSurrogate, RandomForestSurrogate, SurrogateSettings
from matloop.core.goals import Goal
from matloop.loop.store import Store

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
PLATE = DATA / "jcap_oer" / "plate_3496" / "composition.csv"


def _loo_by_refitting_posterior(model: GPSurrogate) -> np.ndarray:
    """LOO means by conditioning on the other labels explicitly, at the same hyperparameters."""
    import torch

    gp = model.model
    with torch.no_grad():
        X, y = gp.train_inputs[0], gp.train_targets
        K = gp.covar_module(X).to_dense()
        noise, c = gp.likelihood.noise.item(), gp.mean_module.constant.item()
        out = []
        for i in range(len(y)):
            o = [j for j in range(len(y)) if j != i]
            out.append(c + K[i, o] @ torch.linalg.solve(K[o][:, o] + noise * torch.eye(len(o), dtype=K.dtype), y[o] - c))
        s, m = gp.outcome_transform.stdvs.item(), gp.outcome_transform.means.item()
    return torch.stack(out).numpy() * s + m


def test_closed_form_loo_equals_conditioning_on_the_other_labels():
    rng = np.random.default_rng(0)
    X = rng.random((25, 3))
    y = np.sin(4 * X[:, 0]) + 0.1 * rng.standard_normal(25)
    model = GPSurrogate(SurrogateSettings(), bounds=np.array([[0.0] * 3, [1.0] * 3]))
    model.fit(X, y)
    mu, sd = model.fitted_loo_predictions()
    np.testing.assert_allclose(mu, _loo_by_refitting_posterior(model), atol=1e-6)
    assert np.all(sd > 0)


@pytest.mark.parametrize("kind", ["gp", "rf"])
def test_skill_separates_signal_from_noise(kind):
    rng = np.random.default_rng(3)
    X = rng.random((60, 8))
    signal = np.sin(3 * X[:, 0]) + X[:, 1] ** 2 + 0.05 * rng.standard_normal(60)
    noise = rng.standard_normal(60)
    cls = GPSurrogate if kind == "gp" else RandomForestSurrogate
    kw = {"bounds": np.array([[0.0] * 8, [1.0] * 8])} if kind == "gp" else {}
    out = {}
    for name, y in (("signal", signal), ("noise", noise)):
        model = cls(SurrogateSettings(kind=kind), **kw)
        model.fit(X, y)
        out[name] = measure_skill(model)
    assert out["signal"].explore_fraction == 0 and out["signal"].decision.startswith("exploit")
    assert out["signal"].spearman_loo > 0.5
    assert out["noise"].explore_fraction > 0.2 and out["noise"].decision.startswith("explore")
    assert out["noise"].n_labels == 60


def test_space_filling_picks_the_far_corner():
    X = np.array([[0.0, 0.0], [0.1, 0.1], [1.0, 1.0], [0.5, 0.4], [0.0, 1.0]])
    picks = space_filling(X, np.array([1, 2, 3, 4]), np.array([0]), 2, np.array([[0.0, 0.0], [1.0, 1.0]]))
    assert picks[0] == 2 and picks[1] == 4


def test_no_skill_batch_has_space_filling_picks_and_a_full_batch():
    rng = np.random.default_rng(1)
    X = rng.random((500, 6)).astype(np.float32)
    y = rng.standard_normal(500)
    tr = rng.choice(500, 40, replace=False)
    sel = select_batch(X, tr, y[tr], 10, Goal(kind="max"), rng=rng, surrogate=SurrogateSettings(kind="rf"))
    assert len(set(sel.indices.tolist())) == 10 and not set(sel.indices.tolist()) & set(tr.tolist())
    assert sel.info["skill"]["explore_fraction"] > 0
    assert sel.info["explore_picks"] == round(sel.info["skill"]["explore_fraction"] * 10)
    off = select_batch(X, tr, y[tr], 10, Goal(kind="max"), rng=np.random.default_rng(1),
                       surrogate=SurrogateSettings(kind="rf"), acquisition=AcquisitionSettings(skill_aware=False))
    assert "skill" not in off.info and "explore_picks" not in off.info


def _campaign(tmp_path: Path, pool: Path, name: str) -> Path:
    spec = {
        "name": name,
        "seed": 0,
        "objective": {"property": "overpotential_v", "goal": "minimize"},
        "sources": [{"kind": "file", "settings": {"path": str(pool), "composition_column": "composition"}}],
        "oracles": [{"name": "plate", "kind": "lookup", "cost": 1,
                     "settings": {"table": str(pool), "key_column": "composition",
                                  "columns": {"overpotential_v": "overpotential_V"}}}],
        "agent": {"acquisition": {"init": 10}},
        "batch_size": 10,
        "budget": {"evaluations": 40},
        "store": str(tmp_path / f"{name}.sqlite"),
        "executor": {"kind": "inline"},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _skills(store_path: Path) -> list[dict]:
    store = Store(str(store_path))
    try:
        return [t["skill"] for it in store.iterations("agent") for t in it["rationale"]["tiers"].values() if "skill" in t]
    finally:
        store.close()


@pytest.mark.skipif(not PLATE.exists(), reason=f"needs the JCAP OER plate data at {PLATE}")
def test_shuffled_labels_are_detected_and_the_agent_explores(tmp_path):
    """A real OER plate (400 compositions) through `matloop run`, once as measured and once with the
    overpotentials shuffled against the compositions: the agent records its skill every plan, and
    only on the shuffled copy does it judge the model untrustworthy and give slots to exploration."""
    df = pd.read_csv(PLATE).sample(400, random_state=0)
    real = tmp_path / "real.csv"
    df.to_csv(real, index=False)
    shuffled = tmp_path / "shuffled.csv"
    df.assign(overpotential_V=np.random.default_rng(0).permutation(df["overpotential_V"].to_numpy())).to_csv(
        shuffled, index=False)
    got = {}
    for name, pool in (("real", real), ("shuffled", shuffled)):
        camp = _campaign(tmp_path, pool, name)
        run = subprocess.run([sys.executable, "-m", "matloop.loop.cli", "run", str(camp), "--quiet"],
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-2000:]
        status = subprocess.run([sys.executable, "-m", "matloop.loop.cli", "status", str(tmp_path / f"{name}.sqlite"),
                                 "--last", "1"], capture_output=True, text=True, timeout=120)
        assert status.returncode == 0 and "model skill:" in status.stdout, status.stdout
        got[name] = _skills(tmp_path / f"{name}.sqlite")
    for name in got:
        assert len(got[name]) == 3  # plans at 10, 20 and 30 labels
        assert [s["n_labels"] for s in got[name]] == [10, 20, 30]
        assert set(got[name][0]) == {"spearman_loo", "calibration", "n_labels", "explore_fraction", "decision"}
    # real labels: by 30 labels the model's rank skill is clearly above zero and the batch exploits
    last_real = got["real"][-1]
    assert last_real["explore_fraction"] == 0 and last_real["decision"].startswith("exploit"), got["real"]
    assert last_real["spearman_loo"] > 0.3
    # shuffled labels: most plans judge the model untrustworthy and explore (under no signal the
    # one-sided 95 % bound still clears zero in about 1 plan of 20, so one plan may exploit)
    explored = [s for s in got["shuffled"] if s["decision"].startswith("explore")]
    assert len(explored) >= 2 and all(s["explore_fraction"] > 0.2 for s in explored), got["shuffled"]
    store = Store(str(tmp_path / "shuffled.sqlite"))
    why = [c.get("rationale", "") for it in store.iterations("agent") for t in it["rationale"]["tiers"].values()
           for c in t.get("chosen", [])]
    store.close()
    assert sum(w.startswith("space-filling exploration") for w in why) >= 5
    mean_explore = {k: np.mean([s["explore_fraction"] for s in v]) for k, v in got.items()}
    assert mean_explore["shuffled"] > 0.4 and mean_explore["shuffled"] > mean_explore["real"] + 0.2, got
