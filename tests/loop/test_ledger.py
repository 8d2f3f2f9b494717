"""The ledger: what the running loop knows, and the order the agent sees labels in."""

from __future__ import annotations

from matloop.core.records import Candidate, Observation, Request, Status
from matloop.loop.ledger import Ledger
from matloop.loop.store import Store


def _obs(r: Request, value: float) -> Observation:
    return Observation(r.id, r.candidate.id, r.oracle, "v1", 0, Status.SUCCESS, {"y": value})


def test_labels_come_in_plan_order_whatever_order_workers_finish(tmp_path):
    """Two workers finishing in a different order must not change what the agent plans from."""
    cands = [Candidate.from_composition(c) for c in ("NaCl", "KCl", "LiF", "MgO")]
    orders = []
    for arrival in ([0, 1, 2, 3], [3, 1, 0, 2]):
        store = Store(tmp_path / f"s{arrival[0]}.sqlite")
        ledger = Ledger(store)
        ledger.add_candidates(cands)
        reqs = [Request(Request.make_id(c.id, tier, 0), c, tier, 0) for c, tier in
                zip(cands, ["cheap", "costly", "cheap", "costly"])]
        ledger.start_iteration(0, {}, reqs)
        for k in arrival:
            ledger.add_observation(_obs(reqs[k], float(k)))
        orders.append([o.candidate_id for o in ledger.labels()])
        # a resumed run (a new ledger over the same store) sees the same order
        assert [o.candidate_id for o in Ledger(store).labels()] == orders[-1]
        store.close()
    assert orders[0] == orders[1]
    # tier by tier in the order the plan first names them, request order within a tier
    assert orders[0] == [cands[0].id, cands[2].id, cands[1].id, cands[3].id]
