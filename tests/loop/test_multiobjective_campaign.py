"""Several objectives from YAML: validation through the CLI, and a Pareto campaign with table oracles."""

import numpy as np
import yaml

from matloop.agents.decision.multiobjective import pareto_front
from matloop.loop.campaign import Campaign
from matloop.loop.spec import load_campaign
from matloop.loop.store import Store

from .helpers import write_campaign
from .test_cli import assert_clean_error, matloop


def two_property_table(tmp_path, grid_csv):
    """The grid pool with a second property whose optimum sits elsewhere: a real trade-off."""
    lines = grid_csv.read_text().splitlines()[1:]
    rows = ["composition,target,other"]
    for line in lines:
        comp, y = line.split(",")
        ni = float(comp.split("Ni")[1].split("Co")[0].split("Mn")[0]) if "Ni" in comp else 0.0
        rows.append(f"{comp},{y},{(ni - 0.8) ** 2 + 0.1 * float(y):.6f}")
    path = tmp_path / "two.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def mo_campaign(tmp_path, grid_csv, **overrides):
    table = two_property_table(tmp_path, grid_csv)
    spec = dict(
        objective=None,
        objectives=[{"property": "target", "goal": "minimize"}, {"property": "other", "goal": "minimize"}],
        oracles=[{"name": "table", "kind": "lookup", "cost": 1,
                  "settings": {"table": str(table), "columns": {"target": "target", "other": "other"}}}],
        features={"composition": ["fractions"]},
        agent={"acquisition": {"init": 4, "shortlist": 40}},
    )
    spec.update(overrides)
    path = write_campaign(tmp_path, grid_csv, **spec)
    text = path.read_text().replace("objective: null\n", "")
    path.write_text(text)
    return path


def test_objective_and_objectives_together_rejected(tmp_path, grid_csv):
    p = mo_campaign(tmp_path, grid_csv, objective={"property": "target", "goal": "minimize"})
    assert_clean_error(matloop("validate", p), str(p), "objectives (line", "either objective or objectives")


def test_neither_objective_given_rejected(tmp_path, grid_csv):
    p = mo_campaign(tmp_path, grid_csv)
    data = yaml.safe_load(p.read_text())
    del data["objectives"]
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    assert_clean_error(matloop("validate", p), str(p), "objective (line", "objectives")


def test_objectives_errors_name_yaml_paths(tmp_path, grid_csv):
    p = mo_campaign(tmp_path, grid_csv, objectives=[{"property": "target", "goal": "minimize"}],
                    stop=[{"kind": "no_improvement", "patience": 2}])
    res = matloop("validate", p)
    assert_clean_error(res, str(p), "objectives (line")  # fewer than 2
    p = mo_campaign(tmp_path, grid_csv, stop=[{"kind": "no_improvement", "patience": 2}],
                    objectives=[{"property": "target", "goal": "minimize"}, {"property": "nope", "goal": "maximize"}])
    assert_clean_error(matloop("validate", p), "stop[0] (line", "single objective",
                       "objectives[1].property (line", "does not report 'nope'")


def test_pareto_campaign_stores_the_front(tmp_path, grid_csv):
    spec = load_campaign(mo_campaign(tmp_path, grid_csv))
    summary = Campaign(spec, quiet=True).run()
    st = Store(spec.resolve(spec.store))
    obs = [o for o in st.observations(arm="agent") if o.ok]
    assert len(obs) == 14 and summary["stop_reason"].startswith("evaluation budget")
    ids = [o.candidate_id for o in obs]
    assert len(set(ids)) == len(ids)  # never asked twice
    Y = np.array([[o.value("target"), o.value("other")] for o in obs])
    expected = {ids[i] for i in np.flatnonzero(pareto_front(Y, [False, False]))}
    stored = st.get_meta("pareto_front")
    assert {m["candidate"] for m in stored["front"]} == expected
    assert stored["hypervolume"] > 0 and stored["n_labelled"] == 14
    assert summary["pareto"]["front"] == stored["front"]
    its = st.iterations("agent")
    assert all("pareto" in it["rationale"] for it in its)
    late = its[-1]["rationale"]
    sel = next(iter(late["tiers"].values()))["selection"]
    assert sel["acquisition"] == "qlognehvi" and "hypervolume" in late["pareto"]
    # hypervolumes of successive plans never decrease (the reference point only moves outward)
    hvs = [it["rationale"]["pareto"]["hypervolume"] for it in its if it["rationale"]["pareto"]["hypervolume"]]
    assert hvs == sorted(hvs)
    st.close()
    res = matloop("export", spec.resolve(spec.store))
    header, *rows = res.stdout.strip().splitlines()
    col = header.split(",").index("pareto")
    marked = {r.split(",")[3] for r in rows if r.split(",")[col] == "1"}
    assert marked == expected
    res = matloop("status", spec.resolve(spec.store))
    assert res.returncode == 0 and "Pareto front" in res.stdout
