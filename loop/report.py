"""``matloop report``: one self-contained HTML page (inline CSS and JS, PNG figures beside it) for a store.

The page reads only the store: best so far against evaluations and cost (agent and random
arms), the discovery curve, each iteration's picks with the agent's reason, acquisition value
and predicted mean ± std, the constraints and how many candidates each removed, the funnel per
tier, surrogate parity and calibration, model insights (feature relevance of a refit of the
surrogate, and the skill the agent recorded), the Pareto front, source yields, the VAE latent
map, a sortable table of the top candidates (prototype, space group, CIF files), views of their
cells, and the campaign file with the package versions. A panel whose data the store lacks is
left out; every axis names its property, unit (from the name's suffix) and direction. On a
``matloop benchmark`` output folder the page shows recall per strategy with bootstrap bands.
The explanatory panels live in ``report_panels``.

Store meta keys read: ``objective`` (``{"property", "goal": minimize|maximize|window,
"window": [lo, hi], "oracle"?}``), ``objectives`` (two such entries, or two property names,
for the Pareto panel) and ``good_set`` (candidate ids, retrospective campaigns).
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from matloop.core.goals import Goal, pareto_front
from matloop.core.records import Candidate, InputError, Observation

from . import report_panels as panels
from .report_panels import axis_label, space_group
from .store import Store

META_OBJECTIVE = "objective"
META_OBJECTIVES = "objectives"
META_GOOD_SET = "good_set"
#: meta keys shown in the campaign panel (``campaign_spec``: ``{"yaml": text, "resolved": dict}``)
META_SPEC_KEYS = ("campaign", "campaign_spec", "constraints", "oracles")
TOP_K_SOURCES = 10
_DPI = 110
_AGENT_COLOR = "#1f5fa8"
_RANDOM_COLOR = "#b0592a"


# -- objective --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportObjective:
    """The objective the page ranks by.

    Attributes:
        goal: ``minimize``, ``maximize`` or ``window``.
        oracle: the oracle whose value counts (highest fidelity reporting ``property``).
        origin: where it came from, shown on the page (``store meta``, ``argument``, ``inferred ...``).
    """

    property: str
    goal: str
    oracle: str
    window: tuple[float, float] | None = None
    origin: str = ""

    @property
    def as_goal(self) -> Goal:
        """This objective's ``matloop.core.goals.Goal`` (the one scoring rule)."""
        return Goal.from_objective(self.goal, self.window)

    def score(self, y) -> np.ndarray:
        """Higher is better: ``-y`` (minimize), ``y`` (maximize), ``-distance to window`` (window)."""
        return self.as_goal.score(y)

    def describe(self) -> str:
        """One-line description for the page, e.g. ``minimize gap_ev (chgnet)`` or ``gap_ev in [1, 2] (chgnet)``."""
        if self.goal == "window":
            return f"{self.property} in [{self.window[0]:g}, {self.window[1]:g}] ({self.oracle})"
        return f"{self.goal} {self.property} ({self.oracle})"


def _parse_goal(entry: dict, where: str) -> tuple[str, tuple[float, float] | None]:
    """(goal word, window) of a stored objective entry, through ``Goal`` (also accepts ``window:LO:HI``)."""
    text = str(entry.get("goal", "minimize")).strip().lower()
    try:
        goal = Goal.parse(text) if text.startswith("window:") else Goal.from_objective(text, entry.get("window"))
    except (InputError, ValueError, TypeError) as exc:
        raise InputError(f"bad goal {entry.get('goal')!r}: {exc}", where=where) from None
    if goal.kind == "window":
        return "window", (goal.lo, goal.hi)
    return ("maximize" if goal.kind == "max" else "minimize"), None


# -- what the store holds ---------------------------------------------------------------------


@dataclass
class _Data:
    name: str
    path: Path
    candidates: dict[str, Candidate]
    arms: dict[str, list[Observation]]  # arm -> observations in arrival order
    iterations: list[dict]  # the agent arm's
    fidelity: dict[str, int]
    properties: dict[str, list[str]]  # oracle -> numeric properties seen in successful observations
    cost_by_request: dict[str, float]
    meta: dict = field(default_factory=dict)
    requests: list[tuple] = field(default_factory=list)  # agent arm: (iteration, candidate id, oracle, acquisition)

    @property
    def oracles(self) -> list[str]:
        """Oracle names, lowest fidelity first."""
        return sorted(self.fidelity, key=lambda o: (self.fidelity[o], o))

    def nominal_cost(self, o: Observation) -> float:
        """An observation's cost, counting a cache hit at the cost of the evaluation it reused."""
        src = o.extra.get("cached_from") if isinstance(o.extra, dict) else None
        if src and src in self.cost_by_request:
            return self.cost_by_request[src]
        return o.cost


def _load(store: Store) -> _Data:
    arms_seen = [it["arm"] for it in store.iterations(None)]
    arms: dict[str, list[Observation]] = {}
    for arm in ["agent", "random"] + [a for a in dict.fromkeys(arms_seen) if a not in ("agent", "random")]:
        obs = store.observations(arm=arm)
        if obs or arm == "agent":
            arms[arm] = obs
    fidelity: dict[str, int] = {}
    props: dict[str, dict[str, None]] = {}
    cost_by_request = {}
    for obs in arms.values():
        for o in obs:
            fidelity[o.oracle] = max(fidelity.get(o.oracle, o.fidelity), o.fidelity)
            props.setdefault(o.oracle, {})
            cost_by_request[o.request_id] = o.cost
            if o.ok:
                for p in o.properties:
                    if o.value(p) is not None:
                        props[o.oracle][p] = None
    meta = {k: store.get_meta(k) for k in (META_OBJECTIVE, META_OBJECTIVES, META_GOOD_SET) + META_SPEC_KEYS}
    requests = list(store.db.execute("SELECT iteration, candidate_id, oracle, acquisition FROM requests "
                                     "WHERE arm='agent' ORDER BY seq"))
    return _Data(
        name=str(store.get_meta("campaign") or store.path.stem),
        path=store.path,
        candidates={c.id: c for c in store.candidates()},
        arms=arms,
        iterations=store.iterations("agent"),
        fidelity=fidelity,
        properties={k: list(v) for k, v in props.items()},
        cost_by_request=cost_by_request,
        meta=meta,
        requests=requests,
    )


def _objective_oracle(data: _Data, prop: str, labels_from: Counter) -> str | None:
    reporting = [o for o in data.oracles if prop in data.properties.get(o, ())]
    if not reporting:
        return None
    top = max(data.fidelity[o] for o in reporting)
    tied = [o for o in reporting if data.fidelity[o] == top]
    # the agent trains on the objective oracle; its rationale breaks a fidelity tie
    return max(tied, key=lambda o: labels_from.get(o, 0))


def resolve_objective(data: _Data, objective: dict | None) -> ReportObjective | None:
    """The argument, else store meta ``objective``, else inferred from the observations and rationales."""
    labels_from: Counter = Counter()
    goals: Counter = Counter()
    best_seen: list[float] = []
    for it in data.iterations:
        for tier in (it["rationale"].get("tiers") or {}).values():
            if "labels_from" in tier:
                labels_from[tier["labels_from"]] += 1
            sel = tier.get("selection") or {}
            if sel.get("goal"):
                goals[sel["goal"]] += 1
            if isinstance(sel.get("best_observed"), (int, float)):
                best_seen.append(float(sel["best_observed"]))
    for given, origin in ((objective, "argument"), (data.meta.get(META_OBJECTIVE), "store meta")):
        if given:
            if "property" not in given:
                raise InputError("objective needs a property", where=f"objective ({origin})")
            goal, window = _parse_goal(given, f"objective ({origin})")
            oracle = given.get("oracle") or _objective_oracle(data, given["property"], labels_from)
            if oracle is None:
                oracle = data.oracles[-1] if data.oracles else "?"
            return ReportObjective(given["property"], goal, oracle, window, origin)
    # inferred: the highest-fidelity oracle's property; several -> the one whose values contain
    # the agent's recorded best_observed; the goal is the one the agent recorded, else minimize
    reporting = [o for o in data.oracles if data.properties.get(o)]
    if not reporting:
        return None  # nothing succeeded yet
    top = max(data.fidelity[o] for o in reporting)
    oracle = next(o for o in reversed(reporting) if data.fidelity[o] == top)
    cands = data.properties[oracle]
    why = "the only property of the highest-fidelity oracle"
    prop = cands[0]
    if len(cands) > 1:
        # best_observed comes from each tier's label oracle, which may be a cheaper one
        seen = {p: {o.value(p) for obs in data.arms.values() for o in obs if o.ok} for p in cands}
        hits = [p for p in cands if best_seen and all(b in seen[p] for b in best_seen)]
        if len(hits) == 1:
            prop, why = hits[0], "matched to the best values the agent recorded"
        else:
            why = f"ambiguous: first of {cands}; set store meta 'objective'"
    goal_text = goals.most_common(1)[0][0] if goals else "minimize"
    goal, window = _parse_goal({"goal": goal_text}, "objective (inferred)")
    gwhy = "goal from the agent's rationale" if goals else "goal assumed minimize"
    oracle = _objective_oracle(data, prop, labels_from) or oracle
    return ReportObjective(prop, goal, oracle, window, f"inferred ({why}; {gwhy})")


