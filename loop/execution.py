"""Batch execution: submit requests, store each observation the moment it arrives, wait for the rest.

Also the oracle hooks the loop calls around execution: set-up with the pool, the phases ML
oracles need for their convex hulls, and the structure a resumed funnel request must see.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from matloop.agents.decision.promotion import tier_candidate
from matloop.core.records import CampaignPaused, Candidate, InputError, Observation, Request, Status

from .ledger import Ledger
from .spec import CampaignSpec

log = logging.getLogger("matloop")


def execute(ledger: Ledger, executor, oracles: dict, requests: list[Request],
            max_wait_s: float | None = None) -> tuple[list[Observation], list]:
    """Submit ``requests`` and store each observation as it arrives.

    A candidate already evaluated successfully by the same oracle version is answered from
    that observation (at no cost). Waits until every request has an observation, except
    requests of deferred oracles (``manual``: answered later by ``matloop tell``) and, after
    ``max_wait_s``, slow lab requests: those stay open in the store.

    Returns:
        The observations made, and the handles still open (picked up by the next ``matloop run``).
    """
    handles: dict[str, list] = {}
    results: list[Observation] = []
    share_phases(ledger, oracles)
    for r in requests:
        oracle = oracles[r.oracle]
        cached = ledger.cached(r.candidate.id, oracle.version)
        if cached is not None:
            obs = Observation(**{**cached.to_json(), "status": cached.status, "request_id": r.id, "cost": 0.0,
                                 "wall_time_s": 0.0, "extra": {**cached.extra, "cached_from": cached.request_id}})
            ledger.add_observation(obs)
            results.append(obs)
            continue
        try:
            handles.setdefault(r.oracle, []).extend(oracle.submit([r], executor))
        except CampaignPaused:  # a lab refused the credentials: nothing is failed, the run stops
            raise
        except Exception as exc:  # a submission that cannot even start is a failed observation
            obs = Observation(r.id, r.candidate.id, oracle.name, oracle.version, oracle.fidelity, Status.FAILED,
                              cost=0.0, reason=f"submission failed: {type(exc).__name__}: {exc}")
            ledger.add_observation(obs)
            results.append(obs)
    results += _wait(ledger, oracles, handles, max_wait_s)
    return results, [h for hs in handles.values() for h in hs]


def _wait(ledger: Ledger, oracles: dict, handles: dict[str, list], max_wait_s: float | None) -> list[Observation]:
    """Poll until the handles are answered (removing them), only deferred ones are left, or time runs out."""
    results = []
    t0 = time.time()
    last_store_check = 0.0
    while any(handles.values()):
        progressed = False
        for name, hs in handles.items():
            if not hs:
                continue
            try:
                ready = oracles[name].poll(hs)
                observations = oracles[name].collect(ready) if ready else []
            except CampaignPaused:
                raise
            except Exception as exc:  # polling a lab may fail; try again later
                log.warning("polling %s failed: %s", name, exc)
                ready, observations = [], []
            for h, obs in zip(ready, observations):
                hs.remove(h)
                ledger.add_observation(obs)
                results.append(obs)
                progressed = True
                if not obs.ok:
                    log.warning("failed: %s on %s: %s", obs.oracle, h.request.candidate.formula, obs.reason)
        if time.time() - last_store_check > 1.0:
            # answers recorded by another process (matloop tell) count as arrived
            last_store_check = time.time()
            open_ids = ledger.open_request_ids()
            answered = {h.request.id for hs in handles.values() for h in hs if h.request.id not in open_ids}
            if answered:
                ledger.reload_observations(answered)
                for hs in handles.values():
                    hs[:] = [h for h in hs if h.request.id not in answered]
                progressed = True
        remaining = [h for hs in handles.values() for h in hs]
        if remaining and all(getattr(h, "deferred", False) for h in remaining):
            break
        if max_wait_s is not None and time.time() - t0 > max_wait_s:
            break
        if not progressed:
            time.sleep(0.05)
    return results


def share_phases(ledger: Ledger, oracles: dict) -> None:
    """Give ML oracles every phase the campaign computed with them, for their convex hulls."""
    for name, o in oracles.items():
        if not hasattr(o, "observe_phases"):
            continue
        phases = sorted((ledger.by_id[ob.candidate_id].formula, ob.properties["energy_ev_per_atom"])
                        for ob in ledger.observations(oracle=name)
                        if ob.ok and "energy_ev_per_atom" in ob.properties and ob.candidate_id in ledger.by_id)
        o.observe_phases(phases)  # sorted: the hull must not depend on the order results happened to arrive in


def setup_oracles(oracles: dict, candidates: list[Candidate], say: Callable[[str], None]) -> None:
    """Oracle set-up hooks (e.g. elemental references); a failure is logged, not fatal:
    the oracle's evaluations then fail one by one with their own reasons. An ``InputError``
    (a missing lab token, say) is fatal: the campaign cannot work until the user fixes it."""
    for name, o in oracles.items():
        try:
            o.setup(candidates)
        except InputError:  # the campaign cannot work as written (e.g. a lab token that is not there)
            raise
        except Exception as exc:
            log.warning("set-up of oracle %s failed: %s", name, exc)
            say(f"warning: set-up of oracle {name!r} failed ({type(exc).__name__}: {exc}); continuing")


def resumed_request(ledger: Ledger, spec: CampaignSpec, request_id: str, iteration: int, candidate_id: str,
                    oracle: str) -> Request:
    """An unanswered stored request, rebuilt; a funnel request sees the same (relaxed) structure as when planned."""
    cand = ledger.by_id[candidate_id]
    after_of = {o.name: o.promote.after for o in spec.oracles if o.promote is not None}
    return Request(request_id, tier_candidate(cand, oracle, after_of, ledger.observations()), oracle, iteration)


def waiting_reason(pending: list, store_path: Path) -> str | None:
    """Why the run stops without its budget spent: results still awaited (and how to give them), or None."""
    if not pending:
        return None
    names = sorted({h.request.oracle for h in pending})
    manual = any(getattr(h, "deferred", False) for h in pending)
    hint = f"`matloop ask {store_path}` lists them; `matloop tell {store_path} results.csv` records results" if manual \
        else "run the campaign again to keep polling"
    return f"waiting for {len(pending)} result(s) from {', '.join(names)}; {hint}"
