"""Builders for small campaign files used across the loop tests."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import yaml


def write_campaign(tmp_path: Path, pool_csv: Path, **overrides) -> Path:
    spec = {
        "name": "grid",
        "seed": 1,
        "objective": {"property": "target", "goal": "minimize"},
        "sources": [{"kind": "file", "settings": {"path": str(pool_csv), "composition_column": "composition"}}],
        "oracles": [
            {
                "name": "table",
                "kind": "lookup",
                "cost": 1,
                "settings": {"table": str(pool_csv), "key_column": "composition", "columns": {"target": "target"}},
            }
        ],
        "agent": {"acquisition": {"init": 6, "shortlist": 50}},
        "batch_size": 4,
        "budget": {"evaluations": 14},
        "store": str(tmp_path / "store.sqlite"),
        "executor": {"kind": "inline"},
    }
    for k, v in overrides.items():
        spec[k] = v
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_and_kill_mid_iteration(campaign: Path, store: Path, min_observations: int = 5, timeout_s: float = 240) -> int:
    """Run ``matloop run campaign`` in its own process group and ``kill -9`` the whole group
    once at least ``min_observations`` are stored while some stored requests are still
    unanswered (mid-iteration). Returns the number of observations at the kill; fails the
    test (with the run's stderr) if that moment never came."""
    proc = subprocess.Popen([sys.executable, "-m", "matloop.loop.cli", "run", str(campaign), "--quiet"],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + timeout_s
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        if store.exists():
            try:
                db = sqlite3.connect(str(store), timeout=5)
                n_obs = db.execute("SELECT COUNT(*) FROM observations").fetchone()[0]
                n_req = db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
                db.close()
            except sqlite3.OperationalError:
                n_obs = n_req = 0
            if n_obs >= min_observations and n_req > n_obs:
                os.killpg(proc.pid, signal.SIGKILL)
                killed_at = n_obs
                break
        time.sleep(0.05)
    proc.wait(timeout=30)
    assert killed_at is not None, proc.stderr.read().decode()[-2000:]
    return killed_at
