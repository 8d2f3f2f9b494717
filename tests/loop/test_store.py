import numpy as np

from matloop.loop.store import Store
from matloop.core.records import Candidate, Observation, Request, Status


def _obs(req, value=1.0, status=Status.SUCCESS):
    return Observation(req.id, req.candidate.id, "o", "o-1-x", 0, status, {"p": value}, cost=2.0, wall_time_s=0.1,
                       reason=None if status == Status.SUCCESS else "boom")


def test_round_trip_and_wal(tmp_path):
    st = Store(tmp_path / "s.sqlite")
    assert st.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    cs = [Candidate.from_composition(f) for f in ("Fe2O3", "NiO", "Fe4O6")]
    assert st.add_candidates(cs) == 2  # Fe4O6 == Fe2O3
    assert st.add_candidates(cs) == 0
    assert [c.formula for c in st.candidates()] == ["Fe2O3", "NiO"]
    req = Request(Request.make_id(cs[0].id, "o", 0), cs[0], "o", 0)
    st.start_iteration(0, {"why": "test", "x": np.float64(1.5)}, [req], {req.id: 0.3})
    assert [r[0] for r in st.open_requests()] == [req.id]
    assert st.add_observation(_obs(req, 1.0))
    assert not st.add_observation(_obs(req, 9.0))  # never overwritten
    assert st.open_requests() == []
    [o] = st.observations()
    assert o.properties == {"p": 1.0} and o.status == Status.SUCCESS
    assert st.spend()["o"] == {"evaluations": 1, "failed": 0, "cost": 2.0, "wall_time_s": 0.1}
    assert st.cached_observation(cs[0].id, "o-1-x").request_id == req.id
    assert st.iterations()[0]["rationale"]["x"] == 1.5
    st.close()
    st2 = Store(tmp_path / "s.sqlite")  # reopen: everything is still there
    assert len(st2.observations()) == 1 and st2.n_candidates() == 2


def test_features_cache(tmp_path):
    st = Store(tmp_path / "s.sqlite")
    X = np.arange(6.0).reshape(2, 3)
    st.put_features("k", ["a", "b"], X, [None, "bad"])
    got, missing = st.get_features("k", ["a", "b", "c"])
    assert missing == ["c"]
    assert np.array_equal(got[:2], X) and np.isnan(got[2]).all()
    assert st.feature_errors("k") == {"b": "bad"}


def test_failed_observation_recorded(tmp_path):
    st = Store(tmp_path / "s.sqlite")
    c = Candidate.from_composition("NiO")
    st.add_candidates([c])
    req = Request(Request.make_id(c.id, "o", 0), c, "o", 0)
    st.start_iteration(0, {}, [req])
    st.add_observation(_obs(req, status=Status.FAILED))
    [o] = st.observations()
    assert o.status == Status.FAILED and o.reason == "boom"
    assert st.spend()["o"]["failed"] == 1
