"""A campaign against the reference lab service on loopback, killed mid-run and resumed:
no experiment is started twice and no result is lost."""

import sqlite3

from matloop.loop.campaign import Campaign
from matloop.loop.spec import load_campaign
from matloop.oracles.labsim import LabService

from .helpers import run_and_kill_mid_iteration, write_campaign


def test_lab_campaign_kill_and_resume(tmp_path, grid_csv):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    with LabService(grid_csv, "composition", {"target": "target"}, token="s3cret", latency_s=(0.5, 1.5),
                    seed=3, measurement="overpotential") as lab:
        path = write_campaign(
            tmp_path, grid_csv,
            oracles=[{"name": "lab", "kind": "http", "cost": 1,
                      "settings": {"url": lab.url, "measurement": "overpotential", "properties": ["target"],
                                   "token_file": str(token), "poll_interval_s": 0.2}}],
            batch_size=4, budget={"evaluations": 12}, agent={"acquisition": {"init": 4, "shortlist": 40}},
        )
        store = tmp_path / "store.sqlite"
        run_and_kill_mid_iteration(path, store, min_observations=5, timeout_s=300)  # experiments running now
        Campaign(load_campaign(path), quiet=True).run()  # resume: re-asks the lab by idempotency key
        db = sqlite3.connect(str(store))
        n_obs, n_distinct = db.execute("SELECT COUNT(*), COUNT(DISTINCT candidate_id) FROM observations").fetchone()
        n_req = db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
        db.close()
        assert n_obs == n_distinct == n_req == 12
        assert lab.n_experiments_started == 12  # no experiment started twice
