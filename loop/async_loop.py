"""Asynchronous mode: keep every worker busy; planning never waits on evaluation, nor evaluation on planning.

Planning runs in a background thread on a snapshot of the labels, with the running requests
as pending points (fantasised), and refills a queue of ``2 x workers`` picks; the main thread
only polls, stores and submits. Each submitted request is its own iteration in the store.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from matloop.core.protocols import Agent, Plan, PlanningState
from matloop.core.records import Request

from .budget import Budget
from .ledger import Ledger
from .objective import Scoreboard
from .pool import PoolFeatures


class AsyncRun:
    """One asynchronous run of the loop until the budget is spent (``run`` returns the reason).

    Attributes:
        stats: ``busy_s`` (summed evaluation time), ``evaluations``, ``started`` and, after
            the run, ``wall_s``: worker utilisation is ``busy_s / (workers * wall_s)``.
    """

    def __init__(self, ledger: Ledger, budget: Budget, executor, oracles: dict, agent: Agent, pool: PoolFeatures,
                 rng: np.random.Generator, scoreboard: Scoreboard, say: Callable[[str], None],
                 stop_check: Callable[[], str | None] | None = None):
        self.stop_check = stop_check  # e.g. too many failures in a row: a reason to stop now
        self.ledger, self.budget, self.executor, self.oracles = ledger, budget, executor, oracles
        self.agent, self.pool, self.rng, self.scoreboard, self.say = agent, pool, rng, scoreboard, say
        self.workers = max(1, getattr(executor, "workers", 1))
        self.in_flight: dict[str, list] = {}
        self.queue: list[tuple[Request, dict, float | None]] = []
        self.stats = {"busy_s": 0.0, "started": time.time(), "evaluations": 0}

    def n_in_flight(self) -> int:
        """Requests submitted and not yet answered."""
        return sum(len(v) for v in self.in_flight.values())

    def run(self) -> str:
        """Poll, store, replan and submit until the budget is spent; returns the stop reason."""
        planner = ThreadPoolExecutor(1, thread_name_prefix="matloop-planner")
        future: Future | None = None
        last_say = time.time()
        try:
            while True:
                arrived = self._collect()
                halted = self.stop_check() if arrived and self.stop_check is not None else None
                if halted:
                    return halted
                exhausted = self.budget.exhausted(self.n_in_flight())
                if exhausted and self.n_in_flight() == 0:
                    return exhausted
                if future is not None and future.done():  # a finished plan refills the queue
                    self._refill(future.result())
                    future = None
                if future is None and not exhausted:  # start the next plan at once
                    pending = {(h.request.candidate.id, h.request.oracle) for hs in self.in_flight.values() for h in hs}
                    future = planner.submit(self._plan, self.ledger.labels(arm="agent"),
                                            set(self.ledger.requested), pending, 2 * self.workers)
                self._submit_free()
                idle = not self.queue and self.n_in_flight() == 0
                if future is not None and not future.done() and idle and exhausted:
                    return exhausted
                if time.time() - last_say > 10:
                    last_say = time.time()
                    res = self.scoreboard.result(self.ledger.observations(arm="agent"), self.ledger.by_id)
                    self.say(f"async | {self.stats['evaluations']} evals | in flight {self.n_in_flight()} | "
                             f"best {res.best_value} ({res.best_formula})")
                if not self.queue and future is not None and not future.done() and self.n_in_flight() == 0:
                    future.result()  # nothing else to do: wait for the plan
                time.sleep(0.01)
        finally:
            planner.shutdown(wait=True)
            self.stats["wall_s"] = time.time() - self.stats["started"]

    def _plan(self, observations, requested, pending, q) -> Plan:
        t0 = time.perf_counter()
        p = self.agent.propose(PlanningState(-1, self.ledger.candidates, self.pool.X, observations, requested, pending,
                                             q, self.rng, fraction_columns=self.pool.fraction_columns))
        p.rationale["planning_seconds"] = time.perf_counter() - t0
        return p

    def _collect(self) -> int:
        """Store what finished (each request's iteration is done with it); returns how many arrived."""
        arrived = 0
        for name, hs in self.in_flight.items():
            if not hs:
                continue
            ready = self.oracles[name].poll(hs)
            for h, obs in zip(ready, self.oracles[name].collect(ready) if ready else []):
                hs.remove(h)
                self.ledger.add_observation(obs)
                self.ledger.finish_iteration(h.request.iteration)
                self.stats["busy_s"] += obs.wall_time_s
                self.stats["evaluations"] += 1
                arrived += 1
        return arrived

    def _refill(self, plan: Plan) -> None:
        requested = self.ledger.requested
        self.queue = [(r, plan.rationale, plan.acquisition.get(r.id)) for r in plan.requests
                      if (r.candidate.id, r.oracle) not in requested]

    def _submit_free(self) -> None:
        """Fill free workers from the queue, one iteration per request."""
        while self.queue and self.n_in_flight() < self.workers and not self.budget.exhausted(self.n_in_flight()):
            r, rationale, acq = self.queue.pop(0)
            if (r.candidate.id, r.oracle) in self.ledger.requested:
                continue
            idx = self.ledger.next_iteration()
            req = Request(Request.make_id(r.candidate.id, r.oracle, idx), r.candidate, r.oracle, idx)
            why = {**rationale, "mode": "async", "picked": r.candidate.formula, "in_flight": self.n_in_flight()}
            self.ledger.start_iteration(idx, why, [req], {req.id: acq})
            self.in_flight.setdefault(r.oracle, []).extend(self.oracles[r.oracle].submit([req], self.executor))
