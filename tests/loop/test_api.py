"""The Python API as a notebook uses it: ask -> fill in -> tell, prior data, a DataFrame out."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import matloop
from matloop import Campaign
from matloop.core.records import InputError


def _truth(grid_csv) -> dict[str, float]:
    df = pd.read_csv(grid_csv)
    return dict(zip(df["composition"], df["target"]))


def _manual(tmp_path, grid_csv, **over) -> dict:
    spec = {
        "name": "bench",
        "seed": 3,
        "objective": {"property": "target", "goal": "min"},  # the command line's word, accepted in the file too
        "sources": [{"kind": "file", "settings": {"path": str(grid_csv), "composition_column": "composition"}}],
        "oracles": [{"name": "lab", "kind": "manual", "cost": 1,
                     "settings": {"properties": ["target"], "instructions": "measure the target"}}],
        "agent": {"acquisition": {"init": 4, "shortlist": 40}},
        "batch_size": 4,
        "budget": {"evaluations": 12},
        "store": "store.sqlite",
        "executor": {"kind": "inline"},
    }
    spec.update(over)
    return spec


def test_version():
    from importlib.metadata import version

    assert matloop.__version__ == version("matloop")
    res = subprocess.run([sys.executable, "-m", "matloop.loop.cli", "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == f"matloop {matloop.__version__}"


def test_notebook_rounds(tmp_path, grid_csv):
    truth = _truth(grid_csv)
    camp = Campaign.from_dict(_manual(tmp_path, grid_csv), base_dir=tmp_path)
    assert camp.store_path == tmp_path / "store.sqlite"
    seen = set()
    for round_ in range(3):
        batch = camp.ask()
        assert len(batch) == 4 and batch["target"].isna().all()
        assert {"request_id", "candidate_id", "formula", "composition", "structure_file", "oracle", "predicted_mean",
                "predicted_std", "acquisition", "reason_picked"} <= set(batch.columns)
        assert (batch["oracle"] == "lab").all() and batch["reason_picked"].str.len().gt(0).all()
        assert not seen & set(batch["candidate_id"])  # never asked twice
        seen |= set(batch["candidate_id"])
        # asking again before telling gives the same open batch, not a new plan
        assert list(camp.ask()["request_id"]) == list(batch["request_id"])
        if round_ == 0:
            assert batch["reason_picked"].str.startswith("initial design").all()
        else:  # the surrogate ranked these: its prediction and acquisition value come with each pick
            assert batch["predicted_mean"].notna().all() and (batch["predicted_std"] >= 0).all()
            assert batch["acquisition"].notna().all() and batch["reason_picked"].str.contains("predicted target").all()
        batch["target"] = [truth[c] for c in batch["composition"]]
        assert camp.tell(batch) == 4
        assert camp.tell(batch) == 0  # the same results again: already recorded, nothing new
    assert camp.ask().empty and "evaluation budget" in camp.stop_reason

    df = camp.to_dataframe()
    assert len(df) == 12 and set(df["candidate_id"]) == seen
    assert {"composition", "formula", "target", "value", "predicted_mean", "predicted_std", "iteration"} <= set(df.columns)
    assert np.allclose(df["target"], [truth[c] for c in df["composition"]])
    assert (df["value"] == df["target"]).all()
    assert df["predicted_mean"].notna().sum() == 8  # rounds 2 and 3 were planned by the surrogate


def test_run_pauses_for_the_person_and_ask_returns_its_batch(tmp_path, grid_csv):
    truth = _truth(grid_csv)
    spec = _manual(tmp_path, grid_csv, executor={"kind": "local", "workers": 2})
    camp = Campaign.from_dict(spec, base_dir=tmp_path)
    camp.quiet = True
    summary = camp.run()
    assert "waiting for 4 result(s) from lab" in summary["stop_reason"]
    batch = camp.ask(n=2)  # the run's batch is still open: returned as it is, not replanned
    assert len(batch) == 4
    batch["target"] = [truth[c] for c in batch["composition"]]
    camp.tell(batch)
    assert len(camp.ask(n=2)) == 2  # a new plan, of the size asked for
    assert len(camp.to_dataframe()) == 4


def test_tell_refuses_whole_frame(tmp_path, grid_csv):
    truth = _truth(grid_csv)
    camp = Campaign.from_dict(_manual(tmp_path, grid_csv), base_dir=tmp_path)
    batch = camp.ask()
    batch["target"] = [truth[c] for c in batch["composition"]]
    batch.loc[1, "target"] = np.nan  # not filled in
    batch.loc[2, "target"] = 1e12  # garbage
    with pytest.raises(InputError) as err:
        camp.tell(batch)
    msg = str(err.value)
    assert "nothing was recorded" in msg and "row 1 column 'target': missing value" in msg
    assert "row 2 column 'target'" in msg and "outside the sane range" in msg
    assert len(camp.ask()) == 4 and camp.to_dataframe().empty  # still open, nothing stored


def test_from_yaml_validates_like_the_cli(tmp_path, grid_csv):
    import yaml

    spec = _manual(tmp_path, grid_csv, batch_size=0)
    spec["objective"]["goal"] = "maximum"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    with pytest.raises(InputError) as err:
        Campaign.from_yaml(path)
    cli = subprocess.run([sys.executable, "-m", "matloop.loop.cli", "validate", str(path)], capture_output=True,
                         text=True)
    assert cli.returncode == 2
    problems = [line.strip() for line in str(err.value).splitlines()[1:]]
    assert len(problems) == 2 and all(p in cli.stderr for p in problems)
    assert any(p.startswith("batch_size") for p in problems) and any(p.startswith("objective.goal") for p in problems)
    with pytest.raises(InputError, match="batch_size"):
        Campaign.from_dict(spec, base_dir=tmp_path)
    fixed = Campaign.from_yaml(path, store=tmp_path / "other.sqlite",
                               overrides={"batch_size": 2, "objective.goal": "max"})  # as --set does
    assert fixed.spec.batch_size == 2 and fixed.spec.objective.goal == "maximize"
    assert fixed.store_path == tmp_path / "other.sqlite"


def _picks_with(tmp_path, grid_csv, prior: pd.DataFrame | None) -> tuple[Campaign, pd.DataFrame]:
    tmp_path.mkdir(exist_ok=True)
    camp = Campaign.from_dict(_manual(tmp_path, grid_csv), base_dir=tmp_path)
    if prior is not None:
        assert camp.add_measurements(prior) == len(prior)
    return camp, camp.ask()


def test_prior_data_steers_the_next_plan(tmp_path, grid_csv):
    truth = _truth(grid_csv)
    rng = np.random.default_rng(0)
    comps = list(truth)
    prior = pd.DataFrame({"composition": [comps[i] for i in rng.choice(len(comps), 20, replace=False)]})
    prior["target"] = [truth[c] for c in prior["composition"]]

    _, cold = _picks_with(tmp_path / "cold", grid_csv, None)
    camp, warm = _picks_with(tmp_path / "warm", grid_csv, prior)
    # without labels the plan is an initial design; with the prior data the surrogate plans
    assert cold["reason_picked"].str.startswith("initial design").all()
    assert warm["predicted_mean"].notna().all()
    assert not set(warm["composition"]) & set(prior["composition"])  # prior candidates are never asked again
    cold_y = np.mean([truth[c] for c in cold["composition"]])
    warm_y = np.mean([truth[c] for c in warm["composition"]])
    best_prior = prior["target"].min()
    assert warm_y < cold_y / 2 and warm_y < np.median(prior["target"]), (warm_y, cold_y, best_prior)

    df = camp.to_dataframe()
    assert (df["arm"] == "prior").sum() == 20
    # prior data costs the campaign nothing and does not count against its budget
    warm["target"] = [truth[c] for c in warm["composition"]]
    camp.tell(warm)
    assert len(camp.ask()) == 4
    # loading the same prior data again: already recorded; a row for an asked candidate: refused
    assert camp.add_measurements(prior) == 0
    asked = pd.DataFrame({"composition": [warm["composition"].iloc[0]], "target": [0.1]})
    with pytest.raises(InputError, match="already requested from lab"):
        camp.add_measurements(asked)


def test_prior_data_problems(tmp_path, grid_csv):
    camp = Campaign.from_dict(_manual(tmp_path, grid_csv), base_dir=tmp_path)
    bad = pd.DataFrame({"composition": ["Fe0.5Ni0.5", "Xx2", "Fe0.5Ni0.5", "Co1"],
                        "oracle": ["lab", "lab", "lab", "oven"], "target": [0.1, 0.2, 0.3, 0.4]})
    with pytest.raises(InputError) as err:
        camp.add_measurements(bad)
    msg = str(err.value)
    assert "row 1 column 'composition'" in msg and "row 2" in msg and "appears twice" in msg
    assert "row 3 column 'oracle': 'oven' is not an oracle" in msg
    assert camp.to_dataframe().empty
