"""DaskExecutor on a real LocalCluster: a campaign end to end, and worker processes killed
with SIGKILL mid-job (resubmitted once, then a failed observation)."""

import os
import signal
import time

import pytest

from matloop.loop.dask_executor import DaskExecutor
from matloop.loop.campaign import Campaign
from matloop.loop.spec import load_campaign
from matloop.loop.store import Store
from matloop.oracles.lookup import LookupOracle
from matloop.core.records import Candidate, Request

from .helpers import write_campaign


def test_campaign_end_to_end_on_dask(tmp_path, grid_csv):
    # a small pool and initial picks only: the test is about where jobs run, not the agent
    path = write_campaign(
        tmp_path, grid_csv,
        sources=[{"kind": "file", "settings": {"path": str(grid_csv), "limit": 40}}],
        oracles=[{"name": "table", "kind": "lookup", "cost": 1,
                  "settings": {"table": str(grid_csv), "columns": {"target": "target"}, "latency_s": 0.2}}],
        features={"composition": ["stoichiometry"]},
        agent={"acquisition": {"init": 8}},
        budget={"evaluations": 8},
        executor={"kind": "dask", "workers": 2},
    )
    spec = load_campaign(path)
    summary = Campaign(spec, quiet=True).run()
    assert summary["agent"]["evaluations"] == 8
    assert summary["agent"]["best_value"] is not None
    store = Store(spec.resolve(spec.store))
    obs = store.observations(arm="agent")
    assert [it["status"] for it in store.iterations("agent")] == ["done", "done"]
    store.close()
    assert len(obs) == 8 and all(o.ok for o in obs)
    assert all(o.wall_time_s >= 0.2 for o in obs)  # the simulated latency ran, not a shortcut
    # every job ran in a Dask worker process, and both workers took jobs
    workers = {o.extra["dask_worker"] for o in obs}
    assert len(workers) == 2 and all(w.startswith("tcp://127.0.0.1:") for w in workers)


@pytest.fixture(scope="module")
def executor():
    ex = DaskExecutor(workers=2)
    yield ex
    ex.shutdown()
    assert ex.client is None and ex.cluster is None


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    p = tmp_path_factory.mktemp("dask") / "table.csv"
    p.write_text("composition,target\nFe2O3,1.5\nNiO,2.0\nCoO,2.5\n")
    return p


def _oracle(table, latency_s):
    return LookupOracle(name="t", settings={"table": str(table), "columns": {"target": "target"}, "latency_s": latency_s})


def _request(formula, rid):
    return Request(rid, Candidate.from_composition(formula), "t", 0)


def _kill_worker_running(ex: DaskExecutor, handle, attempt: int) -> tuple[str, int]:
    """SIGKILL the worker process that is running ``handle``'s given attempt; returns (address, pid)."""
    deadline = time.time() + 60
    while True:
        assert not handle.done(), "the job finished before its worker could be killed"  # done() drives resubmission
        if handle.attempts == attempt:
            key = handle.keys[-1]
            running = [w for w, keys in ex.client.processing().items() if key in keys]
            if running:
                break
        assert time.time() < deadline, f"attempt {attempt} never started"
        time.sleep(0.05)
    time.sleep(0.5)  # well inside the job (its latency is 3 s)
    pid = ex.client.run(os.getpid, workers=running)[running[0]]
    assert pid != os.getpid()
    os.kill(pid, signal.SIGKILL)
    return running[0], pid


def _wait_gone(pid: int) -> None:
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"worker {pid} still alive")


def _wait_done(handle, timeout_s=90):
    deadline = time.time() + timeout_s
    while not handle.done():
        assert time.time() < deadline, "job never finished"
        time.sleep(0.05)


def test_worker_killed_once_job_resubmitted_and_succeeds(executor, table):
    executor.client.wait_for_workers(2, timeout=120)
    h = executor.submit(_oracle(table, 3.0), _request("Fe2O3", "r-killed-once"))
    dead_addr, dead_pid = _kill_worker_running(executor, h, attempt=1)
    _wait_gone(dead_pid)
    _wait_done(h)
    obs = h.result()
    assert obs.ok and obs.properties == {"target": 1.5}
    assert h.attempts == 2 and h.keys == ["matloop-r-killed-once-try1", "matloop-r-killed-once-try2"]
    assert obs.extra["dask_worker"] != dead_addr
    assert obs.extra["worker_lost"] == [f"attempt 1: worker {dead_addr} died while running it"]


def test_worker_killed_twice_becomes_failed_observation(executor, table):
    executor.client.wait_for_workers(2, timeout=120)
    h = executor.submit(_oracle(table, 3.0), _request("NiO", "r-killed-twice"))
    first, pid1 = _kill_worker_running(executor, h, attempt=1)
    second, pid2 = _kill_worker_running(executor, h, attempt=2)
    assert pid1 != pid2
    obs = h.result()  # blocking form: still an observation, never an exception
    assert not obs.ok and obs.request_id == "r-killed-twice" and obs.properties == {}
    assert obs.reason.startswith("worker lost twice: ")
    assert f"worker {first} died" in obs.reason and f"worker {second} died" in obs.reason
    assert h.done() and h.result() is obs
    # the nannies restart the killed workers; the executor keeps working
    executor.client.wait_for_workers(2, timeout=120)
    after = executor.submit(_oracle(table, 0.1), _request("CoO", "r-after"))
    _wait_done(after)
    assert after.result().ok and after.attempts == 1


def test_inline_oracle_runs_in_process(executor, table):
    h = executor.submit(_oracle(table, 0.0), _request("Fe2O3", "r-inline"))
    assert h.done()
    obs = h.result()
    assert obs.ok and "dask_worker" not in obs.extra
