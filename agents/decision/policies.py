"""Three planning policies over one selection pipeline (``matloop.agents.decision.pipeline``).

Each policy is ``propose(state) -> Plan``, reads only the labels already acquired, and differs
from the others in its batch rule, not its plumbing:

* ``FunnelPolicy`` (one objective): promotions up the funnel by the oracles' rules, then a
  surrogate-ranked batch per entry tier (``select_batch``; ``select_constrained`` with known
  constraints or oracle failures).
* ``ParetoPolicy`` (several objectives): promotions, then one qLogNEHVI batch
  (``select_pareto``) weighted by the probabilities of feasibility and of oracle success;
  each pick goes to every entry oracle.
* ``MultiFidelityPolicy``: one ``MultiFidelityGP`` over every fidelity and
  ``choose_requests`` picks (candidate, oracle) pairs by expected top-fidelity utility per
  unit cost.

Every policy builds one ``Pool`` per state, so the pool's bounds and PCA view are computed
once per plan, whatever the number of tiers, promotions and models.
"""

from __future__ import annotations

import math

import numpy as np

from matloop.agents.decision.acquisition import select_batch
from matloop.agents.decision.config import AgentConfig
from matloop.agents.decision.constraints import fit_feasibility, select_constrained
from matloop.agents.decision.draft import PlanDraft
from matloop.agents.decision.labels import constraint_labels, label_oracle, objective_labels, objectives_table, rows_of
from matloop.agents.decision.multifidelity import choose_requests
from matloop.agents.decision.multiobjective import pareto_summary, select_pareto
from matloop.agents.decision.pipeline import Pool, Selection, finite_or_none, screen
from matloop.agents.decision.promotion import promote
from matloop.agents.decision.skill import Skill
from matloop.agents.modelling.multifidelity import MultiFidelityGP
from matloop.core.protocols import OracleInfo, Plan, PlanningState

__all__ = ["FunnelPolicy", "MultiFidelityPolicy", "ParetoPolicy"]


class FunnelPolicy:
    """One objective: funnel promotions, then a surrogate-ranked batch for each entry tier."""

    def __init__(self, config: AgentConfig):
        self.config = config

    def propose(self, state: PlanningState) -> Plan:
        """Promotions by rule, then ``select_batch`` / ``select_constrained`` per entry oracle."""
        pool, draft = Pool.of(state), PlanDraft(state)
        promote(self.config, state, pool, draft)
        for o in self.config.entry_oracles():
            self._entry_batch(o, state, pool, draft)
        return draft.plan()

    def _entry_batch(self, o: OracleInfo, state: PlanningState, pool: Pool, draft: PlanDraft) -> None:
        cfg = self.config
        labels_from = label_oracle(cfg, o, state.observations)
        train_idx, y, yvar = objective_labels(cfg.objective_property, labels_from, state.observations, state.index)
        n = draft.affordable(state.batch_size, o.cost)
        if n <= 0:
            draft.rationale["tiers"][o.name] = {"reason": "budget exhausted"}
            return
        sel = self._select(state, pool, o, train_idx, y, yvar, n)
        chosen = []
        first_explore = len(sel.indices) - int(sel.info.get("explore_picks", 0))  # exploration picks come last
        for k, i in enumerate(sel.indices):
            cand = state.candidates[int(i)]
            draft.add_scored(cand, o.name, o.cost, finite_or_none(sel.acquisition[k]) if k < len(sel.acquisition) else None)
            chosen.append({"candidate": cand.id, "formula": cand.formula, "source": cand.source,
                           "acquisition": finite_or_none(sel.acquisition[k]),
                           "predicted_mean": finite_or_none(sel.mean[k]), "predicted_std": finite_or_none(sel.std[k])})
            if k >= first_explore:
                chosen[-1]["rationale"] = "space-filling exploration: the model's ranking is not trusted (see skill)"
        draft.rationale["tiers"][o.name] = {"labels_from": labels_from, "selection": sel.info, "chosen": chosen}
        if "skill" in sel.info:
            draft.rationale["tiers"][o.name]["skill"] = {k: sel.info["skill"].get(k) for k in Skill.RECORD}

    def _select(self, state: PlanningState, pool: Pool, o: OracleInfo, train_idx, y, yvar, n: int) -> Selection:
        """Known constraints and oracle failures weight a log-scale acquisition; otherwise ``select_batch``."""
        cfg = self.config
        exclude = rows_of(state.requested, {o.name}, state.index)
        pend = rows_of(state.pending, {o.name}, state.index)
        labels = constraint_labels(cfg.constraints, state.observations, state.index)
        has_failures = bool(np.isnan(y).any()) if len(y) else False
        common = dict(exclude=exclude, surrogate=cfg.surrogate, acquisition=cfg.acquisition, rng=state.rng,
                      pending_idx=pend, n_fraction_columns=state.fraction_columns, yvar=yvar)
        if (labels or has_failures) and cfg.acquisition.kind not in ("ucb", "thompson"):
            return select_constrained(pool, train_idx, y, n, cfg.goal, constraint_labels=labels or None, **common)
        return select_batch(pool, train_idx, y, n, cfg.goal, **common)