# -- derived series ---------------------------------------------------------------------------


def _objective_values(data: _Data, obj: ReportObjective, arm: str) -> list[tuple[str, float]]:
    """(candidate id, value) of successful objective observations of one arm, in arrival order."""
    out = []
    for o in data.arms.get(arm, []):
        if o.oracle == obj.oracle and o.ok and o.value(obj.property) is not None:
            out.append((o.candidate_id, o.value(obj.property)))
    return out


def _best_curve(data: _Data, obj: ReportObjective, arm: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Evaluations, cumulative cost and best value so far (NaN before the first) after each observation."""
    n, cost, best = [], [], []
    c, b = 0.0, None
    for k, o in enumerate(data.arms.get(arm, []), start=1):
        c += o.cost if arm == "agent" else data.nominal_cost(o)  # a baseline's cache hits reuse the agent's work
        if o.oracle == obj.oracle and o.ok and o.value(obj.property) is not None:
            v = o.value(obj.property)
            if b is None or obj.score([v])[0] > obj.score([b])[0]:
                b = v
        n.append(k)
        cost.append(c)
        best.append(np.nan if b is None else b)
    return np.array(n), np.array(cost), np.array(best, dtype=float)


def _found_curve(data: _Data, obj: ReportObjective, arm: str, good: set[str] | None) -> tuple[np.ndarray, np.ndarray]:
    """Evaluations and distinct good candidates found so far (the window's hits when ``good`` is None)."""
    n, found, seen = [], [], set()
    for k, o in enumerate(data.arms.get(arm, []), start=1):
        if o.oracle == obj.oracle and o.ok and o.value(obj.property) is not None:
            hit = o.candidate_id in good if good is not None else obj.score([o.value(obj.property)])[0] >= 0
            if hit:
                seen.add(o.candidate_id)
        n.append(k)
        found.append(len(seen))
    return np.array(n), np.array(found)


def _parity_pairs(data: _Data, obj: ReportObjective) -> tuple[list[dict], str, int]:
    """Predicted mean/std recorded for chosen candidates, joined with what the label oracle returned."""
    first_ok: dict[tuple[str, str], Observation] = {}
    for o in data.arms.get("agent", []):
        if o.ok:
            first_ok.setdefault((o.candidate_id, o.oracle), o)
    pairs, units, dropped, seen = [], None, 0, set()
    for it in data.iterations:
        for tier, info in (it["rationale"].get("tiers") or {}).items():
            if "chosen" not in info:
                continue
            label = info.get("labels_from", tier)
            u = (info.get("selection") or {}).get("mean_units", "property")
            for c in info["chosen"]:
                mu, sd = c.get("predicted_mean"), c.get("predicted_std")
                if mu is None or sd is None:
                    continue  # random picks carry no prediction
                o = first_ok.get((c["candidate"], label))
                if o is None or o.value(obj.property) is None or (c["candidate"], label) in seen:
                    continue  # async mode repeats one plan's rationale in each request's iteration
                seen.add((c["candidate"], label))
                units = units or u
                if u != units:
                    dropped += 1
                    continue
                y = o.value(obj.property)
                if u != "property":
                    y = float(obj.score([y])[0])
                pairs.append({"iteration": it["idx"], "mean": mu, "std": sd, "observed": y, "formula": c.get("formula"),
                              "oracle": label})
    return pairs, units or "property", dropped


def _best_values(data: _Data) -> dict[str, dict[tuple[str, str], float | str]]:
    """Per candidate: (oracle, property) -> first successful value, or 'failed' when the oracle only failed."""
    out: dict[str, dict] = {}
    for obs in data.arms.values():
        for o in obs:
            row = out.setdefault(o.candidate_id, {})
            if o.ok:
                for p in data.properties.get(o.oracle, ()):
                    v = o.value(p)
                    if v is not None and not isinstance(row.get((o.oracle, p)), float):
                        row[(o.oracle, p)] = v
            else:
                for p in data.properties.get(o.oracle, ()) or ["?"]:
                    row.setdefault((o.oracle, p), "failed")
    return out


#: the stability property whose decomposition the top-candidates table shows
HULL_PROPERTY = "e_above_hull_ev_per_atom"


def _highest_fidelity_with(data: _Data, cid: str, key: str, kind: type) -> Observation | None:
    """The highest-fidelity successful observation of ``cid`` whose ``extra[key]`` is a ``kind`` (first of ties)."""
    best = None
    for obs in data.arms.values():
        for o in obs:
            if o.candidate_id == cid and o.ok and isinstance(o.extra.get(key), kind):
                if best is None or o.fidelity > best.fidelity:
                    best = o
    return best


def _decomposition_for(data: _Data, cid: str) -> str:
    """The decomposition products stored by the highest-fidelity successful observation that has them, as text."""
    best = _highest_fidelity_with(data, cid, "decomposition", list)
    if best is None:
        return ""
    try:
        return " + ".join(f"{float(d['fraction']):.3g} {d['formula']}" for d in best.extra["decomposition"])
    except (KeyError, TypeError, ValueError):  # a malformed record shows nothing rather than failing the report
        return ""


def _structure_for(data: _Data, cid: str):
    """The relaxed structure of the highest-fidelity successful observation, else the candidate's."""
    from pymatgen.core import Structure

    best = _highest_fidelity_with(data, cid, "relaxed_structure", dict)
    if best is not None:
        try:
            return Structure.from_dict(best.extra["relaxed_structure"]), f"relaxed by {best.oracle}"
        except Exception:  # a malformed record falls back to the candidate's structure
            pass
    cand = data.candidates.get(cid)
    if cand is not None and cand.structure is not None:
        return cand.pmg_structure(), "as generated"
    return None, ""


# -- figures ----------------------------------------------------------------------------------


def _figure(width: float = 7.6, height: float = 3.6, ncols: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    axes = fig.subplots(1, ncols)
    for ax in np.atleast_1d(axes):
        ax.grid(True, alpha=0.25)
        ax.spines[["top", "right"]].set_visible(False)
    return fig, axes


def _save(fig, out_dir: Path, name: str) -> str:
    fig.savefig(out_dir / name, dpi=_DPI)
    return name


def _value_label(obj: ReportObjective) -> str:
    if obj.goal == "window":
        return axis_label(obj.property, prefix="distance of") + f" to [{obj.window[0]:g}, {obj.window[1]:g}]\n" \
                                                              "(lower is better)"
    return axis_label(obj.property, obj.goal, wrap=True)


def _plot_best(data: _Data, obj: ReportObjective, out_dir: Path) -> str | None:
    curves = {arm: _best_curve(data, obj, arm) for arm in ("agent", "random") if data.arms.get(arm)}
    if not curves or all(np.isnan(c[2]).all() for c in curves.values()):
        return None
    fig, (a1, a2) = _figure(10.5, 3.8, 2)
    for arm, (n, cost, best) in curves.items():
        y = best if obj.goal != "window" else -obj.score(best)
        color = _AGENT_COLOR if arm == "agent" else _RANDOM_COLOR
        label = "agent" if arm == "agent" else "random baseline"
        a1.step(n, y, where="post", color=color, label=label, lw=2)
        a2.step(cost, y, where="post", color=color, label=label, lw=2)
    a1.set_xlabel("evaluations (all oracles)")
    a2.set_xlabel("cumulative cost")
    a1.set_ylabel(f"best {_value_label(obj)}", fontsize=8.5)
    a1.set_title("best so far vs evaluations", fontsize=10)
    a2.set_title("best so far vs cost", fontsize=10)
    a1.legend(frameon=False)
    return _save(fig, out_dir, "best_so_far.png")


def _plot_discovery(data: _Data, obj: ReportObjective, good: set[str] | None, out_dir: Path) -> str | None:
    fig, ax = _figure(7.6, 3.8)
    n_max = 0
    for arm in ("agent", "random"):
        if not data.arms.get(arm):
            continue
        n, found = _found_curve(data, obj, arm, good)
        n_max = max(n_max, int(n[-1]) if len(n) else 0)
        color = _AGENT_COLOR if arm == "agent" else _RANDOM_COLOR
        ax.step(n, found, where="post", lw=2, color=color, label="agent" if arm == "agent" else "random baseline")
    if good is not None and n_max:
        pool = len(data.candidates)
        g = len(good & set(data.candidates)) if data.candidates else len(good)
        x = np.arange(0, n_max + 1)
        ax.plot(x, x * g / max(pool, 1), ":", color="0.4", label="random expectation")
        ax.plot(x, np.minimum(x, g), "--", color="0.7", lw=1, label=f"ideal ({g} good)")
        ax.set_ylabel(f"good candidates found (of {g})")
    else:
        ax.set_ylabel("distinct hits in the window")
    ax.set_xlabel("evaluations (all oracles)")
    ax.set_title(f"discovery curve: {axis_label(obj.property, obj.goal, obj.window)} from {obj.oracle}", fontsize=10)
    ax.legend(frameon=False)
    return _save(fig, out_dir, "discovery.png")


def _funnel_rows(data: _Data) -> list[dict]:
    rows = []
    for oracle in data.oracles:
        obs = [o for o in data.arms.get("agent", []) if o.oracle == oracle]
        if not obs:
            continue
        reasons = Counter((o.reason or "unknown").splitlines()[0][:90] for o in obs if not o.ok)
        rows.append(
            {
                "oracle": oracle,
                "fidelity": data.fidelity[oracle],
                "evaluations": len(obs),
                "failed": sum(not o.ok for o in obs),
                "cost": sum(o.cost for o in obs),
                "wall_time_s": sum(o.wall_time_s for o in obs),
                "reason": reasons.most_common(1)[0] if reasons else None,
            }
        )
    return rows


def _plot_funnel(rows: list[dict], out_dir: Path) -> str | None:
    if not rows:
        return None
    fig, (a1, a2) = _figure(10.5, 1.6 + 0.5 * len(rows), 2)
    names = [f"{r['oracle']} (fid. {r['fidelity']})" for r in rows][::-1]  # highest fidelity at the bottom
    ok = [r["evaluations"] - r["failed"] for r in rows][::-1]
    bad = [r["failed"] for r in rows][::-1]
    cost = [r["cost"] for r in rows][::-1]
    y = np.arange(len(rows))
    a1.barh(y, ok, 0.6, color=_AGENT_COLOR, label="succeeded")
    a1.barh(y, bad, 0.6, left=ok, color="#c0392b", label="failed")
    a1.set_yticks(y, names)
    a1.set_ylim(-0.6, len(rows) - 0.4)
    a1.set_xlabel("evaluations")
    a2.barh(y, cost, 0.6, color="#6b8e23", label="cost")
    a2.set_ylim(-0.6, len(rows) - 0.4)
    fig.legend(loc="outside upper center", ncols=3, frameon=False, fontsize=8)
    a2.set_yticks(y, [""] * len(y))
    a2.set_xlabel("cost")
    for yy, c in zip(y, cost):
        a2.text(c, yy, f" {c:g}", va="center", fontsize=8)
    return _save(fig, out_dir, "funnel.png")


def _plot_parity(pairs: list[dict], units: str, obj: ReportObjective, out_dir: Path) -> tuple[str | None, dict]:
    if len(pairs) < 2:
        return None, {}
    mu = np.array([p["mean"] for p in pairs])
    sd = np.array([p["std"] for p in pairs])
    y = np.array([p["observed"] for p in pairs])
    it = np.array([p["iteration"] for p in pairs])
    err = y - mu
    valid = sd > 0
    z = np.abs(err[valid]) / sd[valid]
    stats = {
        "n": len(pairs),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "within_1": float(np.mean(z <= 1)) if len(z) else float("nan"),
        "within_2": float(np.mean(z <= 2)) if len(z) else float("nan"),
    }
    fig, (a1, a2) = _figure(10.5, 4.2, 2)
    a1.errorbar(mu, y, xerr=sd, fmt="none", ecolor="0.75", lw=1, zorder=1)
    sc = a1.scatter(mu, y, c=it, cmap="viridis", s=22, zorder=2, edgecolors="white", linewidths=0.4)
    lo, hi = float(min(mu.min(), y.min())), float(max(mu.max(), y.max()))
    pad = 0.05 * (hi - lo or 1.0)
    a1.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "--", color="0.4", lw=1)
    what = axis_label(obj.property) if units == "property" else "score (-distance to window)"
    a1.set_xlabel(f"predicted {what} (mean ± 1σ)", fontsize=9)
    a1.set_ylabel(f"observed {what} ({', '.join(dict.fromkeys(p['oracle'] for p in pairs))})", fontsize=9)
    a1.set_title(f"parity ({panels.direction_text(obj.goal, obj.window)}): RMSE {stats['rmse']:.3g}, "
                 f"MAE {stats['mae']:.3g}, n={len(pairs)}", fontsize=10)
    from matplotlib.ticker import MaxNLocator

    fig.colorbar(sc, ax=a1, label="iteration", shrink=0.85, ticks=MaxNLocator(integer=True))
    k = np.linspace(0, 3, 61)
    expected = np.array([math.erf(x / math.sqrt(2)) for x in k])
    a2.plot(k, expected, "--", color="0.4", label="Gaussian expectation")
    if len(z):
        a2.plot(k, [np.mean(z <= x) for x in k], color=_AGENT_COLOR, lw=2, label="observed")
    a2.set_xlabel("k (|error| ≤ k·σ)")
    a2.set_ylabel("fraction within k·σ")
    a2.set_ylim(0, 1.02)
    a2.set_title("uncertainty calibration", fontsize=10)
    a2.legend(frameon=False, loc="lower right")
    return _save(fig, out_dir, "parity.png"), stats


def _objectives_meta(data: _Data, obj: ReportObjective) -> list[dict] | None:
    raw = data.meta.get(META_OBJECTIVES)
    if not raw:
        return None
    if not isinstance(raw, list) or len(raw) < 2:
        raise InputError("store meta 'objectives' must list two objectives", where="meta.objectives")
    out = []
    for k, entry in enumerate(raw[:2]):
        if isinstance(entry, str):
            entry = {"property": entry, "goal": obj.goal if entry == obj.property else "minimize",
                     **({"window": obj.window} if entry == obj.property and obj.window else {})}
        if not isinstance(entry, dict) or "property" not in entry:
            raise InputError("each objective needs a property", where=f"meta.objectives[{k}]")
        goal, window = _parse_goal(entry, f"meta.objectives[{k}]")
        out.append({"property": entry["property"], "goal": goal, "window": window, "oracle": entry.get("oracle")})
    return out


def _plot_pareto(data: _Data, objs: list[dict], values: dict, out_dir: Path) -> tuple[str | None, int, list[str]]:
    def value(cid, spec):
        row = values.get(cid, {})
        for oracle in reversed(data.oracles):
            if spec["oracle"] and oracle != spec["oracle"]:
                continue
            v = row.get((oracle, spec["property"]))
            if isinstance(v, float):
                return v
        return None

    pts = []
    for cid in values:
        a, b = value(cid, objs[0]), value(cid, objs[1])
        if a is not None and b is not None:
            pts.append((cid, a, b))
    if len(pts) < 2:
        return None, len(pts), []
    xy = np.array([(a, b) for _, a, b in pts])
    ro = [ReportObjective(o["property"], o["goal"], "", o["window"]) for o in objs]
    scores = np.column_stack([ro[0].score(xy[:, 0]), ro[1].score(xy[:, 1])])
    front = pareto_front(scores)
    fig, ax = _figure(7.6, 4.4)
    ax.scatter(xy[~front, 0], xy[~front, 1], s=16, color="0.7", label="evaluated")
    order = np.argsort(xy[front, 0])
    fx, fy = xy[front, 0][order], xy[front, 1][order]
    ax.plot(fx, fy, "-o", color=_AGENT_COLOR, ms=6, lw=1.5, label=f"Pareto front ({int(front.sum())})")
    ids = [pts[i][0] for i in np.flatnonzero(front)]
    names = [data.candidates[cid].formula if cid in data.candidates else cid for cid in ids]
    for (x, y), name in list(zip(xy[front], names))[:12]:
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7.5)

    def lab(o):
        return axis_label(o["property"], o["goal"], o["window"])

    ax.set_xlabel(lab(objs[0]))
    ax.set_ylabel(lab(objs[1]))
    ax.set_title("Pareto front", fontsize=10)
    ax.legend(frameon=False)
    return _save(fig, out_dir, "pareto.png"), len(pts), sorted(names)


def _source_rows(data: _Data, obj: ReportObjective) -> list[dict]:
    agent_vals = _objective_values(data, obj, "agent")
    ranked = sorted({cid: v for cid, v in agent_vals}.items(), key=lambda kv: -obj.score([kv[1]])[0])
    top = {cid for cid, _ in ranked[:TOP_K_SOURCES]}
    evaluated = {o.candidate_id for o in data.arms.get("agent", [])}
    succeeded = {cid for cid, _ in agent_vals}
    by_source: dict[str, list[str]] = {}
    for c in data.candidates.values():
        by_source.setdefault(c.source or "(none)", []).append(c.id)
    rows = []
    for src, ids in by_source.items():
        s = set(ids)
        vals = [v for cid, v in agent_vals if cid in s]
        best = max(vals, key=lambda v: obj.score([v])[0]) if vals else None
        rows.append(
            {
                "source": src,
                "candidates": len(ids),
                "evaluated": len(s & evaluated),
                "successes": len(s & succeeded),
                "top": len(s & top),
                "best": best,
            }
        )
    return sorted(rows, key=lambda r: (-r["top"], -r["successes"], r["source"]))


def _plot_sources(rows: list[dict], out_dir: Path, obj: ReportObjective | None = None) -> str | None:
    if not rows:
        return None
    fig, (a1, a2) = _figure(10.5, 1.6 + 0.6 * len(rows), 2)
    y = np.arange(len(rows))[::-1]
    names = [r["source"] for r in rows]
    a1.barh(y, [r["candidates"] for r in rows], 0.6, color="0.6", label="candidates in the pool")
    a1.set_ylim(-0.6, len(rows) - 0.4)
    a1.set_yticks(y, names)
    a1.set_xlabel("candidates in the pool")
    if max(r["candidates"] for r in rows) > 50 * max(1, min(r["candidates"] for r in rows)):
        a1.set_xscale("log")
    h = 0.27
    a2.barh(y + h, [r["evaluated"] for r in rows], h, color="#8fb3de", label="evaluated")
    a2.barh(y, [r["successes"] for r in rows], h, color=_AGENT_COLOR, label="successes")
    a2.barh(y - h, [r["top"] for r in rows], h, color="#e0a100", label=f"in top-{TOP_K_SOURCES}")
    a2.set_yticks(y, [""] * len(y))
    a2.set_ylim(-0.6, len(rows) - 0.4)
    a2.set_xlabel("candidates (agent arm)")
    if obj is not None:
        a2.set_title(f"successes and top-{TOP_K_SOURCES} by\n{axis_label(obj.property, obj.goal, obj.window)}",
                     fontsize=8.5)
    fig.legend(loc="outside upper center", ncols=4, frameon=False, fontsize=8)
    return _save(fig, out_dir, "sources.png")


def _plot_latent(data: _Data, obj: ReportObjective, out_dir: Path) -> tuple[str | None, str]:
    rows = [(c.id, c.provenance["latent"]) for c in data.candidates.values()
            if isinstance(c.provenance.get("latent"), list) and c.provenance["latent"]]
    if not rows:
        return None, "no candidate carries a latent point (the VAE generator was not used)"
    dim = Counter(len(z) for _, z in rows).most_common(1)[0][0]
    rows = [(cid, z) for cid, z in rows if len(z) == dim]
    if len(rows) < 3:
        return None, f"only {len(rows)} candidate(s) carry a latent point; a map needs 3"
    Z = np.array([z for _, z in rows], dtype=float)
    Zc = Z - Z.mean(axis=0)
    _, S, Vt = np.linalg.svd(Zc, full_matrices=False)  # PCA; sklearn's import alone costs seconds
    P = Zc @ Vt[:2].T
    ev = S[:2] ** 2 / max(float((S**2).sum()), 1e-300)
    vals = {}
    for arm in data.arms:
        for cid, v in _objective_values(data, obj, arm):
            vals.setdefault(cid, v)
    y = np.array([vals.get(cid, np.nan) for cid, _ in rows])
    has = np.isfinite(y)
    fig, ax = _figure(7.6, 4.6)
    ax.scatter(P[~has, 0], P[~has, 1], s=14, facecolors="none", edgecolors="0.6", label="not evaluated")
    if has.any():
        sc = ax.scatter(P[has, 0], P[has, 1], c=y[has], s=34, cmap="viridis_r" if obj.goal == "minimize" else "viridis",
                        edgecolors="k", linewidths=0.4, label="evaluated")
        fig.colorbar(sc, ax=ax, label=axis_label(obj.property, obj.goal, obj.window))
    ax.set_xlabel(f"PC1 ({100 * ev[0]:.0f} % of variance)")
    ax.set_ylabel(f"PC2 ({100 * ev[1]:.0f} % of variance)")
    ax.set_title(f"VAE latent space ({dim}-D, {len(rows)} candidates)", fontsize=10)
    ax.legend(frameon=False, fontsize=8)
    return _save(fig, out_dir, "latent.png"), ""


# -- top candidates and structures ------------------------------------------------------------


def _top_table(data: _Data, obj: ReportObjective, out_dir: Path, top_n: int) -> tuple[list[str], list[list[tuple]], int, list]:
    """Header and rows (cells as (text, sort key, href, css class)) of the best ``top_n`` candidates,
    the number of CIF files written and ``(cid, structure, how, space group)`` of those with a structure.

    Polymorphs (CaO rocksalt and zincblende) are told apart by the prototype the generator
    recorded and the space group of the relaxed structure (else the candidate's).

    Ranked by the objective oracle's value; candidates that never reached it follow, ranked by
    the objective property from the next-highest fidelity that reported it.
    """
    values = _best_values(data)
    found_by: dict[str, set[str]] = {}
    for arm, obs in data.arms.items():
        for o in obs:
            found_by.setdefault(o.candidate_id, set()).add(arm)
    tiers = [obj.oracle] + [o for o in reversed(data.oracles) if o != obj.oracle]

    def rank_key(cid):
        for t, oracle in enumerate(tiers):
            v = values.get(cid, {}).get((oracle, obj.property))
            if isinstance(v, float):
                return (t, -float(obj.score([v])[0]), cid)
        return None

    keyed = [(rank_key(cid), cid) for cid in values]
    ranked = [cid for k, cid in sorted((k, cid) for k, cid in keyed if k is not None)][:top_n]
    # the objective's column first, then the energies above the hull, then every oracle's other
    # properties, lowest fidelity first
    columns = [(obj.oracle, obj.property)]
    columns += [(o, p) for o in data.oracles for p in data.properties.get(o, [])
                if p == HULL_PROPERTY and (o, p) not in columns]
    columns += [(o, p) for o in data.oracles for p in data.properties.get(o, []) if (o, p) not in columns]
    decompositions = {cid: _decomposition_for(data, cid) for cid in ranked}
    with_decomposition = any(decompositions.values())
    structures = {cid: _structure_for(data, cid) for cid in ranked}
    groups = {cid: space_group(st) if st is not None else None for cid, (st, _) in structures.items()}
    prototypes = {cid: str((data.candidates[cid].provenance or {}).get("prototype") or "")
                  if cid in data.candidates else "" for cid in ranked}
    with_symmetry, with_prototype = any(groups.values()), any(prototypes.values())
    header = (["rank", "formula", "source", "found by"]
              + (["prototype"] if with_prototype else []) + (["space group"] if with_symmetry else [])
              + [f"{o}: {p}" for o, p in columns]
              + (["decomposition (atom fractions)"] if with_decomposition else []) + ["candidate", "structure"])
    rows, n_cif = [], 0
    sdir = out_dir / "structures"
    for rank, cid in enumerate(ranked, start=1):
        c = data.candidates.get(cid)
        formula = c.formula if c else cid
        source, arms = (c.source if c else ""), "+".join(sorted(found_by[cid]))
        row = [(str(rank), rank, None, "num"), (formula, formula, None, ""), (source, source, None, ""), (arms, arms, None, "")]
        if with_prototype:
            row.append((prototypes[cid], prototypes[cid], None, ""))
        if with_symmetry:
            sg = groups[cid]
            row.append((f"{sg[0]} ({sg[1]})", sg[1], None, "") if sg else ("", None, None, ""))
        for key in columns:
            v = values.get(cid, {}).get(key)
            if isinstance(v, float):
                row.append((f"{v:.4g}", v, None, "num"))
            elif v == "failed":
                row.append(("failed", None, None, "num failed"))
            else:
                row.append(("", None, None, "num"))
        if with_decomposition:
            text = decompositions[cid]
            row.append((text, text, None, ""))
        row.append((cid, cid, None, "id"))
        structure, how = structures[cid]
        link = ("–", "", None, "")
        if structure is not None:
            from pymatgen.io.cif import CifWriter

            sdir.mkdir(exist_ok=True)
            try:
                CifWriter(structure).write_file(str(sdir / f"{cid}.cif"))
                link = (f"CIF ({how})", how, f"structures/{cid}.cif", "")
                n_cif += 1
            except Exception as exc:  # a structure pymatgen cannot write is reported, not fatal
                link = (f"no CIF: {exc}"[:60], "", None, "")
        row.append(link)
        rows.append(row)
    views = [(cid, st, how, groups[cid]) for cid, (st, how) in structures.items() if st is not None]
    return header, rows, n_cif, views


# -- HTML -------------------------------------------------------------------------------------

_CSS = """
:root { --fg:#1d2330; --muted:#5b6475; --line:#dde2ea; --accent:#1f5fa8; --bg:#f6f8fb; }
* { box-sizing: border-box; }
body { font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       background: var(--bg); margin: 0; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 60px; }
header h1 { margin: 0 0 4px; font-size: 24px; }
header p { margin: 2px 0; color: var(--muted); }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(170px, 1fr)); gap: 10px; margin: 18px 0 8px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px; }
.card b { display: block; font-size: 18px; }
.card span { color: var(--muted); font-size: 12px; }
.card i { display: block; font-style: normal; font-size: 12px; overflow-wrap: anywhere; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 14px 18px; margin: 16px 0; }
section h2 { font-size: 17px; margin: 0 0 8px; }
figure { margin: 0; }
figure img { max-width: 100%; height: auto; display: block; }
figure.broken { outline: 2px solid #c0392b; }
figcaption, .note, .hint { color: var(--muted); font-size: 13px; }
.note { background: #fff8e6; border-left: 3px solid #e0a100; padding: 6px 10px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 8px; text-align: left; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.failed { color: #c0392b; }
td.id { font-family: ui-monospace, monospace; font-size: 11px; color: var(--muted); }
table.sortable th { white-space: normal; vertical-align: bottom; max-width: 190px; }
th span.o { display: block; font-weight: normal; color: var(--muted); font-size: 11px; }
table.sortable th { cursor: pointer; user-select: none; background: #eef2f8; position: sticky; top: 0; }
table.sortable th:hover { background: #e1e8f3; }
th[aria-sort="ascending"]::after { content: " \\25B2"; }
th[aria-sort="descending"]::after { content: " \\25BC"; }
.scroll { overflow-x: auto; }
a { color: var(--accent); }
footer { color: var(--muted); font-size: 12px; margin-top: 24px; }
section h3 { font-size: 14px; margin: 12px 0 6px; }
.tall { max-height: 520px; overflow-y: auto; }
#picks-table td:nth-child(4) { white-space: normal; min-width: 260px; }
#picks-table th { white-space: normal; vertical-align: bottom; }
.cells { display: grid; grid-template-columns: repeat(auto-fill, minmax(240px, 1fr)); gap: 10px; }
figure.cell img { width: 100%; }
pre { background: #f3f5f9; border: 1px solid var(--line); padding: 8px 10px; font-size: 12px; overflow-x: auto;
      max-height: 420px; }
"""

# Marks every image loaded / failed (data-loaded, data-natural-width; body[data-images]) and makes
# tables sortable by header click. ``#sort=K`` (or ``#sort=-K``) in the URL opens the top table
# sorted by column K by clicking its header, so a sorted view can be linked (and tested).
_JS = r"""
(function () {
  var imgs = Array.prototype.slice.call(document.images), left = imgs.length, failed = [];
  function summary() {
    if (left === 0) document.body.setAttribute("data-images",
        failed.length ? "failed:" + failed.join(",") : "ok:" + imgs.length);
  }
  function mark(img, ok) {
    if (img.hasAttribute("data-loaded")) return;
    ok = ok && img.naturalWidth > 0;
    img.setAttribute("data-loaded", ok ? "1" : "error");
    img.setAttribute("data-natural-width", String(img.naturalWidth));
    if (!ok) { failed.push(img.getAttribute("src")); img.parentNode.classList.add("broken"); }
    left -= 1; summary();
  }
  imgs.forEach(function (img) {
    if (img.complete) mark(img, true);
    else {
      img.addEventListener("load", function () { mark(img, true); });
      img.addEventListener("error", function () { mark(img, false); });
    }
  });
  summary();

  function key(td, num) {
    var k = td.getAttribute("data-sort");
    if (num) return (k === null || k === "") ? null : parseFloat(k);
    return (k === null ? td.textContent : k).toLowerCase();
  }
  function sortBy(table, col, th) {
    var asc = th.getAttribute("aria-sort") !== "ascending";
    var num = th.classList.contains("num");
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a.cells[col], num), y = key(b.cells[col], num);
      if (x === null && y === null) return 0;
      if (x === null) return 1;  // blanks last either way
      if (y === null) return -1;
      var c = x < y ? -1 : (x > y ? 1 : 0);
      return asc ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
    table.setAttribute("data-sorted", col + (asc ? ":asc" : ":desc"));
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.title = "click to sort";
      th.addEventListener("click", function () { sortBy(table, col, th); });
    });
  });
  var m = /sort=(-?)(\d+)/.exec(location.hash), top = document.getElementById("top-table");
  if (m && top) {
    var th = top.tHead.rows[0].cells[parseInt(m[2], 10)];
    if (th) { th.click(); if (m[1] === "-") th.click(); }
  }
})();
"""


_NUM = ' class="num"'


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def _fmt(x, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def _section(title: str, sid: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{_esc(title)}</h2>\n{body}\n</section>'


def _img(name: str | None, alt: str, caption: str) -> str:
    if not name:
        return ""
    return f'<figure><img src="{_esc(name)}" alt="{_esc(alt)}" data-figure="{_esc(name)}">' \
           f"<figcaption>{caption}</figcaption></figure>"


def _table(header: list[str], rows: list[list], num: set[int] = frozenset(), tid: str | None = None,
           sortable: bool = False) -> str:
    attrs = (f' id="{tid}"' if tid else "") + (' class="sortable"' if sortable else "")
    th = "".join(f"<th{_NUM if i in num else ''}>{_esc(h)}</th>" for i, h in enumerate(header))
    body = []
    for r in rows:
        body.append("<tr>" + "".join(f"<td{_NUM if i in num else ''}>{_esc(c)}</td>" for i, c in enumerate(r)) + "</tr>")
    return f'<div class="scroll"><table{attrs}><thead><tr>{th}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _header_cell(text: str) -> str:
    """``oracle: long_property_name`` on two lines, breakable after underscores."""
    if ": " not in text:
        return _esc(text)
    oracle, prop = text.split(": ", 1)
    return f'<span class="o">{_esc(oracle)}: </span>' + "_<wbr>".join(_esc(part) for part in prop.split("_"))


def _rich_table(header: list[str], rows: list[list[tuple]], tid: str) -> str:
    num_cols = {i for i, cell in enumerate(rows[0]) if "num" in cell[3]} if rows else set()
    th = "".join(f"<th{_NUM if i in num_cols else ''}>{_header_cell(h)}</th>" for i, h in enumerate(header))
    out = []
    for r in rows:
        tds = []
        for text, key, href, cls in r:
            a = f' class="{cls}"' if cls else ""
            a += f' data-sort="{_esc("" if key is None else key)}"'
            inner = f'<a href="{_esc(href)}">{_esc(text)}</a>' if href else _esc(text)
            tds.append(f"<td{a}>{inner}</td>")
        out.append("<tr>" + "".join(tds) + "</tr>")
    return (f'<div class="scroll"><table id="{tid}" class="sortable"><thead><tr>{th}</tr></thead>'
            f'<tbody>{"".join(out)}</tbody></table></div>')


def write_report(
    store_path: str | Path,
    out_dir: str | Path,
    *,
    good_set: set[str] | None = None,
    objective: dict | None = None,
    top_n: int = 25,
    model_insights: bool = True,
) -> Path:
    """Write ``index.html``, its PNG figures and the top candidates' CIF files into ``out_dir``.

    ``store_path`` may also be a ``matloop benchmark`` output folder (``summary.json`` and
    ``curves.csv``): the page then shows recall per strategy with bootstrap bands.

    Args:
        good_set: candidate ids that count as discoveries (retrospective campaigns); default:
            store meta ``good_set``.
        objective: ``{"property", "goal", "window"?, "oracle"?}``; default: store meta
            ``objective``, else inferred from the observations and the agent's rationales.
        top_n: rows of the top-candidates table.
        model_insights: refit the surrogate for its feature relevance (see
            ``report_panels.refit_relevance``; the slowest part of the report).

    Returns:
        The path of ``index.html``.

    Raises:
        InputError: the store is missing or unreadable, or an objective is malformed.
    """
    store_path = Path(store_path)
    out = Path(out_dir)
    if store_path.is_dir() and (store_path / "summary.json").is_file():
        return _write_benchmark_page(store_path, out)
    if not store_path.is_file():
        raise InputError("store not found", file=str(store_path))
    try:
        store = Store(store_path)
    except sqlite3.DatabaseError as exc:
        raise InputError(f"cannot read the store ({exc}); is it a matloop SQLite store?", file=str(store_path)) from None
    try:
        try:
            data = _load(store)
        except sqlite3.DatabaseError as exc:
            raise InputError(f"cannot read the store ({exc}); is it a matloop SQLite store?",
                             file=str(store_path)) from None
        out.mkdir(parents=True, exist_ok=True)
        obj = resolve_objective(data, objective)
        if good_set is None and data.meta.get(META_GOOD_SET):
            good_set = set(data.meta[META_GOOD_SET])
        good = set(good_set) if good_set is not None else None
        sections = _store_sections(store, data, obj, good, out, top_n, model_insights) if obj is not None else []
    finally:
        store.close()
    sections.append(_campaign_section(data))
    agent_obs = data.arms.get("agent", [])
    cards = [("candidates in the pool", len(data.candidates)), ("iterations (agent)", len(data.iterations)),
             ("evaluations (agent)", len(agent_obs)), ("cost (agent)", f"{sum(o.cost for o in agent_obs):g}"),
             ("failures (agent)", sum(not o.ok for o in agent_obs))]
    if obj is not None:
        for arm, label in (("agent", "best (agent)"), ("random", "best (random baseline)")):
            vals = _objective_values(data, obj, arm)
            if vals:
                cid, v = max(vals, key=lambda t: obj.score([t[1]])[0])
                f = data.candidates[cid].formula if cid in data.candidates else cid
                cards.append((label, panels.fmt_value(v, obj.property), f))
    card_html = "".join(f'<div class="card"><b>{_esc(c[1])}</b>'
                        + (f'<i>{_esc(c[2])}</i>' if len(c) > 2 else "")
                        + f'<span>{_esc(c[0])}</span></div>' for c in cards)
    obj_line = (f"Objective: <b>{_esc(obj.describe())}</b> — {_esc(obj.origin)}" if obj else
                "Objective: unknown — the store has no successful observation yet, so there is nothing to plot")
    return _write_page(out, f"Campaign {data.name}", f"<p>{obj_line}</p>\n<p>Store <code>"
                       f"{_esc(data.path.resolve())}</code> · report written {_esc(_now())}</p>",
                       f'<div class="cards">{card_html}</div>', sections)


def _now() -> str:
    return _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


def _write_page(out: Path, title: str, header: str, cards: str, sections: list[str]) -> Path:
    """The page around ``sections`` (inline CSS and JS), written as ``out/index.html``."""
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>matloop report — {_esc(title)}</title>
<style>{_CSS}</style></head>
<body><main>
<header><h1>{_esc(title)}</h1>
{header}</header>
{cards}
{chr(10).join(s for s in sections if s)}
<footer>Generated by <code>matloop report</code> from the store alone; figures are PNG files beside this page.
</footer>
</main>
<script>{_JS}</script>
</body></html>
"""
    out.mkdir(parents=True, exist_ok=True)
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def _store_sections(store: Store, data: _Data, obj: ReportObjective, good: set[str] | None, out: Path,
                    top_n: int, model_insights: bool = True) -> list[str]:
    """The panels of a campaign store, in page order; a panel without data is left out."""
    sections = []
    name = _plot_best(data, obj, out)
    if name:
        cap = f"Best {_esc(obj.property)} observed by <b>{_esc(obj.oracle)}</b> after each evaluation."
        if "random" in data.arms:
            cap += " The random baseline draws the same number of objective evaluations from the same pool; " \
                   "its cache hits count at the cost of the evaluation they reused."
        sections.append(_section("Best so far", "best", _img(name, "best so far", cap)))
    if good is not None or obj.goal == "window":
        name = _plot_discovery(data, obj, good, out)
        cap = (f"Distinct candidates of the good set ({len(good)} ids) evaluated successfully by {_esc(obj.oracle)}."
               if good is not None else "Distinct candidates whose value lies in the window.")
        sections.append(_section("Discovery curve", "discovery", _img(name, "discovery curve", cap)))
    sections.append(_picks_section(data, obj))
    sections.append(_constraints_section(data))
    rows = _funnel_rows(data)
    if rows:
        tbl = _table(["oracle", "fidelity", "evaluations", "failed", "cost", "wall time (s)", "most common failure"],
                     [[r["oracle"], r["fidelity"], r["evaluations"], r["failed"], f"{r['cost']:g}",
                       f"{r['wall_time_s']:.1f}", f"{r['reason'][0]} (×{r['reason'][1]})" if r["reason"] else ""]
                      for r in rows], num={1, 2, 3, 4, 5})
        sections.append(_section("Funnel per tier", "funnel",
                                 _img(_plot_funnel(rows, out), "funnel", "Agent arm, lowest fidelity at the top.") + tbl))
    pairs, units, dropped = _parity_pairs(data, obj)
    name, st = _plot_parity(pairs, units, obj, out)
    if name:
        label = ", ".join(dict.fromkeys(p["oracle"] for p in pairs))
        cap = (f"Surrogate mean ± σ recorded when each candidate was chosen, against the value the oracle whose "
               f"labels trained it ({_esc(label)}) returned. "
               f"{100 * st['within_1']:.0f} % of errors lie within 1σ (Gaussian: 68 %), "
               f"{100 * st['within_2']:.0f} % within 2σ (95 %). σ is the surrogate's posterior of the objective, "
               "so observation noise, if any, widens the errors.")
        if dropped:
            cap += f" {dropped} prediction(s) in other units left out."
        sections.append(_section("Surrogate parity and calibration", "parity", _img(name, "parity and calibration", cap)))
    sections.append(_model_section(store, data, obj, out, model_insights))
    objs = _objectives_meta(data, obj)
    if objs:
        name, n_pts, front = _plot_pareto(data, objs, _best_values(data), out)
        if name:
            cap = (f"{n_pts} candidates with both properties, each value from the highest-fidelity oracle that "
                   f"reported it; front: {_esc(', '.join(front))}.")
            sections.append(_section("Pareto front", "pareto", _img(name, "Pareto front", cap)))
    srows = _source_rows(data, obj)
    if srows:
        header = ["source", "candidates", "evaluated", "successes", f"in top-{TOP_K_SOURCES}", f"best {obj.property}"]
        rows = [[r["source"], r["candidates"], r["evaluated"], r["successes"], r["top"],
                 panels.fmt_value(r["best"], obj.property)] for r in srows]
        cap = (f"Agent arm. Successes: candidates with a {_esc(obj.property)} value from {_esc(obj.oracle)}; "
               f"top-{TOP_K_SOURCES}: the agent's best {TOP_K_SOURCES} by the objective.")
        if any(o.value("e_above_hull_ev_per_atom") is not None for o in data.arms.get("agent", [])):
            from .generation import STABLE_EV_PER_ATOM, sun_counts

            # source_yield(store) on what this report already read from the store
            sun = sun_counts(list(data.candidates.values()), [o for obs in data.arms.values() for o in obs])
            header += ["stable", "S.U.N.", "S.U.N. rate"]
            for row in rows:
                y = sun.get(row[0], {})
                rate = y.get("sun_rate")
                row += [y.get("stable", 0), y.get("sun", 0), "-" if rate is None else f"{rate:.2f}"]
            cap += (f" Stable: E_hull ≤ {STABLE_EV_PER_ATOM:g} eV/atom on the reference hull; S.U.N.: stable, unique "
                    "(StructureMatcher within the source) and novel (formula not a phase of the reference hull); "
                    "rate per evaluated candidate.")
        tbl = _table(header, rows, num=set(range(1, len(header))))
        sections.append(_section("Candidate sources and yields", "sources",
                                 _img(_plot_sources(srows, out, obj), "sources", cap) + tbl))
    name, _ = _plot_latent(data, obj, out)
    if name:
        sections.append(_section("Latent space", "latent", _img(
            name, "latent space", "2-D PCA of the latent points the VAE decoded into candidates, coloured by "
            f"the observed {_esc(obj.property)}.")))
    header, trows, n_cif, views = _top_table(data, obj, out, top_n)
    if trows:
        body = ('<p class="hint">Click a header to sort; the first value column after the labels is the objective. '
                f"{n_cif} structure(s) written as CIF (relaxed where an oracle relaxed them); space groups from "
                "pymatgen's SpacegroupAnalyzer (symprec 0.1 Å) on the same structure.</p>"
                + _rich_table(header, trows, "top-table"))
        sections.append(_section(f"Top {len(trows)} candidates", "top", body))
    sections.append(_structures_section(data, views, out))
    return sections


def _picks_section(data: _Data, obj: ReportObjective) -> str:
    """Per iteration: each request with the reason, acquisition value, predicted μ ± σ, P(feasible) and outcome."""
    outcomes: dict[tuple[str, str], str] = {}
    for o in data.arms.get("agent", []):
        key = (o.candidate_id, o.oracle)
        if key in outcomes:
            continue
        if o.ok:
            prop = obj.property if o.value(obj.property) is not None else next(iter(o.properties), None)
            if prop is None:
                outcomes[key] = "ok"
            else:
                outcomes[key] = (prop + " = " if prop != obj.property else "") + panels.fmt_value(o.value(prop), prop)
        else:
            outcomes[key] = "failed: " + (o.reason or "unknown").splitlines()[0][:70]
    formulas = {cid: c.formula for cid, c in data.candidates.items()}
    rows = panels.pick_rows(data.iterations, data.requests, formulas, outcomes)
    if not rows:
        return ""
    with_feasible = any(r["p_feasible"] is not None for r in rows)
    header = (["iteration", "tier", "formula", "reason", "acquisition", "predicted μ ± σ"]
              + (["P(feasible)"] if with_feasible else []) + [f"observed {obj.property}"])
    table_rows = []
    for r in rows:
        unit = panels.unit_of(obj.property) if r["mean_units"] == "property" else None
        sd = "?" if r["std"] is None else f"{r['std']:.2g}"
        pred = "–" if r["mean"] is None else (f"{r['mean']:.3g} ± {sd}" + (f" {unit}" if unit else "")
                                              + ("" if r["mean_units"] == "property" else " (score)"))
        row = [r["iteration"], r["tier"], r["formula"], r["reason"], panels.fmt_value(r["acquisition"]), pred]
        if with_feasible:
            row.append("–" if r["p_feasible"] is None else f"{r['p_feasible']:.2f}")
        table_rows.append(row + [r["outcome"]])
    n_it = len({r["iteration"] for r in rows})
    cap = (f"{len(rows)} requests over {n_it} iterations, as the agent recorded them when it planned (store "
           "tables <code>iterations</code>.rationale and <code>requests</code>). Predicted μ ± σ is the surrogate's "
           f"posterior of {_esc(obj.property)} for the tier whose labels trained it; random initial picks carry none. "
           "The acquisition value is on the agent's own scale (log EI for qLogNEI), comparable within one plan.")
    return _section("Picks per iteration and why", "picks",
                    f'<p class="hint">{cap}</p><div class="tall">'
                    + _table(header, table_rows, num={0, 4}, tid="picks-table") + "</div>")


def _constraints_section(data: _Data) -> str:
    """Each constraint with how many evaluated candidates it removed, per arm, and the agent's feasibility model."""
    from matloop.core.goals import Constraint

    raw = data.meta.get("constraints") or []
    if not raw:
        return ""
    try:
        constraints = [Constraint(**c) for c in raw]
    except TypeError as exc:
        raise InputError(f"bad constraint record: {exc}", where="meta.constraints") from None
    rows = panels.constraint_rows(data.arms, constraints)
    if not rows:
        return ""
    body = _table(["constraint", "arm", "evaluated", "met", "removed", "no value"],
                  [[r["constraint"], r["arm"], r["evaluated"], r["met"], r["removed"], r["no_value"]] for r in rows],
                  num={2, 3, 4, 5}, tid="constraints-table")
    cap = ("Evaluated: candidates with a successful observation; removed: those whose value breaks the constraint "
           "(they do not count as results); no value: the constrained property was never measured for them.")
    fm = panels.feasibility_model(data.iterations)
    if fm:
        known = "; ".join(f"{k}: {v.get('n_feasible', '?')} of {v.get('n_labels', '?')} labels feasible "
                          f"({v.get('model', '?')})" for k, v in fm["known"].items())
        cap += (f" The agent's feasibility model at iteration {fm['iteration']} ({_esc(known)}) predicts a mean "
                f"P(feasible) of {fm.get('pool_mean_prob_feasible', float('nan')):.2f} over the unlabelled pool; "
                f"it weights the acquisition as {_esc(fm.get('weighting', '?'))}.")
    return _section("Constraints and feasibility", "constraints", f'<p class="hint">{cap}</p>' + body)


def _model_section(store: Store, data: _Data, obj: ReportObjective, out: Path, refit: bool = True) -> str:
    """Feature relevance of a refit of the surrogate, and the agent's recorded skill per iteration."""
    parts = []
    ins = None
    label_oracle = Counter(info.get("labels_from") for it in data.iterations
                           for info in (it["rationale"].get("tiers") or {}).values() if info.get("labels_from"))
    tier = label_oracle.most_common(1)[0][0] if label_oracle else obj.oracle
    labels = {cid: v for cid, v in _objective_values(data, obj, "agent")} if tier == obj.oracle else {
        o.candidate_id: o.value(obj.property) for o in data.arms.get("agent", [])
        if o.oracle == tier and o.ok and o.value(obj.property) is not None}
    spec = data.meta.get("campaign_spec")
    if refit:
        ins = panels.refit_relevance(store, data.candidates, data.iterations, labels, tier,
                                     spec.get("resolved") if isinstance(spec, dict) else None)
    if ins:
        cap = (f"The agent does not store its fitted model, so the report refits the same surrogate "
               f"({ins['kind']}) on the stored features ({_esc(ins['features_key'])}, preprocessed over the pool as "
               f"the campaign does) and the {ins['n_labels']} {_esc(obj.property)} labels from {_esc(tier)}. "
               f"Shown: the {len(ins['names'])} most relevant of {ins['n_features']} features by {_esc(ins['measure'])}.")
        parts.append(_img(panels.plot_relevance(ins, obj.property, out), "feature relevance", cap))
    skill = panels.skill_rows(data.iterations)
    if skill:
        cols = ["spearman_loo", "calibration", "n_labels", "explore_fraction", "decision"]
        parts.append("<h3>Surrogate skill per iteration</h3>" + _table(
            ["iteration", "tier", "Spearman ρ (leave-one-out)", "calibration", "labels", "explore fraction", "decision"],
            [[r["iteration"], r["tier"]] + [_fmt(r.get(c), 3) for c in cols] for r in skill],
            num={0, 2, 3, 4, 5}, tid="skill-table"))
    if not parts:
        return ""
    return _section("Model insights", "model", "".join(parts))


def _structures_section(data: _Data, views: list, out: Path) -> str:
    """Static views of the best candidates' cells, with formula, prototype and space group."""
    if not views:
        return ""
    sdir = out / "structures"
    sdir.mkdir(exist_ok=True)
    figs = []
    for cid, structure, how, sg in views[: panels.N_STRUCTURE_VIEWS]:
        c = data.candidates.get(cid)
        formula = c.formula if c else cid
        proto = (c.provenance or {}).get("prototype") if c else None
        title = formula + (f" ({proto})" if proto else "") + (f", {sg[0]} (#{sg[1]})" if sg else "")
        panels.plot_structure(structure, sdir / f"{cid}.png", title)
        figs.append(f'<figure class="cell"><img src="structures/{_esc(cid)}.png" alt="{_esc(title)}" '
                    f'data-figure="structures/{_esc(cid)}.png"><figcaption>{_esc(title)}; {_esc(how)}</figcaption>'
                    "</figure>")
    cap = ("The best candidates in the order of the table above: the conventional standard cell of the same "
           "structure as the table's space group, drawn with ASE.")
    return _section("Structures of the top candidates", "structures",
                    f'<p class="hint">{cap}</p><div class="cells">{"".join(figs)}</div>')


def _campaign_section(data: _Data) -> str:
    """The campaign file (or the spec pieces the store records) and the package versions."""
    parts = []
    spec = panels.campaign_text(data.meta)
    if spec:
        title, text = spec
        parts.append(f"<h3>{_esc(title)}</h3><pre>{_esc(text)}</pre>")
    versions = panels.package_versions()
    parts.append("<h3>Package versions (where the report was written)</h3>"
                 + _table(["package", "version"], [[k, v] for k, v in versions.items()], tid="versions-table"))
    return _section("Campaign and software", "campaign", "".join(parts))


def _write_benchmark_page(bench_dir: Path, out: Path) -> Path:
    """The page of a ``matloop benchmark`` output folder: recall per strategy with bootstrap bands, and the summary."""
    summary, mats, bests = panels.read_benchmark(bench_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = panels.plot_benchmark_recall(summary, mats, out)
    best = panels.plot_benchmark_best(summary, bests, out)
    cap = ("Mean recall of the good set over seeds; the band is a percentile-bootstrap 95 % interval of that mean "
           "(scipy.stats.bootstrap over seeds, so it stays within [0, 1]). The dashed black line is random search's "
           "expectation (t / N), drawn on top.")
    rows = []
    for sname, s in (summary.get("strategies") or {}).items():
        r, af, e2h = s.get("recall_at_budget", {}), s.get("AF_vs_random", {}), s.get("evals_to_half", {})
        ci = r.get("ci95") or [None, None]
        rows.append([sname, _fmt(r.get("mean"), 3), f"[{_fmt(ci[0], 3)}, {_fmt(ci[1], 3)}]",
                     f"{e2h.get('n_reached', '?')} of {summary.get('seeds', '?')}", _fmt(af.get("median"), 3),
                     _fmt(af.get("mean"), 3), _fmt((s.get("EF_at_budget") or {}).get("mean"), 3)])
    tbl = _table(["strategy", "recall at budget", "95 % CI (t)", "seeds reaching half recall", "AF median",
                  "AF mean (seeds that reached)", "EF at budget"], rows, num={1, 4, 5, 6}, tid="benchmark-table")
    sections = [_section("Recall per strategy", "benchmark-recall", _img(name, "recall per strategy", cap)),
                _section("Best so far per strategy", "benchmark-best", _img(
                    best, "best so far per strategy", "Mean over seeds of the best label value acquired so far.")),
                _section("Summary", "benchmark-summary", tbl)]
    header = (f"<p>{_esc(summary.get('dataset', ''))}: goal {_esc(summary.get('goal', ''))}, pool "
              f"{summary.get('n_pool', '?')}, good set {summary.get('n_good', '?')}, budget {summary.get('budget', '?')}"
              f", {summary.get('seeds', '?')} seeds</p><p>Benchmark folder <code>{_esc(bench_dir.resolve())}</code> · "
              f"report written {_esc(_now())}</p>")
    versions = panels.package_versions()
    sections.append(_section("Software", "campaign", _table(["package", "version"], [[k, v] for k, v in versions.items()],
                                                            tid="versions-table")))
    return _write_page(out, f"Benchmark {summary.get('dataset', bench_dir.name)}", header, "", sections)


# -- command line -----------------------------------------------------------------------------


def add_arguments(parser) -> None:
    """The arguments of ``matloop report`` on an argparse (sub)parser."""
    parser.add_argument("store", help="the campaign's SQLite store, or a 'matloop benchmark' output folder")
    parser.add_argument("--out", required=True, help="folder for index.html, the figures and structures/")
    parser.add_argument("--good-set", help="file of candidate ids that count as discoveries, one per line")
    parser.add_argument("--objective", help='JSON, e.g. \'{"property": "gap_ev", "goal": "maximize"}\'')
    parser.add_argument("--top", type=int, default=25, help="rows of the top-candidates table (default: 25)")
    parser.add_argument("--no-model-insights", dest="model_insights", action="store_false",
                        help="skip refitting the surrogate for its feature relevance (the slowest panel)")


def cmd_report(args) -> int:
    """``matloop report STORE --out DIR``."""
    good = None
    if getattr(args, "good_set", None):
        p = Path(args.good_set)
        if not p.is_file():
            raise InputError("good-set file not found", file=str(p))
        good = {line.strip() for line in p.read_text().splitlines() if line.strip() and not line.startswith("#")}
    objective = None
    if getattr(args, "objective", None):
        try:
            objective = json.loads(args.objective)
        except json.JSONDecodeError as exc:
            raise InputError(f"not JSON: {exc}", where="--objective") from None
        if not isinstance(objective, dict):
            raise InputError("expects a JSON object", where="--objective")
    index = write_report(args.store, args.out, good_set=good, objective=objective, top_n=getattr(args, "top", 25),
                         model_insights=getattr(args, "model_insights", True))
    print(f"report written to {index}")
    return 0
