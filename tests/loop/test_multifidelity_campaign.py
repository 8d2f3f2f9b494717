"""Cost-aware fidelity choice from YAML: validation through the CLI, and a two-fidelity table campaign."""

from matloop.loop.campaign import Campaign
from matloop.loop.spec import load_campaign
from matloop.loop.store import Store

from .helpers import write_campaign
from .test_cli import assert_clean_error, matloop


def mf_campaign(tmp_path, grid_csv, **overrides):
    # the cheap fidelity sees a shifted, scaled copy of the target: informative but biased
    lines = grid_csv.read_text().splitlines()[1:]
    cheap = tmp_path / "cheap.csv"
    cheap.write_text("composition,screen\n" + "\n".join(
        f"{l.split(',')[0]},{0.7 * float(l.split(',')[1]) + 0.05}" for l in lines) + "\n")
    spec = dict(
        objective={"property": "target", "goal": "window", "window": [0.0, 0.05]},
        oracles=[
            {"name": "screen", "kind": "lookup", "cost": 1, "fidelity": 0,
             "settings": {"table": str(cheap), "columns": {"target": "screen"}}},
            {"name": "truth", "kind": "lookup", "cost": 4, "fidelity": 1,
             "settings": {"table": str(grid_csv), "columns": {"target": "target"}}},
        ],
        features={"composition": ["fractions"]},
        agent={"fidelity": {"strategy": "multi_fidelity", "init": 2, "choice": {"shortlist": 50}}},
        budget={"cost": 43},
    )
    spec.update(overrides)
    return write_campaign(tmp_path, grid_csv, **spec)


def test_promote_rejected_under_multi_fidelity(tmp_path, grid_csv):
    spec = load_campaign(mf_campaign(tmp_path, grid_csv))
    oracles = [o.model_dump(exclude_none=True) for o in spec.oracles]
    oracles[1]["promote"] = {"after": "screen", "top_k": 2}
    p = mf_campaign(tmp_path, grid_csv, oracles=oracles)
    assert_clean_error(matloop("validate", p), str(p), "oracles[1].promote (line", "multi_fidelity")


def test_fidelity_settings_errors_name_yaml_paths(tmp_path, grid_csv):
    p = mf_campaign(tmp_path, grid_csv, agent={"fidelity": {"strategy": "multi_fidelity", "model": {"kind": "nope"},
                                                            "choice": {"colour": 1}}})
    assert_clean_error(matloop("validate", p), "agent.fidelity.model.kind (line", "agent.fidelity.choice.colour (line",
                       "unknown key")


def test_multi_fidelity_campaign_requests_both_tiers_within_budget(tmp_path, grid_csv):
    spec = load_campaign(mf_campaign(tmp_path, grid_csv))
    summary = Campaign(spec, quiet=True).run()
    st = Store(spec.resolve(spec.store))
    pairs = list(st.db.execute("SELECT candidate_id, oracle FROM requests"))
    assert len(pairs) == len(set(pairs))  # no (candidate, oracle) asked twice
    spend = st.spend("agent")
    assert spend["screen"]["evaluations"] > 0 and spend["truth"]["evaluations"] > 0
    total = sum(v["cost"] for v in spend.values())
    assert total <= 43 + 1e-9
    assert summary["stop_reason"].startswith(("cost budget", "remaining budget"))
    planned = [it["rationale"] for it in st.iterations("agent")]
    chosen = [c for r in planned for t in r["tiers"].values() for c in t["chosen"]]
    assert all(c["expected_cost"] in (1, 4) and c["rationale"] for c in chosen)
    # after the random initial design the model chooses: its sentences name the tier and cost
    model_picks = [c for r in planned[1:] for t in r["tiers"].values() for c in t["chosen"]]
    assert model_picks and all("fidelity" in c["rationale"] and "cost" in c["rationale"] for c in model_picks)
    assert planned[-1]["fidelity"]["strategy"] == "multi_fidelity"
