"""The closed loop: plan -> submit -> store each observation as it arrives -> refit -> repeat.

Resume rule: every request is recorded before submission and every observation the moment
it arrives, so ``Campaign.run`` on an existing store first resubmits the requests that have
no observation (none are lost), never one that has (none are repeated), then goes on.

Layout: ``Ledger`` (what the loop knows, written through to the store), ``Budget`` (when
to stop), ``execute`` (batch execution), ``AsyncRun`` (asynchronous mode),
``GeneratorSources`` (new candidates during the loop), ``Scoreboard`` (best so far) and
``random_arm`` (the baseline). Dependencies point from this module to those, never back.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from pathlib import Path

import numpy as np

from matloop.agents.generation.sources import SOURCE_KINDS, make_source
from matloop.core.protocols import Agent, Plan, PlanningState
from matloop.core.records import InputError
from matloop.core.units import format_value

from .async_loop import AsyncRun
from .baseline import print_comparison, random_arm
from .budget import Budget, stop_reason
from .execution import execute, resumed_request, setup_oracles, waiting_reason
from .executors import make_executor
from .generation import GeneratorSources
from .ledger import Ledger
from .objective import ArmResult, Scoreboard
from .planning import build_agent
from .pool import PoolFeatures, pool_features
from .progress import Progress
from .spec import CampaignSpec, spec_record
from .store import Store
from .tiers import build_oracles, oracle_properties

log = logging.getLogger("matloop")

__all__ = ["ArmResult", "Campaign", "PoolFeatures"]


class Campaign:
    """Runs (or resumes) one campaign against its store.

    Args:
        spec: the validated campaign.
        store_path: the SQLite store (default: the spec's ``store``); its log goes beside it.
        console: a rich console for progress lines (default: ``print``).
        quiet: no progress lines (they still go to the log).
        agent: the planner (default: ``build_agent(spec, oracles)``, the campaign's ``DefaultAgent``).
        pool: features of the store's candidates, precomputed (default: featurized, cached in the store).
        rng: the only source of randomness (default: ``np.random.default_rng(spec.seed)``).
        store: an open store to run against instead of ``store_path``; left open, and no log file.
    """

    def __init__(self, spec: CampaignSpec, store_path: str | Path | None = None, console=None, quiet: bool = False,
                 *, agent: Agent | None = None, pool: PoolFeatures | None = None,
                 rng: np.random.Generator | None = None, store: Store | None = None):
        self.spec = spec
        self.store_path = Path(store_path) if store_path else (store.path if store else spec.resolve(spec.store))
        self.console = console
        self.quiet = quiet
        self.scoreboard = Scoreboard(spec)
        self.goal = self.scoreboard.goal  # best-so-far ranks by the (first) objective
        self.rng = rng if rng is not None else np.random.default_rng(spec.seed)
        self._own_rng = rng is None  # its state is kept in the store, so a resumed run continues the stream
        self.exit_status = 0
        self.agent = agent
        self.pool = pool
        self._store = store
        self.n_fraction_columns = pool.fraction_columns if pool else 0
        self.pending_left: list = []
        self.async_stats: dict | None = None
        self.progress = Progress(console, quiet, workers=spec.executor.workers if spec.executor.kind != "inline" else 1)

    def _say(self, text: str) -> None:
        log.info(text)
        if not self.quiet:
            if self.console is not None:
                self.console.print(text, highlight=False, soft_wrap=True)
            else:
                print(text, flush=True)

    # -- the run ------------------------------------------------------------------------------
    def run(self) -> dict:
        """Run (or resume) the campaign until its budget is spent, a stop rule fires, or it must wait for results.

        On a store that already holds part of this campaign, first resubmits the requests
        that have no observation (an interrupted run), then plans on. In batch mode each
        iteration plans ``batch_size`` requests, records them, executes them and stores each
        observation as it arrives; in async mode (``executor.mode: async``) every worker is
        kept busy while the agent replans in the background. Afterwards, with
        ``report.compare_random``, the random baseline arm runs on the same pool.

        Returns:
            The summary: ``campaign``, ``store``, ``stop_reason``, ``agent`` (an
            ``ArmResult`` as a dict), ``spend`` (per oracle), ``seconds``, and where they
            apply ``async`` (utilisation), ``pareto`` (several objectives) and ``random``.

        Raises:
            InputError: the store belongs to another campaign, or the pool is empty; ``StoreBusy``
                (another run holds the store) and ``StoreDamaged`` are kinds of it.
            CampaignPaused: a lab refused the credentials; nothing was failed, run again once fixed.

        A run stopped by ``budget.max_consecutive_failures`` returns with ``exit_status`` 4 in
        the summary (the CLI's exit status).
        """
        store = self._store if self._store is not None else Store(self.store_path)
        handler = None
        self.executor = None
        locked_here = False
        try:
            stale = store.acquire_run_lock()  # one run per store; StoreBusy names the live holder
            locked_here = True
            handler = self._setup_logging() if self._store is None else None
            if stale:
                self._say(f"took over the lock of an earlier run that is gone (pid {stale.get('pid')} on host "
                          f"{stale.get('host')})")
            self._prepare(store)
            waiting = self._resume()
            t_start = time.perf_counter()
            if waiting:
                stopped = waiting
            elif self.spec.executor.mode == "async":
                run = AsyncRun(self.ledger, self.budget, self.executor, self.oracles, self.agent, self.pool,
                               self.rng, self.scoreboard, self._say, stop_check=self._failed_out)
                self.async_stats = run.stats
                stopped = run.run()
            else:
                stopped, waiting = self._iterate()
                stopped = waiting or stopped
            return self._finish(stopped, bool(waiting), time.perf_counter() - t_start)
        finally:
            if self.executor is not None:
                self.executor.shutdown()
            if handler is not None:
                log.removeHandler(handler)
                handler.close()
            if self._store is None:
                store.close()
            elif locked_here:
                store.release_run_lock()

    def _setup_logging(self) -> logging.Handler:
        handler = logging.FileHandler(str(self.store_path) + ".log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        return handler

    def _prepare(self, store: Store) -> None:
        """Claim the store, load the pool and generators, build oracles, features, agent and executor."""
        spec = self.spec
        name = store.get_meta("campaign")
        if name is not None and name != spec.name:
            raise InputError(f"store belongs to campaign {name!r}, not {spec.name!r}; use another store path",
                             file=str(self.store_path))
        store.set_meta("campaign", spec.name)
        store.set_meta("campaign_spec", spec_record(spec))  # a resume compares with it (spec.check_resume)
        resumed = store.next_iteration() > 0
        self._say(("resuming" if resumed else "starting") + f" campaign {spec.name!r}, store {self.store_path}")
        self._load_pool(store)
        store.set_meta("objective", spec.primary_objective.model_dump(mode="json"))
        store.set_meta("constraints", [c.model_dump(mode="json") for c in spec.constraints])
        if spec.objectives:
            store.set_meta("objectives", [dict(o.model_dump(mode="json"), oracle=spec.oracle_of(o).name)
                                          for o in spec.objectives])
        self.ledger = Ledger(store)
        self.budget = Budget(spec.budget, self.ledger, max((o.cost for o in spec.oracles), default=0))
        self.generators = GeneratorSources(spec, self.scoreboard, self._say)
        self._restore_rng(store)
        if self.generators and not store.get_meta("generators_initialised"):
            self.generators.draw(self.ledger, -1, self.rng, initial=True)
            if self._own_rng:
                store.set_meta("rng_state", self.rng.bit_generator.state)
            store.set_meta("generators_initialised", True)
        if not self.ledger.candidates:
            raise InputError("the candidate pool is empty", file=str(spec.base_dir))
        self.oracles = build_oracles(spec)
        setup_oracles(self.oracles, self.ledger.candidates, self._say)
        self._featurize()
        self.agent = self.agent if self.agent is not None else build_agent(spec, self.oracles)
        store.set_meta("oracles", {n: {"kind": o.kind, "version": o.version, "fidelity": o.fidelity, "cost": o.cost,
                                       "properties": list(oracle_properties(o))} for n, o in self.oracles.items()})
        self.executor = make_executor(spec.executor)
        if hasattr(self.executor, "warm_up"):
            self.executor.warm_up()

    def _restore_rng(self, store: Store) -> None:
        """On resume, continue the random stream where the last stored plan left it.

        Each plan stores the generator's state after planning in its iteration's rationale (in
        the same transaction as its requests), so a run killed at any moment and resumed draws
        the same numbers as one never interrupted.
        """
        if not self._own_rng:
            return
        state = store.get_meta("rng_state")
        for it in reversed(store.iterations("agent")):
            if "rng_state" in it["rationale"]:
                state = it["rationale"]["rng_state"]
                break
        if state is not None:
            self.rng.bit_generator.state = state

    def _load_pool(self, store: Store) -> None:
        if store.get_meta("pool_loaded"):
            return
        # every source is read (and refused on a bad row) before any candidate is written
        sources = [(s, make_source(s.kind, s.label, s.settings, self.spec.base_dir))
                   for s in self.spec.sources if s.kind in SOURCE_KINDS]  # generators draw during the loop
        loaded = [(s, src, src.load()) for s, src in sources]
        for s, src, cands in loaded:
            added = store.add_candidates(cands, iteration=-1)
            skipped = getattr(src, "skipped", None)
            self._say(f"source {s.label!r} ({s.kind}): {len(cands)} candidates, {added} new"
                      + (f", {len(skipped)} unparseable entries skipped (first: {skipped[0]})" if skipped else ""))
        store.set_meta("pool_loaded", True)

    def _featurize(self) -> None:
        """The pool matrix: the precomputed one when given (it must cover every candidate), else built."""
        n = len(self.ledger.candidates)
        if self.pool is None:
            self.pool = pool_features(self.ledger.store, self.spec, self.ledger.candidates, self._say)
        elif self.pool.X.shape[0] != n:
            raise ValueError(f"precomputed pool features have {self.pool.X.shape[0]} rows for {n} candidates")
        self.n_fraction_columns = self.pool.fraction_columns

    def _resume(self) -> str | None:
        """Resubmit requests recorded but never answered; returns why the run must wait, or None."""
        open_reqs = self.ledger.store.open_requests()
        if open_reqs:
            self._say(f"resubmitting {len(open_reqs)} unanswered request(s) from an interrupted run")
            reqs = [resumed_request(self.ledger, self.spec, rid, it, cid, oracle)
                    for rid, it, _, cid, oracle in open_reqs]
            self._execute(reqs)
        waiting = waiting_reason(self.pending_left, self.store_path)
        if not waiting:
            for idx in self.ledger.running_iterations():
                self.ledger.finish_iteration(idx)
        return waiting

    def _execute(self, requests) -> list:
        with self.progress.track(self.ledger, requests):
            results, self.pending_left = execute(self.ledger, self.executor, self.oracles, requests,
                                                 self.spec.executor.max_wait_s)
        return results

    # -- batch mode ---------------------------------------------------------------------------
    def _iterate(self) -> tuple[str | None, str | None]:
        """Plan, record and execute iterations until a limit; returns (stop reason, waiting reason)."""
        history: list[float | None] = []
        while True:
            stopped = self.budget.exhausted()
            if stopped:
                return stopped, None
            idx = self.ledger.next_iteration()
            if self.generators and self.generators.draw(self.ledger, idx, self.rng):
                setup_oracles(self.oracles, self.ledger.candidates, self._say)
                self.pool = None
                self._featurize()
            plan = self._plan(idx)
            if not plan.requests:
                return plan.rationale.get("stop_reason", "no candidates left to request"), None
            self.ledger.start_iteration(idx, plan.rationale, plan.requests, plan.acquisition)
            results = self._execute(plan.requests)
            waiting = waiting_reason(self.pending_left, self.store_path)
            if not waiting:
                self.ledger.finish_iteration(idx)
            best = self.scoreboard.result(self.ledger.observations(arm="agent"), self.ledger.by_id)
            history.append(best.best_value)
            self._report_iteration(idx, results, best, plan)
            if waiting:
                return None, waiting
            stopped = self._failed_out() or stop_reason(self.spec.stop, self.goal, history)
            if stopped:
                return stopped, None

    def _plan(self, idx: int) -> Plan:
        """The agent's plan for iteration ``idx`` within what is left of the budget."""
        t_plan = time.perf_counter()
        q = self.spec.batch_size
        left_evals = self.budget.evaluations_left()
        if left_evals is not None:
            q = min(q, left_evals)
        state = PlanningState(idx, self.ledger.candidates, self.pool.X, self.ledger.labels(arm="agent"),
                              set(self.ledger.requested), set(), q, self.rng, budget_left=self.budget.cost_left(),
                              max_requests=left_evals, fraction_columns=self.pool.fraction_columns)
        plan = self.agent.propose(state)
        plan.rationale["planning_seconds"] = time.perf_counter() - t_plan
        if self._own_rng:
            plan.rationale["rng_state"] = self.rng.bit_generator.state
        return plan

    def _failed_out(self) -> str | None:
        """Why the run stops after ``budget.max_consecutive_failures`` failures in a row (plan order), or None."""
        limit = self.spec.budget.max_consecutive_failures
        streak = []
        for o in reversed(self.ledger.labels(arm="agent")):
            if o.ok:
                break
            streak.append(o)
        if len(streak) < limit:
            return None
        self.exit_status = 4
        return consecutive_failures_reason(streak, self.ledger.by_id)

    def _report_iteration(self, idx: int, results: list, best: ArmResult, plan: Plan) -> None:
        """One progress line: evaluations, failures, best (or Pareto front), spend, planning time."""
        cost, _ = self.budget.spent()
        n_fail = sum(1 for r in results if not r.ok)
        budget_txt = f"/{self.spec.budget.cost:g}" if self.spec.budget.cost else ""
        front = self.scoreboard.pareto(self.ledger.observations(arm="agent"), self.ledger.candidates)
        if front is not None:
            self.ledger.store.set_meta("pareto_front", front)
            hv = front["hypervolume"]
            text = f"Pareto front {len(front['front'])} of {front['n_labelled']}" + (
                f", hypervolume {hv:.4g}" if hv is not None else "")
        else:
            value = (f"{format_value(best.best_value, self.spec.objective.property)} ({best.best_formula})"
                     if best.best_value is not None else "none yet")
            text = f"best {self.spec.objective.property} {value}"
        self._say(f"iter {idx:3d} | {len(results)} evals ({n_fail} failed) | {text}"
                  f" | spend {cost:g}{budget_txt} | plan {plan.rationale['planning_seconds']:.1f} s")

    # -- the end ------------------------------------------------------------------------------
    def _finish(self, stopped: str | None, waiting: bool, seconds: float) -> dict:
        """Say why the run stopped, run the random arm if asked, and build the summary."""
        self._say(f"stopped: {stopped}")
        store = self.ledger.store
        summary = {
            "campaign": self.spec.name,
            "store": str(self.store_path),
            "stop_reason": stopped,
            "agent": self.scoreboard.result(self.ledger.observations(arm="agent"), self.ledger.by_id).__dict__,
            "spend": store.spend("agent"),
            "seconds": seconds,
        }
        if self.async_stats:
            summary["async"] = dict(self.async_stats)
        front = self.scoreboard.pareto(self.ledger.observations(arm="agent"), self.ledger.candidates)
        if front is not None:
            store.set_meta("pareto_front", front)
            summary["pareto"] = front
        if self.exit_status:
            summary["exit_status"] = self.exit_status
        if self.spec.report.compare_random and not waiting and not self.exit_status:
            summary["random"] = random_arm(self.spec, self.ledger, self.executor, self.oracles, self.scoreboard,
                                           self._say).__dict__
            print_comparison(self.spec, self.scoreboard, summary, self._say)
        return summary


def consecutive_failures_reason(failures: list, by_id: dict) -> str:
    """The stop reason for a run of failed observations: how many, and their most common reason (one example).

    Reasons count as the same when they differ only in the candidate named, paths and numbers.
    """
    def shape(o) -> str:
        reason = o.reason or "no reason"
        c = by_id.get(o.candidate_id)
        for name in sorted({o.candidate_id, o.request_id, *((c.formula, c.composition) if c else ())}, key=len,
                           reverse=True):
            reason = reason.replace(name, "<candidate>")
        return re.sub(r"\d+(\.\d+)?", "#", re.sub(r"/\S+", "<path>", reason))

    counts = Counter(shape(o) for o in failures)
    common, k = counts.most_common(1)[0]
    example = next(o.reason for o in failures if shape(o) == common)
    return (f"{len(failures)} evaluations in a row failed (budget.max_consecutive_failures); most common reason "
            f"({k} of {len(failures)}): {example}")
