"""The default agent: plans one iteration of requests from the campaign's state.

``propose`` reads only labels already acquired; it fits the surrogate on the objective,
scores the whole pool in chunks, picks a batch on a shortlist (``select_batch``), and adds
funnel promotions (cheap tier -> costly tier) by the oracles' promotion rules. It returns
the requests together with a readable rationale that the loop writes to the store.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from matloop.oracles.records import Candidate, Observation, Request

from .acquisition import AcquisitionSettings, Goal, SurrogateSettings, select_batch


@dataclass
class OracleInfo:
    """What the agent knows about one oracle (no handle on the oracle itself)."""

    name: str
    properties: tuple[str, ...]
    fidelity: int
    cost: float
    promote: dict | None = None  # PromotionRule as a dict


@dataclass
class Plan:
    requests: list[Request]
    acquisition: dict[str, float]
    rationale: dict
    expected_cost: float = 0.0


@dataclass
class AgentConfig:
    goal: Goal
    objective_property: str
    objective_oracle: str
    oracles: list[OracleInfo]
    surrogate: SurrogateSettings = field(default_factory=SurrogateSettings)
    acquisition: AcquisitionSettings = field(default_factory=AcquisitionSettings)
    constraints: list = field(default_factory=list)  # spec Constraint objects


def promoted_candidate(candidate: Candidate, after: Observation | None) -> Candidate:
    """The candidate as the costlier tier should see it: with the cheaper tier's relaxed structure.

    The id (the material's identity) is unchanged, so every tier's observations stay joined.
    """
    if after is None or candidate.structure is None:
        return candidate
    relaxed = (after.extra or {}).get("relaxed_structure")
    if not relaxed:
        return candidate
    from dataclasses import replace

    prov = {**candidate.provenance, "structure_from": f"{after.oracle} relaxation ({after.request_id})"}
    return replace(candidate, structure=relaxed, provenance=prov)


def goal_from_objective(objective) -> Goal:
    if objective.goal == "maximize":
        return Goal("max")
    if objective.goal == "minimize":
        return Goal("min")
    lo, hi = objective.window
    return Goal("window", float(lo), float(hi))


class DefaultAgent:
    """Surrogate-ranked batches on entry tiers plus rule-based promotion up the funnel."""

    def __init__(self, config: AgentConfig):
        self.config = config

    def _entry_oracles(self) -> list[OracleInfo]:
        return [o for o in self.config.oracles if not o.promote]

    def _label_oracle(self, entry: OracleInfo, observations: list[Observation]) -> str:
        """Which oracle's values train the surrogate that ranks candidates for ``entry``.

        The entry oracle itself when it reports the objective; otherwise the objective
        oracle, falling back to lower-fidelity oracles reporting the same property while the
        objective oracle has fewer labels than the acquisition's ``init``.
        """
        prop = self.config.objective_property
        if prop in entry.properties:
            return entry.name
        reporting = sorted((o for o in self.config.oracles if prop in o.properties), key=lambda o: -o.fidelity)
        for o in reporting:
            n = sum(1 for ob in observations if ob.oracle == o.name and ob.value(prop) is not None)
            if n >= max(2, self.config.acquisition.init):
                return o.name
        return self.config.objective_oracle

    def _labels(self, label_oracle: str, observations: list[Observation], index: dict) -> tuple[np.ndarray, np.ndarray]:
        done = {}
        for ob in observations:
            if ob.oracle != label_oracle:
                continue
            v = ob.value(self.config.objective_property) if ob.ok else None
            done[ob.candidate_id] = v if v is not None else float("nan")
        ids = [cid for cid in done if cid in index]
        return np.array([index[c] for c in ids], dtype=int), np.array([done[c] for c in ids], dtype=float)

    def _constraint_labels(self, observations: list[Observation], index: dict) -> dict:
        """name -> (pool indices, values, lo, hi) for each known constraint with labels."""
        out = {}
        for c in self.config.constraints:
            vals = {}
            for ob in observations:
                if not ob.ok or (c.oracle and ob.oracle != c.oracle) or ob.candidate_id not in index:
                    continue
                v = ob.value(c.property)
                if v is not None:
                    vals[index[ob.candidate_id]] = v
            if len(vals) >= 2:
                idx = np.fromiter(vals.keys(), dtype=int)
                out[f"{c.property}@{c.oracle or 'any'}"] = (idx, np.fromiter(vals.values(), dtype=float), c.min, c.max)
        return out

    def _rank_by_acquisition(self, passed, k, index, X, observations, rng):
        label_oracle = self._label_oracle(OracleInfo("", (), 0, 0.0), observations)
        train_idx, y = self._labels(label_oracle, observations, index)
        if np.isfinite(y).sum() < 2:
            order = rng.permutation(len(passed))[:k]
            return [passed[i] for i in order]
        allowed = np.array([index[ob.candidate_id] for ob in passed], dtype=int)
        exclude = np.setdiff1d(np.arange(X.shape[0]), allowed)
        acq = self.config.acquisition.model_copy(update={"init": 0})
        sel = select_batch(X, train_idx, y, k, self.config.goal, exclude=exclude, surrogate=self.config.surrogate,
                           acquisition=acq, rng=rng)
        chosen = set(int(i) for i in sel.indices)
        return [ob for ob in passed if index[ob.candidate_id] in chosen]

    def propose(
        self,
        iteration: int,
        candidates: list[Candidate],
        X: np.ndarray,
        observations: list[Observation],
        requested: set[tuple[str, str]],
        pending: set[tuple[str, str]],
        q: int,
        rng: np.random.Generator,
        budget_left: float | None = None,
        max_requests: int | None = None,
    ) -> Plan:
        """Plan the next iteration.

        Args:
            candidates: the pool, row-aligned with ``X`` (``N x d`` preprocessed features).
            observations: every observation of the agent's arm so far.
            requested: (candidate id, oracle) pairs ever requested (never asked again).
            pending: pairs still running (fantasised).
            q: batch size for the entry tier.
            budget_left: remaining cost; the batch is cut to fit.
            max_requests: remaining evaluations (all tiers); promotions count too.
        """
        cfg = self.config
        index = {c.id: i for i, c in enumerate(candidates)}
        requests: list[Request] = []
        acq: dict[str, float] = {}
        rationale: dict = {"iteration": iteration, "pool_size": len(candidates), "tiers": {}}
        expected_cost = 0.0
        left = math.inf if budget_left is None else budget_left

        # 1. promotions up the funnel (cheap -> costly), by rule
        for o in cfg.oracles:
            if not o.promote:
                continue
            rule = o.promote
            src = [ob for ob in observations if ob.oracle == rule["after"] and ob.ok]
            passed = []
            for ob in src:
                prop = rule.get("property")
                if prop is not None:
                    v = ob.value(prop)
                    if v is None:
                        continue
                    if rule.get("min") is not None and v < rule["min"]:
                        continue
                    if rule.get("max") is not None and v > rule["max"]:
                        continue
                passed.append(ob)
            ranked_by = "rule filter only"
            if rule.get("top_k"):
                key_prop = cfg.objective_property
                after_reports = any(ob.value(key_prop) is not None for ob in passed)
                if after_reports:
                    # the current top k by the cheaper tier's objective value; those not yet promoted go up
                    scored = [(cfg.goal.score(np.array([ob.value(key_prop)]))[0], ob) for ob in passed
                              if ob.value(key_prop) is not None]
                    passed = [ob for _, ob in sorted(scored, key=lambda t: -t[0])[: rule["top_k"]]]
                    passed = [ob for ob in passed if (ob.candidate_id, o.name) not in requested]
                    ranked_by = f"top {rule['top_k']} by {key_prop} on {rule['after']}"
                else:
                    # the cheaper tier does not measure the objective: rank by acquisition
                    passed = [ob for ob in passed if (ob.candidate_id, o.name) not in requested and ob.candidate_id in index]
                    if len(passed) > rule["top_k"]:
                        passed = self._rank_by_acquisition(passed, rule["top_k"], index, X, observations, rng)
                        ranked_by = f"top {rule['top_k']} by acquisition on {key_prop}"
            else:
                passed = [ob for ob in passed if (ob.candidate_id, o.name) not in requested]
            chosen = []
            for ob in passed:
                if expected_cost + o.cost > left:
                    break
                if max_requests is not None and len(requests) >= max_requests:
                    break
                cand = candidates[index[ob.candidate_id]] if ob.candidate_id in index else None
                if cand is None:
                    continue
                cand = promoted_candidate(cand, ob)
                r = Request(Request.make_id(cand.id, o.name, iteration), cand, o.name, iteration)
                requests.append(r)
                expected_cost += o.cost
                chosen.append(cand.formula)
            rationale["tiers"][o.name] = {
                "ranked_by": ranked_by,
                "rule": rule,
                "passed": len(passed),
                "promoted": chosen,
            }

        # 2. surrogate-ranked batch for each entry tier
        for o in self._entry_oracles():
            label_oracle = self._label_oracle(o, observations)
            train_idx, y = self._labels(label_oracle, observations, index)
            exclude = np.array([index[c] for (c, name) in requested if name == o.name and c in index], dtype=int)
            pend = np.array([index[c] for (c, name) in pending if name == o.name and c in index], dtype=int)
            n_afford = q if (o.cost <= 0 or math.isinf(left)) else int(min(q, max(0, (left - expected_cost) // o.cost)))
            if max_requests is not None:
                n_afford = min(n_afford, max(0, max_requests - len(requests)))
            if n_afford <= 0:
                rationale["tiers"][o.name] = {"reason": "budget exhausted"}
                continue
            constraint_labels = self._constraint_labels(observations, index)
            has_failures = bool(np.isnan(y).any()) if len(y) else False
            if (constraint_labels or has_failures) and cfg.acquisition.kind not in ("ucb", "thompson"):
                # unknown constraints (oracle failures) and known ones (e.g. stability) weight the acquisition
                from .constraints import select_constrained

                sel = select_constrained(
                    X, train_idx, y, n_afford, cfg.goal, constraint_labels=constraint_labels or None,
                    exclude=exclude, surrogate=cfg.surrogate, acquisition=cfg.acquisition, rng=rng, pending_idx=pend,
                )
            else:
                sel = select_batch(
                    X,
                    train_idx,
                    y,
                    n_afford,
                    cfg.goal,
                    exclude=exclude,
                    surrogate=cfg.surrogate,
                    acquisition=cfg.acquisition,
                    rng=rng,
                    pending_idx=pend,
                )
            chosen = []
            for k, i in enumerate(sel.indices):
                cand = candidates[int(i)]
                r = Request(Request.make_id(cand.id, o.name, iteration), cand, o.name, iteration)
                requests.append(r)
                a = float(sel.acquisition[k]) if k < len(sel.acquisition) else float("nan")
                acq[r.id] = a if math.isfinite(a) else None
                expected_cost += o.cost
                chosen.append(
                    {
                        "candidate": cand.id,
                        "formula": cand.formula,
                        "source": cand.source,
                        "acquisition": _f(sel.acquisition[k]),
                        "predicted_mean": _f(sel.mean[k]),
                        "predicted_std": _f(sel.std[k]),
                    }
                )
            rationale["tiers"][o.name] = {"labels_from": label_oracle, "selection": sel.info, "chosen": chosen}
        rationale["expected_cost"] = expected_cost
        rationale["n_requests"] = len(requests)
        return Plan(requests=requests, acquisition=acq, rationale=rationale, expected_cost=expected_cost)


def _f(x) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None
