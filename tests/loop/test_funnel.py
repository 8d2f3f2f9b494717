"""A two-tier funnel with table oracles: promotion rules, per-tier records and budget."""

import numpy as np

from matloop.loop.campaign import Campaign
from matloop.loop.spec import load_campaign
from matloop.loop.store import Store

from .helpers import write_campaign


def test_promotion_by_rule_and_top_k(tmp_path, grid_csv):
    # a cheap tier that sees target + 0.01 (a biased screen) and a costly tier with the truth
    lines = grid_csv.read_text().splitlines()
    cheap = tmp_path / "cheap.csv"
    cheap.write_text("composition,screen\n" + "\n".join(f"{l.split(',')[0]},{float(l.split(',')[1]) + 0.01}" for l in lines[1:]) + "\n")
    oracles = [
        {"name": "screen", "kind": "lookup", "cost": 1, "fidelity": 0,
         "settings": {"table": str(cheap), "columns": {"target": "screen"}}},
        {"name": "truth", "kind": "lookup", "cost": 10, "fidelity": 1,
         "settings": {"table": str(grid_csv), "columns": {"target": "target"}},
         "promote": {"after": "screen", "property": "target", "max": 0.2, "top_k": 3}},
    ]
    path = write_campaign(tmp_path, grid_csv, oracles=oracles, budget={"cost": 60}, batch_size=5,
                          objective={"property": "target", "goal": "minimize", "oracle": "truth"})
    spec = load_campaign(path)
    summary = Campaign(spec, quiet=True).run()
    st = Store(spec.resolve(spec.store))
    screen = {o.candidate_id: o.properties["target"] for o in st.observations(oracle="screen")}
    truth = st.observations(oracle="truth")
    assert len(truth) >= 1
    for o in truth:
        assert o.candidate_id in screen and screen[o.candidate_id] <= 0.2  # only rule-passing candidates
        assert o.fidelity == 1 and o.cost == 10
    # each iteration promotes, of the current top 3 of the screen, those not yet promoted:
    # every promoted candidate was among the 3 best screened before its promotion
    it = {rid: i for rid, i in st.db.execute("SELECT id, iteration FROM requests")}
    screen_iter = {o.candidate_id: it[o.request_id] for o in st.observations(oracle="screen")}
    for o in truth:
        t = it[o.request_id]
        earlier = sorted(v for cid, v in screen.items() if screen_iter[cid] < t)
        assert screen[o.candidate_id] <= earlier[min(2, len(earlier) - 1)]
    assert len(truth) < len(screen)
    spend = st.spend()
    assert spend["screen"]["cost"] + spend["truth"]["cost"] <= 60
    assert summary["spend"]["truth"]["evaluations"] == len(truth)
    assert summary["agent"]["best_value"] is not None
