"""The default agent: plans one iteration of requests from the campaign's state.

``propose`` reads only labels already acquired; it fits the surrogate on the objective,
scores the whole pool in chunks, picks a batch on a shortlist (``select_batch``), and adds
funnel promotions (cheap tier -> costly tier) by the oracles' promotion rules. It returns
the requests together with a readable rationale that the loop writes to the store.

Two other modes, chosen by the campaign:

* **several objectives** (``AgentConfig.objectives``): one GP per objective, each on its
  oracle's values, and a qLogNEHVI batch (``select_pareto``) weighted by the probabilities
  of feasibility and of oracle success; the batch's candidates go to every entry oracle.
  The rationale holds the current Pareto front (``pareto_summary``) and its hypervolume.
* **multi-fidelity** (``AgentConfig.fidelity``): every oracle reporting the objective
  property is a fidelity of one ``MultiFidelityGP``, and ``choose_requests`` picks
  (candidate, oracle) pairs by expected top-fidelity utility per unit cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from matloop.core.protocols import OracleInfo, Plan, PlanningState
from matloop.core.records import Candidate, Observation, Request

from matloop.agents.decision.acquisition import AcquisitionSettings, Goal, SurrogateSettings, select_batch
from matloop.agents.modelling.multifidelity import ChoiceSettings, MultiFidelitySettings


@dataclass
class ObjectiveInfo:
    """One objective of a multi-objective campaign: a property, the oracle whose value counts, a goal."""

    property: str
    oracle: str
    goal: Goal

    def label(self, all_objectives: list[ObjectiveInfo]) -> str:
        """The property name, or ``property@oracle`` where two objectives share a property."""
        same = sum(1 for o in all_objectives if o.property == self.property)
        return self.property if same == 1 else f"{self.property}@{self.oracle}"


@dataclass
class MultiFidelityConfig:
    """``agent.fidelity`` with ``strategy: multi_fidelity``; ``oracles`` cheapest first, the last one counts."""

    oracles: list[str]
    model: MultiFidelitySettings = field(default_factory=lambda: MultiFidelitySettings())
    choice: ChoiceSettings = field(default_factory=lambda: ChoiceSettings())
    init: int = 3
    pca_variance: float | None = None


@dataclass
class AgentConfig:
    goal: Goal
    objective_property: str
    objective_oracle: str
    oracles: list[OracleInfo]
    surrogate: SurrogateSettings = field(default_factory=SurrogateSettings)
    acquisition: AcquisitionSettings = field(default_factory=AcquisitionSettings)
    constraints: list = field(default_factory=list)  # spec Constraint objects
    objectives: list[ObjectiveInfo] = field(default_factory=list)  # two or more: Pareto search
    fidelity: MultiFidelityConfig | None = None  # None: funnel (promote rules)


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
    """The ``Goal`` of a spec objective (``goal`` and ``window`` fields)."""
    return Goal.from_objective(objective.goal, objective.window)


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

    def _labels(
        self, label_oracle: str, observations: list[Observation], index: dict
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pool indices, values (NaN for failures) and reported noise variances (NaN where the
        oracle gave no uncertainty) of ``label_oracle``'s observations of the objective."""
        prop = self.config.objective_property
        done = {}
        for ob in observations:
            if ob.oracle != label_oracle:
                continue
            v = ob.value(prop) if ob.ok else None
            u = ob.uncertainties.get(prop) if ob.ok and ob.uncertainties else None
            u = float(u) ** 2 if u is not None and math.isfinite(float(u)) else float("nan")
            done[ob.candidate_id] = (v if v is not None else float("nan"), u)
        ids = [cid for cid in done if cid in index]
        return (
            np.array([index[c] for c in ids], dtype=int),
            np.array([done[c][0] for c in ids], dtype=float),
            np.array([done[c][1] for c in ids], dtype=float),
        )

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
        train_idx, y, yvar = self._labels(label_oracle, observations, index)
        if np.isfinite(y).sum() < 2:
            order = rng.permutation(len(passed))[:k]
            return [passed[i] for i in order]
        allowed = np.array([index[ob.candidate_id] for ob in passed], dtype=int)
        exclude = np.setdiff1d(np.arange(X.shape[0]), allowed)
        acq = self.config.acquisition.model_copy(update={"init": 0})
        sel = select_batch(X, train_idx, y, k, self.config.goal, exclude=exclude, surrogate=self.config.surrogate,
                           acquisition=acq, rng=rng, n_fraction_columns=self.n_fraction_columns, yvar=yvar)
        chosen = set(int(i) for i in sel.indices)
        return [ob for ob in passed if index[ob.candidate_id] in chosen]

    def propose(self, state: PlanningState) -> Plan:
        """Plan the next iteration: funnel promotions, then a surrogate-ranked batch per entry tier
        (or a Pareto batch, or multi-fidelity (candidate, oracle) pairs)."""
        return self._propose(state.iteration, state.candidates, state.X, state.observations, state.requested,
                             state.pending, state.batch_size, state.rng, state.budget_left, state.max_requests,
                             state.fraction_columns)

    def _propose(self, iteration, candidates, X, observations, requested, pending, q, rng, budget_left=None,
                 max_requests=None, n_fraction_columns=0) -> Plan:
        self.n_fraction_columns = n_fraction_columns
        cfg = self.config
        if cfg.fidelity is not None:
            return self._propose_multi_fidelity(
                iteration, candidates, X, observations, requested, pending, q, rng, budget_left, max_requests
            )
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

        if cfg.objectives:
            expected_cost = self._pareto_batch(
                iteration, candidates, X, observations, requested, pending, q, rng, left, max_requests,
                index, requests, acq, rationale, expected_cost,
            )
            rationale["expected_cost"] = expected_cost
            rationale["n_requests"] = len(requests)
            return Plan(requests=requests, acquisition=acq, rationale=rationale, expected_cost=expected_cost)

        # 2. surrogate-ranked batch for each entry tier
        for o in self._entry_oracles():
            label_oracle = self._label_oracle(o, observations)
            train_idx, y, yvar = self._labels(label_oracle, observations, index)
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
                from matloop.agents.decision.constraints import select_constrained

                sel = select_constrained(
                    X, train_idx, y, n_afford, cfg.goal, constraint_labels=constraint_labels or None,
                    exclude=exclude, surrogate=cfg.surrogate, acquisition=cfg.acquisition, rng=rng, pending_idx=pend,
                    n_fraction_columns=self.n_fraction_columns, yvar=yvar,
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
                    n_fraction_columns=self.n_fraction_columns,
                    yvar=yvar,
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

    # -- several objectives ---------------------------------------------------------------------

    def _pareto_batch(self, iteration, candidates, X, observations, requested, pending, q, rng, left, max_requests,
                      index, requests, acq, rationale, expected_cost) -> float:
        """Step 2 with several objectives: a qLogNEHVI batch, each pick requested at every entry oracle."""
        from matloop.agents.decision.multiobjective import select_pareto

        cfg = self.config
        entry = self._entry_oracles()
        k = len(cfg.objectives)
        rows: dict[str, list[float]] = {}
        failed: set[str] = set()
        for ob in observations:
            if ob.candidate_id not in index:
                continue
            for j, o in enumerate(cfg.objectives):
                if ob.oracle != o.oracle:
                    continue
                row = rows.setdefault(ob.candidate_id, [math.nan] * k)
                v = ob.value(o.property) if ob.ok else None
                if v is not None:
                    row[j] = v
                if not ob.ok:
                    failed.add(ob.candidate_id)
        train_idx = np.array([index[c] for c in rows], dtype=int)
        Y = np.array(list(rows.values()), dtype=float).reshape(len(rows), k)
        entry_names = {o.name for o in entry}
        exclude = np.array(sorted({index[c] for (c, name) in requested if name in entry_names and c in index}), dtype=int)
        pend = np.array(sorted({index[c] for (c, name) in pending if name in entry_names and c in index}), dtype=int)
        unit_cost = sum(o.cost for o in entry)
        n_afford = q if (unit_cost <= 0 or math.isinf(left)) else int(min(q, max(0, (left - expected_cost) // unit_cost)))
        if max_requests is not None and entry:
            n_afford = min(n_afford, max(0, (max_requests - len(requests)) // len(entry)))
        tier = "+".join(o.name for o in entry) or "pareto"
        rationale["pareto"] = pareto_summary(observations, {c.id: c.formula for c in candidates}, cfg.objectives,
                                             cfg.constraints)
        if n_afford <= 0 or not entry:
            rationale["tiers"][tier] = {"reason": "budget exhausted" if entry else "every oracle has a promote rule"}
            return expected_cost
        log_w, weighting = self._feasibility_log_weights(X, observations, index, train_idx, failed, rng)
        sel = select_pareto(
            X, train_idx, Y, n_afford, [o.goal for o in cfg.objectives], exclude=exclude, rng=rng, pending_idx=pend,
            shortlist=cfg.acquisition.shortlist, surrogate=cfg.surrogate, init=cfg.acquisition.init,
            chunk_size=cfg.acquisition.chunk_size, log_weights=log_w,
        )
        sel.info.pop("pareto_indices", None)  # the front with ids and formulas is rationale['pareto']
        sel.info.pop("pareto_values", None)
        sel.info["constraints"] = weighting
        sel.info["surrogate"] = f"{cfg.surrogate.kind} per objective"
        if "mean_units" in sel.info:
            sel.info["mean_units_per_objective"] = sel.info["mean_units"]
            sel.info["mean_units"] = sel.info["mean_units"][0]
        labels = [o.label(cfg.objectives) for o in cfg.objectives]
        # select_pareto reports a window objective's prediction as its score, -distance to the window
        mean_labels = [f"-distance({lab})" if o.goal.kind == "window" else lab for lab, o in zip(labels, cfg.objectives)]
        chosen = []
        for n, i in enumerate(sel.indices):
            cand = candidates[int(i)]
            a = _f(sel.acquisition[n]) if n < len(sel.acquisition) else None
            for o in entry:
                if (cand.id, o.name) in requested:
                    continue
                r = Request(Request.make_id(cand.id, o.name, iteration), cand, o.name, iteration)
                requests.append(r)
                acq[r.id] = a
                expected_cost += o.cost
            chosen.append({
                "candidate": cand.id, "formula": cand.formula, "source": cand.source, "acquisition": a,
                # scalars for the first objective (what the report's parity plot reads), all objectives beside
                "predicted_mean": _f(np.atleast_1d(sel.mean[n])[0]),
                "predicted_std": _f(np.atleast_1d(sel.std[n])[0]),
                "predicted_means": dict(zip(mean_labels, (_f(m) for m in np.atleast_1d(sel.mean[n])))),
                "predicted_stds": dict(zip(mean_labels, (_f(m) for m in np.atleast_1d(sel.std[n])))),
            })
        rationale["tiers"][tier] = {
            "labels_from": cfg.objectives[0].oracle,  # a name, as for one objective (the report counts them)
            "objective_oracles": {lab: o.oracle for lab, o in zip(labels, cfg.objectives)},
            "selection": sel.info,
            "chosen": chosen,
        }
        return expected_cost


    def _feasibility_log_weights(self, X, observations, index, train_idx, failed, rng):
        """``N`` log P(feasible) + log P(oracle success) over the pool, or None without constraints or failures."""
        from matloop.agents.decision.acquisition import pool_bounds
        from matloop.agents.decision.constraints import fit_feasibility

        cfg = self.config
        labels = self._constraint_labels(observations, index)
        failed_idx = np.array(sorted(index[c] for c in failed), dtype=int)
        if not labels and not len(failed_idx):
            return None, {"weighting": "none: no constraints and no failures observed"}
        feas = fit_feasibility(X, train_idx, labels, failed_idx, surrogate=cfg.surrogate, bounds=pool_bounds(X), rng=rng)
        N = X.shape[0]
        log_w = np.zeros(N)
        cs = cfg.acquisition.chunk_size
        for a in range(0, N, cs):
            lpf, lps = feas.log_weights(np.asarray(X[a : a + cs], dtype=float))
            log_w[a : a + cs] = lpf + lps
        return log_w, {"weighting": "log P(feasible) + log P(success) added to log EHVI", **feas.describe()}

    # -- multi-fidelity ---------------------------------------------------------------------------

    def _propose_multi_fidelity(self, iteration, candidates, X, observations, requested, pending, q, rng,
                                budget_left, max_requests) -> Plan:
        """(candidate, oracle) requests from one ``MultiFidelityGP`` over every fidelity and ``choose_requests``.

        Until ``init`` candidates have been requested at every fidelity (or while a fidelity
        has fewer than 2 labels), random candidates are requested at every fidelity, cheapest
        first. Then the model is refitted on every label of the objective property and
        ``choose_requests`` fills the batch within ``q`` requests and the remaining cost.
        """
        from matloop.agents.decision.acquisition import pool_bounds
        from matloop.agents.modelling.multifidelity import MultiFidelityGP, choose_requests

        cfg = self.config
        mf = cfg.fidelity
        prop = cfg.objective_property
        level = {name: m for m, name in enumerate(mf.oracles)}
        top = len(mf.oracles) - 1
        cost_of = {o.name: o.cost for o in cfg.oracles}
        costs = {level[n]: float(cost_of[n]) for n in mf.oracles}
        index = {c.id: i for i, c in enumerate(candidates)}
        left = math.inf if budget_left is None else float(budget_left)
        n_max = q if max_requests is None else max(0, min(q, max_requests))
        rationale: dict = {"iteration": iteration, "pool_size": len(candidates), "tiers": {},
                           "fidelity": {"strategy": "multi_fidelity", "oracles": list(mf.oracles),
                                        "costs": {n: cost_of[n] for n in mf.oracles}}}
        idx, fid, y = [], [], []
        for ob in observations:
            if ob.ok and ob.oracle in level and ob.candidate_id in index and ob.value(prop) is not None:
                idx.append(index[ob.candidate_id])
                fid.append(level[ob.oracle])
                y.append(ob.value(prop))
        asked: dict[str, set[int]] = {}
        for c, name in set(requested) | set(pending):
            if name in level and c in index:
                asked.setdefault(c, set()).add(level[name])
        n_full = sum(1 for f in asked.values() if len(f) == len(level))
        n_per_fid = np.bincount(np.asarray(fid, dtype=int), minlength=len(level))
        picks: list[tuple[int, int, float, str, float | None, float | None]] = []  # index, fidelity, score, why, mean, std
        if n_full < mf.init or n_per_fid.min() < 2:
            reason = (f"random initial design: {n_full} of {mf.init} candidates requested at every fidelity"
                      if n_full < mf.init else f"random: a fidelity has fewer than 2 labels ({n_per_fid.tolist()})")
            fresh = [i for i in rng.permutation(len(candidates)) if candidates[i].id not in asked]
            spent = 0.0
            for i in fresh[: max(mf.init - n_full, 1)]:
                for m in range(len(level)):
                    if len(picks) >= n_max or spent + costs[m] > left + 1e-12:
                        break
                    picks.append((int(i), m, math.nan, reason, None, None))
                    spent += costs[m]
                else:
                    continue
                break
            rationale["fidelity"]["selection"] = reason
        else:
            Xm = X
            if mf.pca_variance is not None:
                from matloop.agents.modelling.surrogates import fit_pca

                Xm = fit_pca(X, mf.pca_variance)
                rationale["fidelity"]["pca_components"] = int(Xm.shape[1])
            model = MultiFidelityGP(mf.model, bounds=pool_bounds(Xm), seed=int(rng.integers(2**31 - 1)))
            model.fit(Xm[np.asarray(idx, dtype=int)], np.asarray(fid), np.asarray(y), n_fidelities=len(level))
            excl = {m: np.array([index[c] for (c, name) in requested if name == n and c in index], dtype=int)
                    for n, m in level.items()}
            pend = [(index[c], level[name]) for (c, name) in pending if name in level and c in index]
            chosen = choose_requests(model, Xm, costs, top, cfg.goal, n_max, excl, rng, pend,
                                     settings=mf.choice, max_cost=None if math.isinf(left) else left)
            if chosen:
                mean, std = model.predict(Xm[np.array([r.index for r in chosen])], top)
                picks = [(r.index, r.fidelity, r.score, r.rationale, float(mu), float(sd))
                         for r, mu, sd in zip(chosen, mean, std)]
            rationale["fidelity"].update(
                selection=f"choose_requests ({mf.choice.criterion}) on {mf.model.kind}", model=model.fit_info,
                task_correlation=np.round(model.task_correlation(), 4).tolist(),
            )
        requests, acq, expected_cost = [], {}, 0.0
        for i, m, score, why, mu, sd in picks:
            cand, name = candidates[i], mf.oracles[m]
            r = Request(Request.make_id(cand.id, name, iteration), cand, name, iteration)
            requests.append(r)
            acq[r.id] = _f(score)
            expected_cost += costs[m]
            tier = rationale["tiers"].setdefault(name, {"selection": {"reason": rationale["fidelity"]["selection"]},
                                                         "labels_from": mf.oracles[top], "chosen": []})
            tier["chosen"].append({
                "candidate": cand.id, "formula": cand.formula, "source": cand.source, "oracle": name, "fidelity": m,
                "expected_cost": costs[m], "acquisition": _f(score),
                "predicted_mean": _f(mu), "predicted_std": _f(sd),  # of the top fidelity
                "rationale": why,
            })
        if not requests:
            rationale["stop_reason"] = ("remaining budget below the cheapest fidelity's cost"
                                        if left < min(costs.values()) else "no (candidate, fidelity) pair left to request")
        rationale["expected_cost"] = expected_cost
        rationale["n_requests"] = len(requests)
        return Plan(requests=requests, acquisition=acq, rationale=rationale, expected_cost=expected_cost)



def pareto_summary(observations: list[Observation], formulas: dict[str, str], objectives: list[ObjectiveInfo],
                   constraints=()) -> dict:
    """The current Pareto front of the labelled, feasible candidates, and its hypervolume.

    A candidate counts once every objective has a value from its oracle and every
    constraint is met (as for best-so-far). The hypervolume is in score space (each
    objective maximised: the value, its negative, or minus the distance to a window)
    against a reference point 10 % of each score's range below its worst labelled value.

    Returns:
        ``objectives``, ``n_labelled``, ``hypervolume``, ``ref_point_scores`` and ``front``:
        one ``{candidate, formula, values: {objective label: value}}`` per front member.
    """
    from matloop.agents.decision.multiobjective import hypervolume, pareto_front

    k = len(objectives)
    labels = [o.label(objectives) for o in objectives]
    vals: dict[str, list[float]] = {}
    per: dict[str, list[Observation]] = {}
    for ob in observations:
        if not ob.ok:
            continue
        per.setdefault(ob.candidate_id, []).append(ob)
        for j, o in enumerate(objectives):
            v = ob.value(o.property) if ob.oracle == o.oracle else None
            if v is not None:
                vals.setdefault(ob.candidate_id, [math.nan] * k)[j] = v

    ids = [cid for cid, row in vals.items()
           if np.isfinite(row).all() and all(c.met_by(per.get(cid, [])) for c in constraints)]
    out = {"objectives": [{"label": lab, "property": o.property, "oracle": o.oracle, "goal": str(o.goal)}
                          for lab, o in zip(labels, objectives)],
           "n_labelled": len(ids), "hypervolume": None, "ref_point_scores": None, "front": []}
    if not ids:
        return out
    Y = np.array([vals[c] for c in ids], dtype=float)
    S = np.column_stack([o.goal.score(Y[:, j]) for j, o in enumerate(objectives)])
    mask = pareto_front(S, [True] * k)
    # below the worst labelled score by 10 % of the range: only ever moves outward, so the
    # hypervolume of successive iterations never decreases and can be compared
    lo, hi = S.min(axis=0), S.max(axis=0)
    ref = lo - 0.1 * np.where(hi > lo, hi - lo, np.maximum(np.abs(lo), 1.0))
    out["hypervolume"] = hypervolume(S, ref, [True] * k)
    out["ref_point_scores"] = [float(r) for r in ref]
    out["front"] = [{"candidate": c, "formula": formulas.get(c, c), "values": dict(zip(labels, map(float, Y[i])))}
                    for i, c in enumerate(ids) if mask[i]]
    return out


def _f(x) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None
