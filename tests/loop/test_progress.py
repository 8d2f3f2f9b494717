"""Live progress: counts per tier, each failure reason once, a measured ETA, plain lines in logs."""

from __future__ import annotations

import io
import subprocess
import sys

import pandas as pd
from rich.console import Console

from matloop.core.records import Candidate, Observation, Request, Status
from matloop.loop.ledger import Ledger
from matloop.loop.progress import Progress, TierCount, duration
from matloop.loop.store import Store

from .helpers import write_campaign


def _requests(tier_sizes: dict[str, int]) -> list[Request]:
    out = []
    for oracle, n in tier_sizes.items():
        for k in range(n):
            c = Candidate.from_composition(f"Fe{k + 1}O{k + 2}")
            out.append(Request(Request.make_id(c.id, oracle, 0), c, oracle, 0))
    return out


def _obs(r: Request, wall: float, reason: str | None = None) -> Observation:
    return Observation(r.id, r.candidate.id, r.oracle, f"{r.oracle}-1", 0, Status.FAILED if reason else Status.SUCCESS,
                       {} if reason else {"gap_ev": 1.0}, wall_time_s=wall, reason=reason)


def test_duration_is_rounded_for_people():
    assert [duration(x) for x in (None, 4.4, 59.6, 200, 7500)] == ["?", "4 s", "1 min 00 s", "3 min 20 s", "2 h 05 min"]


def test_eta_from_measured_wall_time_per_tier():
    t = TierCount("dft", planned=5, walls=[100.0, 200.0])
    assert t.eta(workers=1) == 5 * 150.0 and t.eta(workers=2) == 5 * 150.0 / 2
    t.done = 5
    assert t.eta(workers=2) == 0.0
    assert TierCount("md", planned=2, walls=[]).eta(workers=4) is None  # nothing measured yet: unknown


def test_plain_lines_and_each_failure_reason_once(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    ledger = Ledger(store)
    reqs = _requests({"mlip": 4, "dft": 2})
    cands = list({r.candidate.id: r.candidate for r in reqs}.values())
    ledger.add_candidates(cands)
    ledger.start_iteration(0, {}, reqs)
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    progress = Progress(console, workers=2, line_every_s=0.0, poll_s=0.01)
    with progress.track(ledger, reqs):
        ledger.add_observation(_obs(reqs[0], 10.0))
        ledger.add_observation(_obs(reqs[1], 12.0, reason="relaxation did not converge"))
        ledger.add_observation(_obs(reqs[2], 11.0, reason="relaxation did not converge"))
        ledger.add_observation(_obs(reqs[4], 600.0, reason="SCF did not converge"))
    text = out.getvalue()
    assert "\x1b[" not in text  # no live rendering into a file
    assert text.count("relaxation did not converge") == 1 and text.count("SCF did not converge") == 1
    assert "new failure on mlip" in text and "new failure on dft" in text
    assert "mlip 3/4 (2 failed)" in progress.line() and "dft 1/2 (1 failed)" in progress.line()
    # ETA: 1 mlip left at 11 s each, 1 dft left at 600 s each
    assert progress.eta() == 11.0 + 600.0 and progress.line().endswith("ETA 10 min 11 s")
    store.close()


def test_quiet_shows_nothing(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    ledger = Ledger(store)
    reqs = _requests({"mlip": 1})
    ledger.add_candidates([reqs[0].candidate])
    ledger.start_iteration(0, {}, reqs)
    out = io.StringIO()
    with Progress(Console(file=out), quiet=True, poll_s=0.01).track(ledger, reqs):
        ledger.add_observation(_obs(reqs[0], 1.0, reason="boom"))
    assert out.getvalue() == ""
    store.close()


def test_run_in_a_pipe_prints_failure_reason_once_and_units(tmp_path, grid_csv):
    df = pd.read_csv(grid_csv)
    df.loc[df["composition"].str.contains("Mn"), "target"] = float("nan")  # most of the pool fails the same way
    table = tmp_path / "table.csv"
    df.to_csv(table, index=False)
    p = write_campaign(
        tmp_path, grid_csv, objective={"property": "gap_ev", "goal": "min"}, batch_size=6, budget={"evaluations": 12},
        oracles=[{"name": "table", "kind": "lookup", "cost": 1,
                  "settings": {"table": str(table), "key_column": "composition", "columns": {"gap_ev": "target"}}}],
    )
    res = subprocess.run([sys.executable, "-m", "matloop.loop.cli", "run", str(p)], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("is not finite") == 1, res.stdout  # the reason once, however many failed
    status = subprocess.run([sys.executable, "-m", "matloop.loop.cli", "status", str(tmp_path / "store.sqlite")],
                            capture_output=True, text=True, timeout=600)
    assert status.stdout.count("is not finite") > 1  # several evaluations failed with it
    assert "\x1b[" not in res.stdout
    best = [line for line in res.stdout.splitlines() if "best gap_ev" in line and "none yet" not in line]
    assert best and all(" eV (" in line for line in best)  # rounded, with the unit of the property name