class ParetoPolicy:
    """Several objectives: funnel promotions, then one qLogNEHVI batch requested at every entry oracle."""

    def __init__(self, config: AgentConfig):
        self.config = config

    def propose(self, state: PlanningState) -> Plan:
        """Promotions by rule, then ``select_pareto`` weighted by feasibility and oracle success."""
        pool, draft = Pool.of(state), PlanDraft(state)
        promote(self.config, state, pool, draft)
        self._pareto_batch(state, pool, draft)
        return draft.plan()

    def _pareto_batch(self, state: PlanningState, pool: Pool, draft: PlanDraft) -> None:
        cfg, index = self.config, state.index
        entry = cfg.entry_oracles()
        train_idx, Y, failed = objectives_table(cfg.objectives, state.observations, index)
        names = {o.name for o in entry}
        tier = "+".join(o.name for o in entry) or "pareto"
        draft.rationale["pareto"] = pareto_summary(state.observations, {c.id: c.formula for c in state.candidates},
                                                   cfg.objectives, cfg.constraints)
        if not entry:
            draft.rationale["tiers"][tier] = {"reason": "every oracle has a promote rule"}
            return
        n = draft.affordable(state.batch_size, sum(o.cost for o in entry), per_unit=len(entry))
        if n <= 0:
            draft.rationale["tiers"][tier] = {"reason": "budget exhausted"}
            return
        log_w, weighting = self._feasibility_log_weights(state, pool, train_idx, failed)
        sel = select_pareto(
            pool, train_idx, Y, n, [o.goal for o in cfg.objectives], exclude=rows_of(state.requested, names, index),
            rng=state.rng, pending_idx=rows_of(state.pending, names, index), shortlist=cfg.acquisition.shortlist,
            surrogate=cfg.surrogate, init=cfg.acquisition.init, chunk_size=cfg.acquisition.chunk_size, log_weights=log_w,
        )
        chosen = []
        for k, i in enumerate(sel.indices):
            cand = state.candidates[int(i)]
            a = finite_or_none(sel.acquisition[k]) if k < len(sel.acquisition) else None
            for o in entry:
                if (cand.id, o.name) not in state.requested:
                    draft.add_scored(cand, o.name, o.cost, a)
            chosen.append(self._chosen(cand, a, sel.mean[k], sel.std[k]))
        labels = [o.label(cfg.objectives) for o in cfg.objectives]
        draft.rationale["tiers"][tier] = {
            "labels_from": cfg.objectives[0].oracle,  # a name, as for one objective (the report counts them)
            "objective_oracles": {lab: o.oracle for lab, o in zip(labels, cfg.objectives)},
            "selection": self._selection_info(sel, weighting),
            "chosen": chosen,
        }

    def _selection_info(self, sel: Selection, weighting: dict) -> dict:
        info = sel.info
        info.pop("pareto_indices", None)  # the front with ids and formulas is rationale['pareto']
        info.pop("pareto_values", None)
        info["constraints"] = weighting
        info["surrogate"] = f"{self.config.surrogate.kind} per objective"
        if "mean_units" in info:
            info["mean_units_per_objective"] = info["mean_units"]
            info["mean_units"] = info["mean_units"][0]
        return info

    def _chosen(self, cand, a, mean, std) -> dict:
        """One pick's rationale: scalars for the first objective (what the report's parity plot
        reads) and every objective beside them."""
        objs = self.config.objectives
        # select_pareto reports a window objective's prediction as its score, -distance to the window
        mean_labels = [f"-distance({o.label(objs)})" if o.goal.kind == "window" else o.label(objs) for o in objs]
        return {
            "candidate": cand.id, "formula": cand.formula, "source": cand.source, "acquisition": a,
            "predicted_mean": finite_or_none(np.atleast_1d(mean)[0]),
            "predicted_std": finite_or_none(np.atleast_1d(std)[0]),
            "predicted_means": dict(zip(mean_labels, (finite_or_none(m) for m in np.atleast_1d(mean)))),
            "predicted_stds": dict(zip(mean_labels, (finite_or_none(m) for m in np.atleast_1d(std)))),
        }

    def _feasibility_log_weights(self, state: PlanningState, pool: Pool, train_idx, failed) -> tuple:
        """``N`` log P(feasible) + log P(oracle success) over the pool, or None without constraints or failures."""
        cfg, index = self.config, state.index
        labels = constraint_labels(cfg.constraints, state.observations, index)
        failed_idx = np.array(sorted(index[c] for c in failed), dtype=int)
        if not labels and not len(failed_idx):
            return None, {"weighting": "none: no constraints and no failures observed"}
        feas = fit_feasibility(pool, train_idx, labels, failed_idx, surrogate=cfg.surrogate, bounds=pool.bounds,
                               rng=state.rng)
        log_w = screen(pool, np.arange(pool.shape[0]), cfg.acquisition.chunk_size,
                       lambda Xc, _: np.add(*feas.log_weights(np.asarray(Xc, dtype=float))))
        return log_w, {"weighting": "log P(feasible) + log P(success) added to log EHVI", **feas.describe()}


