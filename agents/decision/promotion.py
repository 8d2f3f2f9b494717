"""Promotions up the funnel (cheap tier -> costly tier) by the oracles' promotion rules.

A step the funnel and Pareto policies share before they pick their own batch: for each
oracle with a ``promote`` rule (``after``, ``property``, ``min``, ``max``, ``top_k``), the
candidates that passed the rule on the cheaper tier and were not yet asked go up, within the
remaining budget.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from matloop.agents.decision.acquisition import select_batch
from matloop.agents.decision.config import AgentConfig
from matloop.agents.decision.draft import PlanDraft
from matloop.agents.decision.labels import label_oracle, objective_labels
from matloop.agents.decision.pipeline import Pool
from matloop.core.protocols import OracleInfo, PlanningState
from matloop.core.records import Candidate, Observation

__all__ = ["promote", "promoted_candidate", "tier_candidate"]


def promoted_candidate(candidate: Candidate, after: Observation | None) -> Candidate:
    """The candidate as the costlier tier should see it: with the cheaper tier's relaxed structure.

    The id (the material's identity) is unchanged, so every tier's observations stay joined.
    """
    if after is None or candidate.structure is None:
        return candidate
    relaxed = (after.extra or {}).get("relaxed_structure")
    if not relaxed:
        return candidate
    prov = {**candidate.provenance, "structure_from": f"{after.oracle} relaxation ({after.request_id})"}
    return replace(candidate, structure=relaxed, provenance=prov)


def tier_candidate(candidate: Candidate, tier: str, after_of: dict[str, str], observations: list[Observation]) -> Candidate:
    """The candidate as funnel rung ``tier`` sees it: the structure its cheaper tier used, relaxed there if it relaxed.

    Follows the ``promote.after`` chain down to the entry tier, so a rung after a tier that
    does not relax (a PBE single point) still gets the structure that tier computed (the
    MLIP-relaxed one), not the candidate as generated.

    Args:
        after_of: rung name -> the tier it is promoted after (``promote.after``).
        observations: the campaign's observations; the first success per (candidate, tier) counts.
    """
    seen = {tier}
    chain = []
    while tier in after_of:
        tier = after_of[tier]
        if tier in seen:  # the spec forbids cycles; never loop on a hand-made config
            break
        seen.add(tier)
        chain.append(tier)
    for after in reversed(chain):  # from the entry tier up
        ob = next((o for o in observations if o.ok and o.oracle == after and o.candidate_id == candidate.id), None)
        candidate = promoted_candidate(candidate, ob)
    return candidate


def promote(config: AgentConfig, state: PlanningState, pool: Pool, draft: PlanDraft) -> None:
    """Add this iteration's promotions to ``draft``, one rule at a time in the oracles' order."""
    after_of = {r.name: r.promote["after"] for r in config.oracles if r.promote}
    for o in config.oracles:
        if not o.promote:
            continue
        passed, ranked_by = _ranked(config, o, state, pool)
        chosen = []
        for ob in passed:
            if draft.expected_cost + o.cost > draft.cost_left:
                break
            if draft.max_requests is not None and len(draft.requests) >= draft.max_requests:
                break
            if ob.candidate_id not in state.index:
                continue
            # what the cheaper tier saw (down the chain), then that tier's own result for it
            seen = tier_candidate(state.candidates[state.index[ob.candidate_id]], o.promote["after"], after_of,
                                  state.observations)
            cand = promoted_candidate(seen, ob)
            draft.add(cand, o.name, o.cost)
            chosen.append(cand.formula)
        draft.rationale["tiers"][o.name] = {"ranked_by": ranked_by, "rule": o.promote, "passed": len(passed),
                                            "promoted": chosen}


def _passes(rule: dict, ob: Observation) -> bool:
    """Whether a successful observation on the cheaper tier meets the rule's bounds."""
    prop = rule.get("property")
    if prop is None:
        return True
    v = ob.value(prop)
    if v is None:
        return False
    return not ((rule.get("min") is not None and v < rule["min"]) or (rule.get("max") is not None and v > rule["max"]))


def _ranked(config: AgentConfig, o: OracleInfo, state: PlanningState, pool: Pool) -> tuple[list[Observation], str]:
    """The observations whose candidates go up to ``o`` (best first) and how they were ranked.

    With ``top_k``: the current top k by the cheaper tier's objective value, those not yet
    promoted; or, when the cheaper tier does not measure the objective, the top k by
    acquisition among those not yet promoted.
    """
    rule = o.promote
    passed = [ob for ob in state.observations if ob.oracle == rule["after"] and ob.ok and _passes(rule, ob)]
    fresh = [ob for ob in passed if (ob.candidate_id, o.name) not in state.requested]
    if not rule.get("top_k"):
        return fresh, "rule filter only"
    key_prop = config.objective_property
    if any(ob.value(key_prop) is not None for ob in passed):
        scored = [(config.goal.score(np.array([ob.value(key_prop)]))[0], ob) for ob in passed
                  if ob.value(key_prop) is not None]
        top = [ob for _, ob in sorted(scored, key=lambda t: -t[0])[: rule["top_k"]]]
        return ([ob for ob in top if (ob.candidate_id, o.name) not in state.requested],
                f"top {rule['top_k']} by {key_prop} on {rule['after']}")
    fresh = [ob for ob in fresh if ob.candidate_id in state.index]
    if len(fresh) <= rule["top_k"]:
        return fresh, "rule filter only"
    return (_rank_by_acquisition(config, fresh, rule["top_k"], state, pool),
            f"top {rule['top_k']} by acquisition on {key_prop}")


def _rank_by_acquisition(config: AgentConfig, passed: list[Observation], k: int, state: PlanningState,
                         pool: Pool) -> list[Observation]:
    """The ``k`` of ``passed`` that the objective's acquisition ranks highest (random while
    fewer than 2 labels exist), in the order of ``passed``."""
    index, rng = state.index, state.rng
    oracle = label_oracle(config, OracleInfo("", (), 0, 0.0), state.observations)
    train_idx, y, yvar = objective_labels(config.objective_property, oracle, state.observations, index)
    if np.isfinite(y).sum() < 2:
        order = rng.permutation(len(passed))[:k]
        return [passed[i] for i in order]
    allowed = np.array([index[ob.candidate_id] for ob in passed], dtype=int)
    exclude = np.setdiff1d(np.arange(pool.shape[0]), allowed)
    acq = config.acquisition.model_copy(update={"init": 0})
    sel = select_batch(pool, train_idx, y, k, config.goal, exclude=exclude, surrogate=config.surrogate,
                       acquisition=acq, rng=rng, n_fraction_columns=state.fraction_columns, yvar=yvar)
    chosen = set(int(i) for i in sel.indices)
    return [ob for ob in passed if index[ob.candidate_id] in chosen]
