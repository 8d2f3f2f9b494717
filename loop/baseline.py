"""The random baseline arm (``report.compare_random``) and the closing comparison with the agent.

The arm evaluates, on the objective oracle, as many random picks from the same pool as the
agent made there; picks already evaluated (by either arm) are answered from the store at no
cost. Its requests and observations live in the store under the arm ``random``, so a rerun
resumes it like the agent's.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from matloop.core.records import Request
from matloop.core.units import format_value

from .execution import execute
from .ledger import Ledger
from .objective import ArmResult, Scoreboard
from .spec import CampaignSpec

RANDOM_SEED_OFFSET = 7919  # the arm's generator: default_rng(spec.seed + 7919)


def random_arm(spec: CampaignSpec, ledger: Ledger, executor, oracles: dict, scoreboard: Scoreboard,
               say: Callable[[str], None]) -> ArmResult:
    """Evaluate (or resume) the random arm; returns its ``ArmResult``."""
    oname = spec.objective_oracle.name
    n_target = len(ledger.observations(arm="agent", oracle=oname))
    done = {o.candidate_id for o in ledger.observations(arm="random", oracle=oname)}
    rng = np.random.default_rng(spec.seed + RANDOM_SEED_OFFSET)
    candidates = ledger.candidates
    order = rng.permutation(len(candidates))
    todo = [candidates[i] for i in order[:n_target] if candidates[i].id not in done]
    if todo:
        idx = ledger.next_iteration()
        reqs = [Request(Request.make_id(c.id, oname, idx) + "-rnd", c, oname, idx) for c in todo]
        already = ledger.open_request_ids()
        reqs = [r for r in reqs if r.id not in already]
        if reqs:
            say(f"random baseline: evaluating {len(reqs)} random picks from the same pool (cached results reused)")
            ledger.start_iteration(idx, {"arm": "random", "n": len(reqs), "seed": spec.seed + RANDOM_SEED_OFFSET},
                                   reqs, arm="random")
            execute(ledger, executor, oracles, reqs, spec.executor.max_wait_s)
            ledger.finish_iteration(idx)
    return scoreboard.result(ledger.observations(arm="random"), ledger.by_id)


def print_comparison(spec: CampaignSpec, scoreboard: Scoreboard, summary: dict, say: Callable[[str], None]) -> None:
    """Say the agent's and the random arm's best side by side, and which is better."""
    a, r = summary["agent"], summary["random"]
    prop = spec.primary_objective.property
    say("")
    say(f"summary: {spec.name} — objective {spec.primary_objective.goal} {prop}")
    say(f"  agent : best {format_value(a['best_value'], prop)} ({a['best_formula']}) after {a['evaluations']} "
        "evaluations")
    say(f"  random: best {format_value(r['best_value'], prop)} ({r['best_formula']}) after {r['evaluations']} "
        "evaluations (same pool, same budget)")
    if a["best_value"] is not None and r["best_value"] is not None:
        sa, sr = scoreboard.goal.score(np.array([a["best_value"], r["best_value"]]))
        verdict = "agent better" if sa > sr else ("tie" if math.isclose(sa, sr) else "random better")
        say(f"  difference: {format_value(abs(a['best_value'] - r['best_value']), prop)} ({verdict})")
