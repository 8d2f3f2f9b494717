"""A campaign against the reference lab service on loopback, killed mid-run and resumed:
no experiment is started twice and no result is lost."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

from matloop.loop.runner import Campaign
from matloop.loop.spec import load_campaign
from matloop.oracles.labsim import LabService

from .helpers import write_campaign


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
        proc = subprocess.Popen([sys.executable, "-m", "matloop.loop.cli", "run", str(path), "--quiet"],
                                start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        killed = False
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if store.exists():
                try:
                    db = sqlite3.connect(str(store), timeout=5)
                    n_obs = db.execute("SELECT COUNT(*) FROM observations").fetchone()[0]
                    n_req = db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
                    db.close()
                except sqlite3.OperationalError:
                    n_obs = n_req = 0
                if n_obs >= 5 and n_req > n_obs:  # experiments running in the lab right now
                    os.killpg(proc.pid, signal.SIGKILL)
                    killed = True
                    break
            time.sleep(0.05)
        proc.wait(timeout=30)
        assert killed, proc.stderr.read().decode()[-2000:]
        Campaign(load_campaign(path), quiet=True).run()  # resume: re-asks the lab by idempotency key
        db = sqlite3.connect(str(store))
        n_obs, n_distinct = db.execute("SELECT COUNT(*), COUNT(DISTINCT candidate_id) FROM observations").fetchone()
        n_req = db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
        db.close()
        assert n_obs == n_distinct == n_req == 12
        assert lab.n_experiments_started == 12  # no experiment started twice
