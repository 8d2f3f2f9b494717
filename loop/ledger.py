"""What the running loop knows, held in memory and written through to the store.

The store stays the source of truth: every write goes to it first (requests before they are
submitted, each observation the moment it arrives), and only then into memory. The ledger
is built from the store when a run starts, so a run resumed after ``kill -9`` sees exactly
what was stored; within the run, nothing is read back from the store per iteration.
Records are kept as the store keeps them (JSON round trip), so the agent and the oracles see
the same values whether a record was written in this run or read back from an earlier one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable

from matloop.core.records import Candidate, Observation, Request

from .store import Store, json_default


def as_stored_observation(obs: Observation) -> Observation:
    """The observation as reading it back from the store would give it (JSON round trip)."""
    return Observation(
        obs.request_id, obs.candidate_id, obs.oracle, obs.oracle_version, obs.fidelity, obs.status,
        json.loads(json.dumps(obs.properties)), json.loads(json.dumps(obs.uncertainties)),
        json.loads(json.dumps(obs.extra, default=json_default)), obs.cost, obs.wall_time_s, obs.reason,
    )


def as_stored_candidate(c: Candidate) -> Candidate:
    """The candidate as reading it back from the store would give it (JSON round trip)."""
    structure = json.loads(json.dumps(c.structure)) if c.structure is not None else None
    return Candidate(c.id, c.formula, c.composition, structure, c.source,
                     json.loads(json.dumps(c.provenance, default=str)))


class Ledger:
    """Candidates, requests, observations and iterations of one store, for one run of the loop.

    Attributes:
        store: the campaign's store (every write goes there first).
        candidates: every candidate, in store order (the rows of the pool matrix).
        by_id: candidate id -> candidate.
        requested: (candidate id, oracle) of every request ever made, over all arms.
    """

    def __init__(self, store: Store):
        self.store = store
        self.candidates: list[Candidate] = store.candidates()
        self.by_id = {c.id: c for c in self.candidates}
        self.requested: set[tuple[str, str]] = store.requested_pairs()
        self._iterations = {it["idx"]: [it["arm"], it["status"]] for it in store.iterations(arm=None)}
        self._arm_of: dict[str, str] = {r[0]: r[2] for r in store.open_requests()}
        for arm in sorted({arm for arm, _ in self._iterations.values()}):
            self._arm_of.update((o.request_id, arm) for o in store.observations(arm=arm))
        # planning sees labels in plan order (per iteration: tier by tier in the order the plan
        # first names them, then request order), not in the order parallel workers happened to
        # finish them, so a campaign replays to the same picks with any number of workers
        self._request_rank: dict[str, tuple[int, int, int]] = {}
        self._tiers_of: dict[int, list[str]] = {}
        for rid, iteration, oracle in store.requests_in_order():
            self._rank(rid, iteration, oracle)
        self._observations: list[tuple[Observation, str]] = []  # arrival order, with each one's arm
        self._first_success: dict[tuple[str, str], Observation] = {}
        self._remember(store.observations())

    # -- candidates ---------------------------------------------------------------------------
    def add_candidates(self, candidates: Iterable[Candidate], iteration: int = -1) -> int:
        """Store new candidates (known ids are ignored) and append them; returns how many were new."""
        candidates = list(candidates)
        added = self.store.add_candidates(candidates, iteration=iteration)
        for c in candidates:
            if c.id not in self.by_id:
                c = as_stored_candidate(c)
                self.candidates.append(c)
                self.by_id[c.id] = c
        return added

    # -- iterations and requests --------------------------------------------------------------
    def next_iteration(self) -> int:
        """Index of the next iteration (over every arm)."""
        return max(self._iterations, default=-1) + 1

    def start_iteration(self, idx: int, rationale: dict, requests: list[Request], acquisition: dict | None = None,
                        arm: str = "agent") -> None:
        """Record an iteration's plan and requests (in one transaction) before anything is submitted."""
        self.store.start_iteration(idx, rationale, requests, acquisition, arm=arm)
        self._iterations[idx] = [arm, "running"]
        for r in requests:
            self._arm_of.setdefault(r.id, arm)
            self._rank(r.id, idx, r.oracle)
            self.requested.add((r.candidate.id, r.oracle))

    def finish_iteration(self, idx: int, status: str = "done") -> None:
        """Mark an iteration finished."""
        self.store.finish_iteration(idx, status)
        if idx in self._iterations:
            self._iterations[idx][1] = status

    def n_iterations(self, arm: str = "agent") -> int:
        """How many iterations of ``arm`` were started (running or done)."""
        return sum(1 for a, _ in self._iterations.values() if a == arm)

    def running_iterations(self) -> list[int]:
        """Indices of iterations still running, in order."""
        return sorted(i for i, (_, status) in self._iterations.items() if status == "running")

    # -- observations -------------------------------------------------------------------------
    def add_observation(self, obs: Observation) -> bool:
        """Commit one observation to the store, then remember it; False if its request already had one."""
        if not self.store.add_observation(obs):
            return False
        self._remember([obs])
        return True

    def observations(self, arm: str | None = None, oracle: str | None = None) -> list[Observation]:
        """Observations in arrival order, optionally of one arm and one oracle."""
        return [o for o, a in self._observations
                if (arm is None or a == arm) and (oracle is None or o.oracle == oracle)]

    def labels(self, arm: str = "agent") -> list[Observation]:
        """An arm's observations in plan order, whatever order they arrived in (what the agent plans from).

        The agent's labels include prior data (the arm ``prior``: results loaded with the API's
        ``add_measurements``), in the order it was recorded among the agent's iterations.
        """
        last = (math.inf, 0, 0)
        arms = (arm, "prior") if arm == "agent" else (arm,)
        return sorted((o for o, a in self._observations if a in arms),
                      key=lambda o: self._request_rank.get(o.request_id, last))

    def _rank(self, request_id: str, iteration: int, oracle: str) -> None:
        tiers = self._tiers_of.setdefault(iteration, [])
        if oracle not in tiers:
            tiers.append(oracle)
        self._request_rank.setdefault(request_id, (iteration, tiers.index(oracle), len(self._request_rank)))

    def cached(self, candidate_id: str, oracle_version: str) -> Observation | None:
        """The first successful observation of this candidate by this oracle version, if any."""
        return self._first_success.get((candidate_id, oracle_version))

    def spent(self, arm: str = "agent") -> tuple[float, int]:
        """Total cost and number of evaluations (failures included) of an arm."""
        by_oracle: dict[str, list[float]] = {}
        for o in self.observations(arm=arm):
            by_oracle.setdefault(o.oracle, []).append(o.cost)
        return sum(math.fsum(by_oracle[k]) for k in sorted(by_oracle)), sum(len(v) for v in by_oracle.values())

    def open_request_ids(self) -> set[str]:
        """Ids of requests without an observation, read from the store (another process may have answered)."""
        return {r[0] for r in self.store.open_requests()}

    def reload_observations(self, request_ids: set[str]) -> None:
        """Bring in observations another process stored (``matloop tell``) for these requests."""
        known = {o.request_id for o, _ in self._observations}
        self._remember([o for o in self.store.observations() if o.request_id in request_ids - known])

    def _remember(self, observations: Iterable[Observation]) -> None:
        for o in observations:
            o = as_stored_observation(o)
            self._observations.append((o, self._arm_of.get(o.request_id, "agent")))
            if o.ok:
                self._first_success.setdefault((o.candidate_id, o.oracle_version), o)
