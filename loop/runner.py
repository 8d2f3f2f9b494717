"""The closed loop: plan -> submit -> store each observation as it arrives -> refit -> repeat.

Resume rule: every request is recorded before submission and every observation the moment
it arrives, so ``Campaign.run`` on an existing store first resubmits the requests that have
no observation (none are lost), never one that has (none are repeated), then goes on.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from matloop.agents.decision.acquisition import SurrogateSettings
from matloop.agents.decision.agent import pareto_summary
from matloop.core.goals import Goal
from matloop.core.protocols import PlanningState
from matloop.agents.modelling.features import FeaturePreprocessor, featurize
from matloop.agents.generation.sources import SOURCE_KINDS, make_source
from matloop.core.records import Candidate, InputError, Observation, Request, Status

from .executors import make_executor
from .planning import build_agent, objective_infos, planning_state
from .spec import CampaignSpec
from .store import Store
from .tiers import build_oracles, oracle_properties

log = logging.getLogger("matloop")


@dataclass
class ArmResult:
    evaluations: int
    best_value: float | None
    best_formula: str | None
    n_feasible: int
    n_hits: int | None  # window goals: evaluations landing in the window


class Campaign:
    """Runs (or resumes) one campaign against its store."""

    def __init__(self, spec: CampaignSpec, store_path: str | Path | None = None, console=None, quiet: bool = False):
        self.spec = spec
        self.store_path = Path(store_path) if store_path else spec.resolve(spec.store)
        self.console = console
        self.quiet = quiet
        self.goal = Goal.from_objective(spec.primary_objective.goal, spec.primary_objective.window)  # best-so-far ranks by the (first) objective
        self.rng = np.random.default_rng(spec.seed)
        self.n_fraction_columns = 0  # width of the fraction block _features appends (additive_fractions)

    # -- output -------------------------------------------------------------------------------
    def _say(self, text: str) -> None:
        log.info(text)
        if not self.quiet:
            if self.console is not None:
                self.console.print(text, highlight=False, soft_wrap=True)
            else:
                print(text, flush=True)

    def _setup_logging(self) -> logging.Handler:
        handler = logging.FileHandler(str(self.store_path) + ".log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        return handler

    # -- set-up -------------------------------------------------------------------------------
    def _load_pool(self, store: Store) -> None:
        if store.get_meta("pool_loaded"):
            return
        total = 0
        for s in self.spec.sources:
            if s.kind not in SOURCE_KINDS:
                continue  # generators draw during the loop
            src = make_source(s.kind, s.label, s.settings, self.spec.base_dir)
            cands = src.load()
            added = store.add_candidates(cands, iteration=-1)
            total += added
            self._say(f"source {s.label!r} ({s.kind}): {len(cands)} candidates, {added} new")
        store.set_meta("pool_loaded", True)

    # -- generators ---------------------------------------------------------------------------
    def _generators(self) -> list[tuple]:
        from matloop.core.registry import load

        out = []
        for s in self.spec.sources:
            if s.kind in SOURCE_KINDS:
                continue
            cls = load("matloop.generators", s.kind)
            out.append((s, cls(s.label, dict(s.settings))))
        return out

    def _state(self, store: Store, candidates: list[Candidate], iteration: int):
        from matloop.core.protocols import CampaignState

        vals = self._objective_values(store, "agent", None)
        fitness = {}
        if vals:
            sc = self.goal.score(np.array([v for _, v in vals]))
            fitness = {cid: float(x) for (cid, _), x in zip(vals, sc)}
        return CampaignState(
            candidates={c.id: c for c in candidates},
            observations=store.observations(arm="agent"),
            fitness=fitness,
            pending=set(),
            iteration=iteration,
        )

    def _generate(self, store: Store, generators: list[tuple], candidates: list[Candidate], iteration: int,
                  initial: bool) -> int:
        """Draw new candidates from generator sources into the store; returns how many were new."""
        if not generators:
            return 0
        state = self._state(store, candidates, iteration)
        counts = {s.label: (s.n_initial if initial else s.n_per_iteration) for s, _ in generators}
        if not initial and self.spec.generation.mix == "adaptive":
            counts = self._bandit_split(store, generators, sum(counts.values()))
        added_total = 0
        for s, gen in generators:
            n = counts.get(s.label, 0)
            if n <= 0:
                continue
            t0 = time.perf_counter()
            try:
                new = gen.generate(n, state, self.rng)
            except Exception as exc:  # a broken generator must not stop the campaign
                log.warning("generator %s failed: %s", s.label, exc)
                self._say(f"generator {s.label!r} failed: {type(exc).__name__}: {exc}")
                continue
            added = store.add_candidates(new, iteration=iteration)
            added_total += added
            self._say(f"generator {s.label!r} ({s.kind}): {len(new)} proposed, {added} new, {time.perf_counter() - t0:.1f} s")
        return added_total

    def _bandit_split(self, store: Store, generators: list[tuple], total: int) -> dict[str, int]:
        """Thompson sampling over generator sources: reward = a generated candidate was picked and came back good."""
        cands = {c.id: c for c in store.candidates()}
        vals = self._objective_values(store, "agent", None)
        if vals:
            sc = self.goal.score(np.array([v for _, v in vals]))
            thresh = np.quantile(sc, 0.75)
            good = {cid for (cid, _), x in zip(vals, sc) if x >= thresh}
        else:
            good = set()
        picked = {o.candidate_id for o in store.observations(arm="agent")}
        draws = {}
        for s, _ in generators:
            mine = [cid for cid in picked if cands.get(cid) is not None and cands[cid].source == s.label]
            wins = sum(1 for cid in mine if cid in good)
            draws[s.label] = self.rng.beta(1 + wins, 1 + len(mine) - wins)
        weights = np.array([draws[s.label] for s, _ in generators])
        weights = weights / weights.sum()
        split = np.floor(weights * total).astype(int)
        split[int(np.argmax(weights))] += total - split.sum()
        return {s.label: int(k) for (s, _), k in zip(generators, split)}

    def _features(self, store: Store, candidates: list[Candidate]) -> np.ndarray:
        """The pool matrix the agent sees (``N x d`` float32, preprocessed over the pool).

        With ``agent.surrogate.kernel_structure: additive_fractions`` the element fractions
        (``fraction_block``, not standardised) are appended last and their width is kept in
        ``self.n_fraction_columns`` (0 otherwise).
        """
        key = self.spec.features.key
        ids = [c.id for c in candidates]
        X, missing = store.get_features(key, ids)
        if missing:
            t0 = time.perf_counter()
            miss = set(missing)
            todo = [c for c in candidates if c.id in miss]
            Xm, errors = featurize(todo, self.spec.features)
            store.put_features(key, [c.id for c in todo], Xm, errors)
            n_err = sum(e is not None for e in errors)
            self._say(f"featurized {len(todo)} candidates in {time.perf_counter() - t0:.1f} s ({n_err} failures recorded)")
            X, _ = store.get_features(key, ids)
        if "fractions" in self.spec.features.composition:
            from matloop.agents.modelling.features import pool_fractions

            F, _ = pool_fractions(candidates)
            X = np.hstack([X, F])
        X = FeaturePreprocessor().fit_transform(X).astype(np.float32)
        self.n_fraction_columns = 0
        if SurrogateSettings(**self.spec.agent.surrogate).fraction_block:
            # kernel_structure 'additive_fractions': the element fractions go last, as their own block
            from matloop.agents.modelling.features import fraction_block

            F = fraction_block(candidates)
            X = np.hstack([X, F])
            self.n_fraction_columns = F.shape[1]
        return X

    def _pareto(self, store: Store, arm: str = "agent") -> dict | None:
        """Several objectives: the current Pareto front of an arm (``pareto_summary``); None otherwise."""
        if not self.spec.objectives:
            return None
        objectives = objective_infos(self.spec)
        formulas = {c.id: c.formula for c in store.candidates()}
        return pareto_summary(store.observations(arm=arm), formulas, objectives, [c.as_core() for c in self.spec.constraints])

    # -- evaluation ---------------------------------------------------------------------------
    def _execute(self, store: Store, executor, oracles: dict, requests: list[Request]) -> list[Observation]:
        """Submit, then store each observation the moment it arrives.

        Waits until every request has an observation, except requests of deferred oracles
        (``manual``: answered later by ``matloop tell``) and, after ``executor.max_wait_s``,
        slow lab requests: those stay open in the store (``self.pending_left``) and are picked
        up again by the next ``matloop run``.
        """
        handles: dict[str, list] = {}
        results: list[Observation] = []
        self._share_phases(store, oracles)
        for r in requests:
            oracle = oracles[r.oracle]
            cached = store.cached_observation(r.candidate.id, oracle.version)
            if cached is not None:
                obs = Observation(
                    **{**cached.to_json(), "status": cached.status, "request_id": r.id, "cost": 0.0, "wall_time_s": 0.0,
                       "extra": {**cached.extra, "cached_from": cached.request_id}}
                )
                store.add_observation(obs)
                results.append(obs)
                continue
            try:
                handles.setdefault(r.oracle, []).extend(oracle.submit([r], executor))
            except Exception as exc:  # a submission that cannot even start is a failed observation
                obs = Observation(r.id, r.candidate.id, oracle.name, oracle.version, oracle.fidelity, Status.FAILED,
                                  cost=0.0, reason=f"submission failed: {type(exc).__name__}: {exc}")
                store.add_observation(obs)
                results.append(obs)
        t0 = time.time()
        last_store_check = 0.0
        max_wait = self.spec.executor.max_wait_s
        while any(handles.values()):
            progressed = False
            for name, hs in handles.items():
                if not hs:
                    continue
                oracle = oracles[name]
                try:
                    ready = oracle.poll(hs)
                    observations = oracle.collect(ready) if ready else []
                except Exception as exc:  # polling a lab may fail; try again later
                    log.warning("polling %s failed: %s", name, exc)
                    ready, observations = [], []
                for h, obs in zip(ready, observations):
                    hs.remove(h)
                    store.add_observation(obs)
                    results.append(obs)
                    progressed = True
                    if not obs.ok:
                        log.warning("failed: %s on %s: %s", obs.oracle, h.request.candidate.formula, obs.reason)
            if time.time() - last_store_check > 1.0:
                # answers recorded by another process (matloop tell) count as arrived
                last_store_check = time.time()
                open_ids = {r[0] for r in store.open_requests()}
                for hs in handles.values():
                    for h in [h for h in hs if h.request.id not in open_ids]:
                        hs.remove(h)
                        progressed = True
            remaining = [h for hs in handles.values() for h in hs]
            if remaining and all(getattr(h, "deferred", False) for h in remaining):
                break
            if max_wait is not None and time.time() - t0 > max_wait:
                break
            if not progressed:
                time.sleep(0.05)
        self.pending_left = [h for hs in handles.values() for h in hs]
        return results

    def _run_async(self, store: Store, executor, oracles: dict, agent, candidates: list[Candidate], X) -> str:
        """Keep every worker busy: submit the next planned pick the moment a worker frees up.

        Planning runs in a background thread on a snapshot of the labels, with the running
        requests as pending points (fantasised), and refills a queue of ``2 x workers`` picks;
        the main thread only polls, stores and submits, so evaluation never waits on a refit.
        """
        from concurrent.futures import ThreadPoolExecutor

        workers = max(1, getattr(executor, "workers", 1))
        in_flight: dict[str, list] = {}
        queue: list[tuple[Request, dict, float | None]] = []
        planner = ThreadPoolExecutor(1, thread_name_prefix="matloop-planner")
        future = None
        self.async_stats = {"busy_s": 0.0, "started": time.time(), "evaluations": 0}
        last_say = time.time()

        def n_in_flight():
            return sum(len(v) for v in in_flight.values())

        def plan(snapshot_obs, requested, pending, q):
            t0 = time.perf_counter()
            p = agent.propose(PlanningState(-1, candidates, X, snapshot_obs, requested, pending, q, self.rng,
                                            fraction_columns=self.n_fraction_columns))
            p.rationale["planning_seconds"] = time.perf_counter() - t0
            return p

        try:
            while True:
                # 1. store what finished
                for name, hs in in_flight.items():
                    if not hs:
                        continue
                    ready = oracles[name].poll(hs)
                    for h, obs in zip(ready, oracles[name].collect(ready) if ready else []):
                        hs.remove(h)
                        store.add_observation(obs)
                        store.finish_iteration(h.request.iteration)
                        self.async_stats["busy_s"] += obs.wall_time_s
                        self.async_stats["evaluations"] += 1
                exhausted = self._exhausted_with(store, n_in_flight())
                if exhausted and n_in_flight() == 0:
                    return exhausted
                # 2. a finished plan refills the queue; start the next plan at once
                if future is not None and future.done():
                    p = future.result()
                    requested = store.requested_pairs()
                    queue = [(r, p.rationale, p.acquisition.get(r.id)) for r in p.requests
                             if (r.candidate.id, r.oracle) not in requested]
                    future = None
                if future is None and not exhausted:
                    pending = {(h.request.candidate.id, h.request.oracle) for hs in in_flight.values() for h in hs}
                    future = planner.submit(plan, store.observations(arm="agent"), store.requested_pairs(), pending,
                                            2 * workers)
                # 3. fill free workers from the queue
                while queue and n_in_flight() < workers and not self._exhausted_with(store, n_in_flight()):
                    r, rationale, acq = queue.pop(0)
                    if (r.candidate.id, r.oracle) in store.requested_pairs():
                        continue
                    idx = store.next_iteration()
                    req = Request(Request.make_id(r.candidate.id, r.oracle, idx), r.candidate, r.oracle, idx)
                    why = {**rationale, "mode": "async", "picked": r.candidate.formula, "in_flight": n_in_flight()}
                    store.start_iteration(idx, why, [req], {req.id: acq})
                    in_flight.setdefault(r.oracle, []).extend(oracles[r.oracle].submit([req], executor))
                if future is not None and future.done() is False and not queue and n_in_flight() == 0 and exhausted:
                    return exhausted
                if time.time() - last_say > 10:
                    last_say = time.time()
                    res = self.arm_result(store, "agent")
                    self._say(f"async | {self.async_stats['evaluations']} evals | in flight {n_in_flight()} | "
                              f"best {res.best_value} ({res.best_formula})")
                if not queue and future is not None and not future.done() and n_in_flight() == 0:
                    future.result()  # nothing else to do: wait for the plan
                time.sleep(0.01)
        finally:
            planner.shutdown(wait=True)
            self.async_stats["wall_s"] = time.time() - self.async_stats["started"]

    def _exhausted_with(self, store: Store, in_flight: int) -> str | None:
        """Budget check counting running requests as already spent."""
        b = self.spec.budget
        cost, n_eval = self._spent(store)
        if b.evaluations is not None and n_eval + in_flight >= b.evaluations:
            return f"evaluation budget reached ({b.evaluations})"
        if b.cost is not None:
            unit = max((o.cost for o in self.spec.oracles), default=0)
            if cost + in_flight * unit >= b.cost - 1e-12:
                return f"cost budget spent ({b.cost:g})"
        if b.iterations is not None and len(store.iterations("agent")) >= b.iterations:
            return f"iteration budget reached ({b.iterations})"
        return None

    def _share_phases(self, store: Store, oracles: dict) -> None:
        """Give ML oracles every phase the campaign computed with them, for their convex hulls."""
        for name, o in oracles.items():
            if not hasattr(o, "observe_phases"):
                continue
            cands = {c.id: c for c in store.candidates()}
            phases = [(cands[ob.candidate_id].formula, ob.properties["energy_ev_per_atom"])
                      for ob in store.observations(oracle=name)
                      if ob.ok and "energy_ev_per_atom" in ob.properties and ob.candidate_id in cands]
            o.observe_phases(phases)

    def _setup_oracles(self, oracles: dict, candidates: list[Candidate]) -> None:
        """Oracle set-up hooks (e.g. elemental references); a failure is logged, not fatal:
        the oracle's evaluations then fail one by one with their own reasons."""
        for name, o in oracles.items():
            try:
                o.setup(candidates)
            except Exception as exc:
                log.warning("set-up of oracle %s failed: %s", name, exc)
                self._say(f"warning: set-up of oracle {name!r} failed ({type(exc).__name__}: {exc}); continuing")

    def _as_promoted(self, store: Store, cand: Candidate, oracle: str) -> Candidate:
        """A resumed funnel request sees the same (relaxed) structure as when it was planned."""
        from matloop.agents.decision.agent import promoted_candidate

        spec = next((o for o in self.spec.oracles if o.name == oracle), None)
        if spec is None or spec.promote is None:
            return cand
        after = [o for o in store.observations(oracle=spec.promote.after) if o.candidate_id == cand.id and o.ok]
        return promoted_candidate(cand, after[0] if after else None)

    def _waiting_reason(self) -> str | None:
        pend = getattr(self, "pending_left", [])
        if not pend:
            return None
        names = sorted({h.request.oracle for h in pend})
        manual = any(getattr(h, "deferred", False) for h in pend)
        hint = f"`matloop ask {self.store_path}` lists them; `matloop tell {self.store_path} results.csv` records results" if manual \
            else "run the campaign again to keep polling"
        return f"waiting for {len(pend)} result(s) from {', '.join(names)}; {hint}"

    # -- bookkeeping --------------------------------------------------------------------------
    def _objective_values(self, store: Store, arm: str, candidates_by_id: dict) -> list[tuple[str, float]]:
        """(candidate id, value) for successful, feasible objective observations of an arm."""
        obj = self.spec.primary_objective
        oname = self.spec.objective_oracle.name
        obs = store.observations(arm=arm)
        by_cand: dict[str, dict[str, Observation]] = {}
        for o in obs:
            if o.ok:
                by_cand.setdefault(o.candidate_id, {})[o.oracle] = o
        out = []
        for cid, per in by_cand.items():
            main = per.get(oname)
            if main is None or main.value(obj.property) is None:
                continue
            if all(c.as_core().met_by(per.values()) for c in self.spec.constraints):
                out.append((cid, main.value(obj.property)))
        return out

    def arm_result(self, store: Store, arm: str) -> ArmResult:
        cands = {c.id: c for c in store.candidates()}
        vals = self._objective_values(store, arm, cands)
        n_eval = sum(v["evaluations"] for v in store.spend(arm).values())
        if not vals:
            return ArmResult(n_eval, None, None, 0, 0 if self.goal.kind == "window" else None)
        scores = self.goal.score(np.array([v for _, v in vals]))
        k = int(np.argmax(scores))
        hits = int(self.goal.contains(np.array([v for _, v in vals])).sum()) if self.goal.kind == "window" else None
        return ArmResult(n_eval, vals[k][1], cands[vals[k][0]].formula, len(vals), hits)

    def _spent(self, store: Store, arm: str = "agent") -> tuple[float, int]:
        sp = store.spend(arm)
        return sum(v["cost"] for v in sp.values()), sum(v["evaluations"] for v in sp.values())

    def _budget_left(self, store: Store) -> float | None:
        b = self.spec.budget
        if b.cost is None:
            return None
        return b.cost - self._spent(store)[0]

    def _exhausted(self, store: Store) -> str | None:
        b = self.spec.budget
        cost, n_eval = self._spent(store)
        n_iter = len([it for it in store.iterations("agent") if it["status"] == "done"])
        if b.cost is not None and cost >= b.cost - 1e-12:
            return f"cost budget spent ({cost:g} of {b.cost:g})"
        if b.iterations is not None and n_iter >= b.iterations:
            return f"iteration budget reached ({n_iter})"
        if b.evaluations is not None and n_eval >= b.evaluations:
            return f"evaluation budget reached ({n_eval})"
        return None

    def _stop_rule(self, store: Store, history: list[float | None]) -> str | None:
        for rule in self.spec.stop:
            best = history[-1] if history else None
            if rule.kind == "target" and best is not None:
                if self.goal.score(np.array([best]))[0] >= self.goal.score(np.array([rule.value]))[0]:
                    return f"target {rule.value:g} reached (best {best:g})"
            if rule.kind == "no_improvement" and len(history) > rule.patience:
                recent = history[-(rule.patience + 1):]
                if recent[0] is not None and all(
                    h is not None and self.goal.score(np.array([h]))[0] <= self.goal.score(np.array([recent[0]]))[0]
                    for h in recent[1:]
                ):
                    return f"no improvement for {rule.patience} iterations"
        return None

    # -- main ---------------------------------------------------------------------------------
    def run(self) -> dict:
        store = Store(self.store_path)
        handler = self._setup_logging()
        executor = None
        try:
            name = store.get_meta("campaign")
            if name is not None and name != self.spec.name:
                raise InputError(
                    f"store belongs to campaign {name!r}, not {self.spec.name!r}; use another store path",
                    file=str(self.store_path),
                )
            store.set_meta("campaign", self.spec.name)
            resumed = store.next_iteration() > 0
            self._say(("resuming" if resumed else "starting") + f" campaign {self.spec.name!r}, store {self.store_path}")
            self._load_pool(store)
            store.set_meta("objective", self.spec.primary_objective.model_dump(mode="json"))
            if self.spec.objectives:
                store.set_meta("objectives", [dict(o.model_dump(mode="json"), oracle=self.spec.oracle_of(o).name)
                                              for o in self.spec.objectives])
            self.pending_left = []
            generators = self._generators()
            if generators and not store.get_meta("generators_initialised"):
                self._generate(store, generators, store.candidates(), -1, initial=True)
                store.set_meta("generators_initialised", True)
            candidates = store.candidates()
            if not candidates:
                raise InputError("the candidate pool is empty", file=str(self.spec.base_dir))
            oracles = build_oracles(self.spec)
            self._setup_oracles(oracles, candidates)
            X = self._features(store, candidates)
            agent = build_agent(self.spec, oracles)
            store.set_meta("oracles", {n: {"kind": o.kind, "version": o.version, "fidelity": o.fidelity, "cost": o.cost,
                                           "properties": list(oracle_properties(o))} for n, o in oracles.items()})
            executor = make_executor(self.spec.executor)
            if hasattr(executor, "warm_up"):
                executor.warm_up()
            cand_by_id = {c.id: c for c in candidates}

            # resume: requests recorded but never answered
            open_reqs = store.open_requests()
            if open_reqs:
                self._say(f"resubmitting {len(open_reqs)} unanswered request(s) from an interrupted run")
                reqs = [Request(rid, self._as_promoted(store, cand_by_id[cid], oracle), oracle, it)
                        for rid, it, arm, cid, oracle in open_reqs]
                self._execute(store, executor, oracles, reqs)
            waiting = self._waiting_reason()
            if not waiting:
                for idx in store.running_iterations():
                    store.finish_iteration(idx)

            # the agent's loop
            history: list[float | None] = []
            stop_reason = None
            t_start = time.perf_counter()
            if self.spec.executor.mode == "async" and not waiting:
                stop_reason = self._run_async(store, executor, oracles, agent, candidates, X)
            while not waiting and self.spec.executor.mode == "batch":
                stop_reason = self._exhausted(store)
                if stop_reason:
                    break
                idx = store.next_iteration()
                if generators and self._generate(store, generators, candidates, idx, initial=False):
                    candidates = store.candidates()
                    cand_by_id = {c.id: c for c in candidates}
                    self._setup_oracles(oracles, candidates)
                    X = self._features(store, candidates)
                t_plan = time.perf_counter()
                q = self.spec.batch_size
                left_evals = None
                if self.spec.budget.evaluations is not None:
                    left_evals = self.spec.budget.evaluations - self._spent(store)[1]
                    q = min(q, left_evals)
                plan = agent.propose(planning_state(store, idx, candidates, X, q, self.rng,
                                                    budget_left=self._budget_left(store), max_requests=left_evals,
                                                    fraction_columns=self.n_fraction_columns))
                plan.rationale["planning_seconds"] = time.perf_counter() - t_plan
                if not plan.requests:
                    stop_reason = plan.rationale.get("stop_reason", "no candidates left to request")
                    break
                store.start_iteration(idx, plan.rationale, plan.requests, plan.acquisition)
                results = self._execute(store, executor, oracles, plan.requests)
                waiting = self._waiting_reason()
                if not waiting:
                    store.finish_iteration(idx)
                res = self.arm_result(store, "agent")
                history.append(res.best_value)
                cost, n_eval = self._spent(store)
                n_fail = sum(1 for r in results if not r.ok)
                best = f"{res.best_value:.4g} ({res.best_formula})" if res.best_value is not None else "none yet"
                budget_txt = f"/{self.spec.budget.cost:g}" if self.spec.budget.cost else ""
                front = self._pareto(store)
                if front is not None:
                    store.set_meta("pareto_front", front)
                    hv = front["hypervolume"]
                    best = f"Pareto front {len(front['front'])} of {front['n_labelled']}" + (
                        f", hypervolume {hv:.4g}" if hv is not None else "")
                else:
                    best = f"best {self.spec.objective.property} {best}"
                self._say(
                    f"iter {idx:3d} | {len(results)} evals ({n_fail} failed) | {best}"
                    f" | spend {cost:g}{budget_txt} | plan {plan.rationale['planning_seconds']:.1f} s"
                )
                stop_reason = self._stop_rule(store, history)
                if stop_reason:
                    break
            if waiting:
                stop_reason = waiting
            self._say(f"stopped: {stop_reason}")
            agent_res = self.arm_result(store, "agent")
            summary = {
                "campaign": self.spec.name,
                "store": str(self.store_path),
                "stop_reason": stop_reason,
                "agent": agent_res.__dict__,
                "spend": store.spend("agent"),
                "seconds": time.perf_counter() - t_start,
            }
            if getattr(self, "async_stats", None):
                summary["async"] = dict(self.async_stats)
            front = self._pareto(store)
            if front is not None:
                store.set_meta("pareto_front", front)
                summary["pareto"] = front
            if self.spec.report.compare_random and not waiting:
                summary["random"] = self._random_arm(store, executor, oracles, candidates).__dict__
                self._print_comparison(summary)
            return summary
        finally:
            if executor is not None:
                executor.shutdown()
            log.removeHandler(handler)
            handler.close()
            store.close()

    def _random_arm(self, store: Store, executor, oracles: dict, candidates: list[Candidate]) -> ArmResult:
        """As many random picks from the same pool on the objective oracle as the agent made."""
        oname = self.spec.objective_oracle.name
        n_target = sum(1 for o in store.observations(oracle=oname, arm="agent"))
        done = {o.candidate_id for o in store.observations(oracle=oname, arm="random")}
        pending_iters = [it for it in store.iterations("random")]
        rng = np.random.default_rng(self.spec.seed + 7919)
        order = rng.permutation(len(candidates))
        picks = [candidates[i] for i in order[:n_target]]
        todo = [c for c in picks if c.id not in done]
        if todo:
            idx = store.next_iteration()
            reqs = [Request(Request.make_id(c.id, oname, idx) + "-rnd", c, oname, idx) for c in todo]
            already = {r[0] for r in store.open_requests()}
            reqs = [r for r in reqs if r.id not in already]
            if reqs:
                self._say(f"random baseline: evaluating {len(reqs)} random picks from the same pool (cached results reused)")
                store.start_iteration(idx, {"arm": "random", "n": len(reqs), "seed": self.spec.seed + 7919}, reqs, arm="random")
                self._execute(store, executor, oracles, reqs)
                store.finish_iteration(idx)
        del pending_iters
        return self.arm_result(store, "random")

    def _print_comparison(self, summary: dict) -> None:
        a, r = summary["agent"], summary["random"]
        prop = self.spec.primary_objective.property
        self._say("")
        self._say(f"summary: {self.spec.name} — objective {self.spec.primary_objective.goal} {prop}")
        self._say(f"  agent : best {a['best_value']} ({a['best_formula']}) after {a['evaluations']} evaluations")
        self._say(f"  random: best {r['best_value']} ({r['best_formula']}) after {r['evaluations']} evaluations (same pool, same budget)")
        if a["best_value"] is not None and r["best_value"] is not None:
            sa = self.goal.score(np.array([a["best_value"]]))[0]
            sr = self.goal.score(np.array([r["best_value"]]))[0]
            verdict = "agent better" if sa > sr else ("tie" if math.isclose(sa, sr) else "random better")
            self._say(f"  difference: {abs(a['best_value'] - r['best_value']):.4g} ({verdict})")