class MultiFidelityPolicy:
    """(candidate, oracle) requests from one ``MultiFidelityGP`` over every fidelity and ``choose_requests``.

    Until ``init`` candidates have been requested at every fidelity (or while a fidelity has
    fewer than 2 labels), random candidates are requested at every fidelity, cheapest first.
    Then the model is refitted on every label of the objective property and
    ``choose_requests`` fills the batch within ``q`` requests and the remaining cost.
    """

    def __init__(self, config: AgentConfig):
        self.config = config
        mf = config.fidelity
        self.level = {name: m for m, name in enumerate(mf.oracles)}
        self.top = len(mf.oracles) - 1
        cost_of = {o.name: o.cost for o in config.oracles}
        self.oracle_costs = {n: cost_of[n] for n in mf.oracles}
        self.costs = {self.level[n]: float(cost_of[n]) for n in mf.oracles}

    def propose(self, state: PlanningState) -> Plan:
        """Random pairs for the initial design, then ``choose_requests`` on the fitted model."""
        mf = self.config.fidelity
        draft = PlanDraft(state, fidelity={"strategy": "multi_fidelity", "oracles": list(mf.oracles),
                                           "costs": dict(self.oracle_costs)})
        n_max = state.batch_size if state.max_requests is None else max(0, min(state.batch_size, state.max_requests))
        idx, fid, y = self._labels(state)
        asked: dict[str, set[int]] = {}
        for c, name in set(state.requested) | set(state.pending):
            if name in self.level and c in state.index:
                asked.setdefault(c, set()).add(self.level[name])
        n_full = sum(1 for f in asked.values() if len(f) == len(self.level))
        n_per_fid = np.bincount(np.asarray(fid, dtype=int), minlength=len(self.level))
        if n_full < mf.init or n_per_fid.min() < 2:
            reason = (f"random initial design: {n_full} of {mf.init} candidates requested at every fidelity"
                      if n_full < mf.init else f"random: a fidelity has fewer than 2 labels ({n_per_fid.tolist()})")
            picks = self._initial_design(state, asked, n_full, n_max, reason)
            draft.rationale["fidelity"]["selection"] = reason
        else:
            picks = self._model_design(state, idx, fid, y, n_max, draft.rationale["fidelity"])
        for i, m, score, why, mu, sd in picks:
            self._add(state, draft, i, m, score, why, mu, sd)
        if not draft.requests:
            draft.rationale["stop_reason"] = ("remaining budget below the cheapest fidelity's cost"
                                              if state.cost_left < min(self.costs.values())
                                              else "no (candidate, fidelity) pair left to request")
        return draft.plan()

    def _labels(self, state: PlanningState) -> tuple[list[int], list[int], list[float]]:
        """Pool index, fidelity and value of every successful observation of the objective property."""
        prop = self.config.objective_property
        idx, fid, y = [], [], []
        for ob in state.observations:
            if ob.ok and ob.oracle in self.level and ob.candidate_id in state.index and ob.value(prop) is not None:
                idx.append(state.index[ob.candidate_id])
                fid.append(self.level[ob.oracle])
                y.append(ob.value(prop))
        return idx, fid, y

    def _initial_design(self, state: PlanningState, asked: dict, n_full: int, n_max: int, reason: str) -> list:
        """Random fresh candidates at every fidelity, cheapest first, within ``n_max`` and the cost left."""
        mf, left = self.config.fidelity, state.cost_left
        fresh = [i for i in state.rng.permutation(len(state.candidates)) if state.candidates[i].id not in asked]
        picks, spent = [], 0.0
        for i in fresh[: max(mf.init - n_full, 1)]:
            for m in range(len(self.level)):
                if len(picks) >= n_max or spent + self.costs[m] > left + 1e-12:
                    return picks
                picks.append((int(i), m, math.nan, reason, None, None))
                spent += self.costs[m]
        return picks

    def _model_design(self, state: PlanningState, idx, fid, y, n_max: int, rationale: dict) -> list:
        """Fit the multi-fidelity GP on every label and let ``choose_requests`` pick the pairs."""
        cfg, mf, index, left = self.config, self.config.fidelity, state.index, state.cost_left
        pool = Pool.of(state)
        X = pool.pca(mf.pca_variance) if mf.pca_variance is not None else pool
        if X is not pool:
            rationale["pca_components"] = int(X.shape[1])
        model = MultiFidelityGP(mf.model, bounds=X.bounds, seed=int(state.rng.integers(2**31 - 1)))
        model.fit(X[np.asarray(idx, dtype=int)], np.asarray(fid), np.asarray(y), n_fidelities=len(self.level))
        excl = {m: rows_of(state.requested, {n}, index) for n, m in self.level.items()}
        pend = sorted((index[c], self.level[name]) for (c, name) in state.pending if name in self.level and c in index)
        chosen = choose_requests(model, X, self.costs, self.top, cfg.goal, n_max, excl, state.rng, pend,
                                 settings=mf.choice, max_cost=None if math.isinf(left) else left)
        picks = []
        if chosen:
            mean, std = model.predict(X[np.array([r.index for r in chosen])], self.top)
            picks = [(r.index, r.fidelity, r.score, r.rationale, float(mu), float(sd))
                     for r, mu, sd in zip(chosen, mean, std)]
        rationale.update(selection=f"choose_requests ({mf.choice.criterion}) on {mf.model.kind}", model=model.fit_info,
                         task_correlation=np.round(model.task_correlation(), 4).tolist())
        return picks

    def _add(self, state: PlanningState, draft: PlanDraft, i, m, score, why, mu, sd) -> None:
        """Request candidate ``i`` at fidelity ``m``, with its line in that tier's rationale."""
        mf = self.config.fidelity
        cand, name = state.candidates[i], mf.oracles[m]
        draft.add_scored(cand, name, self.costs[m], finite_or_none(score))
        tier = draft.rationale["tiers"].setdefault(name, {
            "selection": {"reason": draft.rationale["fidelity"]["selection"]},
            "labels_from": mf.oracles[self.top], "chosen": []})
        tier["chosen"].append({
            "candidate": cand.id, "formula": cand.formula, "source": cand.source, "oracle": name, "fidelity": m,
            "expected_cost": self.costs[m], "acquisition": finite_or_none(score),
            "predicted_mean": finite_or_none(mu), "predicted_std": finite_or_none(sd),  # of the top fidelity
            "rationale": why,
        })
