"""The explanatory panels of ``matloop report``: picks and their reasons, constraints, symmetry
and structure views, model insights, the campaign file and package versions, and the
benchmark page (``matloop report BENCHMARK_DIR``).

Each ``*_rows``/``*_panel`` function reads plain data (observations, rationales, store meta)
and returns rows or ``None`` when it has nothing to show: the report omits a panel without
data rather than drawing it empty. Heavy libraries (matplotlib, pymatgen, ASE, torch) are
imported inside the functions that need them.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from matloop.core.records import InputError, Observation

#: property-name suffix -> unit, longest suffix first (``gap_ev`` -> eV, ``e_above_hull_ev_per_atom`` -> eV/atom)
UNIT_SUFFIXES = (("_ev_per_atom", "eV/atom"), ("_percent", "%"), ("_ev", "eV"), ("_v", "V"), ("_k", "K"))

#: distributions whose versions the report lists
PACKAGES = ("matloop", "torch", "botorch", "gpytorch", "pymatgen", "matminer", "chgnet", "ase", "gpaw")

#: top candidates drawn in the structure panel
N_STRUCTURE_VIEWS = 6


# -- units and axis labels ------------------------------------------------------------------


def unit_of(prop: str) -> str | None:
    """The unit a property name's suffix implies (``formation_energy_ev_per_atom`` -> ``eV/atom``), else None."""
    for suffix, unit in UNIT_SUFFIXES:
        if prop.endswith(suffix):
            return unit
    return None


def direction_text(goal: str, window: tuple[float, float] | None = None) -> str:
    """``lower is better`` / ``higher is better`` / ``target lo to hi`` for a goal word."""
    if goal == "window" and window is not None:
        return f"target {window[0]:g} to {window[1]:g}"
    return "lower is better" if goal in ("minimize", "min") else "higher is better"


def axis_label(prop: str, goal: str | None = None, window: tuple[float, float] | None = None, prefix: str = "",
               wrap: bool = False) -> str:
    """An axis label naming the property, its unit and the goal's direction, e.g.
    ``formation_energy_ev_per_atom [eV/atom] (lower is better)``; ``wrap`` puts the direction on a second line."""
    unit = unit_of(prop)
    text = (prefix + " " if prefix else "") + prop + (f" [{unit}]" if unit else "")
    return text + (("\n" if wrap else " ") + f"({direction_text(goal, window)})" if goal else "")


def fmt_value(v, prop: str | None = None, digits: int = 4) -> str:
    """A value rounded to ``digits`` significant figures with the property's unit (``-4.163 eV/atom``)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    unit = unit_of(prop) if prop else None
    return f"{v:.{digits}g}" + (f" {unit}" if unit else "")


# -- constraints ----------------------------------------------------------------------------


def constraint_label(c) -> str:
    """``e_above_hull_ev_per_atom <= 0.1 (chgnet)`` for a ``matloop.core.goals.Constraint``."""
    bounds = " and ".join(x for x in (f">= {c.min:g}" if c.min is not None else "",
                                      f"<= {c.max:g}" if c.max is not None else "") if x)
    return f"{c.property} {bounds}" + (f" ({c.oracle})" if c.oracle else "")


def constraint_rows(observations_by_arm: dict[str, list[Observation]], constraints: Iterable) -> list[dict]:
    """Per constraint and arm: evaluated candidates, how many meet it, how many it removes, how many lack the value.

    A candidate counts as evaluated when it has a successful observation in that arm; it is
    removed when it has the constrained value and ``Constraint.met_by`` rejects it. Arms with
    no successful observation are left out. Shared by ``matloop status`` and the report.
    """
    per_arm = {}
    for arm, obs in observations_by_arm.items():
        per: dict[str, list[Observation]] = {}
        for o in obs:
            if o.ok:
                per.setdefault(o.candidate_id, []).append(o)
        if per:
            per_arm[arm] = per
    rows = []
    for c in constraints:
        for arm, per in per_arm.items():
            has = {cid for cid, obs in per.items()
                   if any((c.oracle is None or o.oracle == c.oracle) and o.value(c.property) is not None for o in obs)}
            met = sum(1 for cid in has if c.met_by(per[cid]))
            rows.append({"constraint": constraint_label(c), "arm": arm, "evaluated": len(per), "met": met,
                         "removed": len(has) - met, "no_value": len(per) - len(has)})
    return rows


def feasibility_model(iterations: list[dict]) -> dict | None:
    """The last plan's constraint model (``selection.constraints`` of the agent's rationale), if any."""
    for it in reversed(iterations):
        for tier, info in (it["rationale"].get("tiers") or {}).items():
            cons = (info.get("selection") or {}).get("constraints")
            if isinstance(cons, dict) and cons.get("known"):
                return {"iteration": it["idx"], "tier": tier, **cons}
    return None


# -- picks per iteration --------------------------------------------------------------------


def _tier_reason(info: dict) -> str:
    """One sentence for why a tier picked what it picked (the rationale's own words where it has them)."""
    if "promoted" in info or "rule" in info:
        rule = info.get("rule") or {}
        bits = [f"promoted after {rule.get('after', '?')}"]
        if rule.get("top_k") is not None:
            bits.append(f"top {rule['top_k']}")
        if info.get("ranked_by"):
            bits.append(f"ranked by {info['ranked_by']}")
        if rule.get("property"):
            bits.append(f"rule on {rule['property']}")
        return ", ".join(bits) + f"; {info.get('passed', '?')} passed"
    sel = info.get("selection") or {}
    if isinstance(sel.get("reason"), str):
        return sel["reason"]
    if isinstance(sel.get("reason"), dict):  # multi-fidelity: the fidelity rule's own record
        return "; ".join(f"{k}: {v}" for k, v in sel["reason"].items() if isinstance(v, (str, int, float)))[:200]
    if info.get("reason"):
        return str(info["reason"])
    if sel.get("acquisition"):
        text = f"{sel['acquisition']} on a {sel.get('surrogate', '?')} surrogate of {sel.get('n_train', '?')} labels"
        if sel.get("batch_rule"):
            text += f" ({sel['batch_rule']})"
        return text
    return ""


def pick_rows(iterations: list[dict], requests: list[tuple], formulas: dict[str, str],
              outcomes: dict[tuple[str, str], str]) -> list[dict]:
    """One row per agent request: iteration, tier, formula, reason, acquisition, predicted mean and std, P(feasible), outcome.

    Args:
        iterations: the agent arm's ``Store.iterations``.
        requests: ``(iteration, candidate id, oracle, acquisition)`` in request order.
        formulas: candidate id -> formula.
        outcomes: (candidate id, oracle) -> what that oracle returned, as text.
    """
    by_idx = {it["idx"]: it["rationale"] for it in iterations}
    rows = []
    for idx, cid, oracle, acq in requests:
        rat = by_idx.get(idx)
        if rat is None:
            continue
        info = (rat.get("tiers") or {}).get(oracle) or {}
        sel = info.get("selection") or {}
        chosen = info.get("chosen") or []
        k = next((i for i, c in enumerate(chosen) if c.get("candidate") == cid), None)
        pick = chosen[k] if k is not None else {}
        pfeas = None
        cons_chosen = (sel.get("constraints") or {}).get("chosen") or []
        if k is not None and k < len(cons_chosen) and isinstance(cons_chosen[k].get("log_prob_feasible"), (int, float)):
            pfeas = math.exp(cons_chosen[k]["log_prob_feasible"])
        acquisition = acq if acq is not None else pick.get("acquisition")
        rows.append({
            "iteration": idx, "tier": oracle, "candidate": cid, "formula": formulas.get(cid, cid),
            "reason": pick.get("rationale") if isinstance(pick.get("rationale"), str) else _tier_reason(info),
            "acquisition": acquisition, "mean": pick.get("predicted_mean"), "std": pick.get("predicted_std"),
            "mean_units": sel.get("mean_units", "property"), "p_feasible": pfeas,
            "labels_from": info.get("labels_from", oracle), "outcome": outcomes.get((cid, oracle), "pending"),
        })
    return rows


def skill_rows(iterations: list[dict]) -> list[dict]:
    """Per iteration and tier, the agent's recorded ``skill`` dict (spearman_loo, calibration, ...), if any."""
    rows = []
    for it in iterations:
        for tier, info in (it["rationale"].get("tiers") or {}).items():
            skill = info.get("skill")
            if isinstance(skill, dict) and skill:
                rows.append({"iteration": it["idx"], "tier": tier, **skill})
    return rows


# -- symmetry and structure views -----------------------------------------------------------


def space_group(structure, symprec: float = 0.1) -> tuple[str, int] | None:
    """(Hermann-Mauguin symbol, number) from pymatgen's ``SpacegroupAnalyzer``; None if spglib fails."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        sga = SpacegroupAnalyzer(structure, symprec=symprec)
        return sga.get_space_group_symbol(), int(sga.get_space_group_number())
    except Exception:  # spglib gives up on some distorted cells: the column is left blank
        return None


def plot_structure(structure, path: Path, title: str) -> None:
    """A static view of the conventional standard cell (pymatgen ``SpacegroupAnalyzer``; the cell as given
    when spglib fails) drawn by ``ase.visualize.plot.plot_atoms``, slightly rotated, as a PNG at ``path``."""
    from ase.visualize.plot import plot_atoms
    from matplotlib.figure import Figure
    from pymatgen.io.ase import AseAtomsAdaptor
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        structure = SpacegroupAnalyzer(structure, symprec=0.1).get_conventional_standard_structure()
    except Exception:  # spglib gives up on some distorted cells: draw the cell as stored
        pass
    atoms = AseAtomsAdaptor.get_atoms(structure)
    fig = Figure(figsize=(2.6, 2.6), dpi=110, layout="constrained")
    ax = fig.subplots()
    plot_atoms(atoms, ax, rotation="15x,25y,0z", radii=0.35, show_unit_cell=2)
    ax.set_axis_off()
    ax.set_title(title, fontsize=8)
    fig.savefig(path, dpi=110)


# -- model insights -------------------------------------------------------------------------


def _surrogate_of(iterations: list[dict], tier: str) -> str | None:
    for it in reversed(iterations):
        sel = ((it["rationale"].get("tiers") or {}).get(tier) or {}).get("selection") or {}
        if sel.get("surrogate"):
            return str(sel["surrogate"])
    return None


def refit_relevance(store, candidates: dict, iterations: list[dict], label_values: dict[str, float],
                    label_oracle: str, resolved: dict | None = None, top: int = 15) -> dict | None:
    """Refit the campaign's surrogate on the stored features and labels, and return its feature relevance.

    The agent does not record its fitted model, so the report refits it once, at report time:
    the features come from the store's ``features`` table (the featurizer choice of
    ``campaign_spec.resolved.features``, else the store's only feature key), are preprocessed
    over the pool exactly as ``matloop.loop.pool.pool_features`` does, and the labels are
    ``label_values`` (the objective oracle's values). GP: inverse ARD lengthscales on the
    ``[0, 1]``-normalised features (larger = the prediction changes faster along that feature);
    RF: impurity-based ``feature_importances_``.

    Returns:
        ``{"kind", "n_labels", "names", "values", "measure", "features_key"}`` for the ``top``
        most relevant features, or None when it cannot be done (fewer than 3 labels, no stored
        features, a PCA-rotated, multi-fidelity or plug-in surrogate whose inputs have no feature
        names). With several objectives the refit is the primary objective's GP.
    """
    from matloop.agents.modelling.features import FeaturePreprocessor, FeatureSettings, feature_labels, pool_fractions
    from matloop.agents.modelling.surrogates import GPSurrogate, RandomForestSurrogate, SurrogateSettings

    kind = (_surrogate_of(iterations, label_oracle) or "").split(" ")[0]  # "gp per objective": the primary's GP
    agent = (resolved or {}).get("agent") or {}
    sur = dict(agent.get("surrogate") or {})
    kind = sur.get("kind", kind)
    if kind not in ("gp", "rf") or sur.get("pca_variance") or len(label_values) < 3:
        return None
    keys = [r[0] for r in store.db.execute("SELECT DISTINCT key FROM features")]
    if (resolved or {}).get("features"):
        fs = FeatureSettings(**{k: v for k, v in resolved["features"].items() if k in FeatureSettings.model_fields})
    elif len(keys) == 1 and "|" in keys[0]:
        comp, struct = keys[0].split("|", 1)
        fs = FeatureSettings(composition=[c for c in comp.split("+") if c], structure=[s for s in struct.split("+") if s])
    else:
        return None
    cands = list(candidates.values())
    X, missing = store.get_features(fs.key, [c.id for c in cands])
    if X is None:
        return None
    if missing:  # candidates added after the last plan (e.g. by a generator) were never featurized
        gone = set(missing)
        cands = [c for c in cands if c.id not in gone]
        X, missing = store.get_features(fs.key, [c.id for c in cands])
        if X is None or missing or not cands:
            return None
    names = feature_labels(fs)
    if "fractions" in fs.composition:
        F, fnames = pool_fractions(cands)
        X, names = np.hstack([X, F]), names + fnames
    if X.shape[1] != len(names):
        return None
    pre = FeaturePreprocessor().fit(X)
    Xt = pre.transform(X)
    names = [n for n, k in zip(names, pre.keep) if k]
    row = {c.id: i for i, c in enumerate(cands)}
    ids = [cid for cid in label_values if cid in row]
    if len(ids) < 3:
        return None
    Xtr = Xt[[row[c] for c in ids]]
    y = np.array([label_values[c] for c in ids], dtype=float)
    keep_settings = {k: v for k, v in sur.items() if k in SurrogateSettings.model_fields and k != "kernel_structure"}
    settings = SurrogateSettings(**{**keep_settings, "kind": kind})
    if kind == "rf":
        model = RandomForestSurrogate(settings, seed=0)
        model.fit(Xtr, y)
        values, measure = model.model.feature_importances_, "impurity importance (random forest)"
    else:
        import torch

        model = GPSurrogate(settings, bounds=np.stack([Xt.min(0), Xt.max(0)]), seed=0)
        # one thread: on the quickstart store (32 labels x 121 features, a loaded 2-core machine) the
        # fit took 25.4 s with torch's default threads and 2.4 s with one, to the same lengthscales
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            model.fit(Xtr, y)
        finally:
            torch.set_num_threads(threads)
        ls = None
        for m in model.model.covar_module.modules():
            v = getattr(m, "lengthscale", None)
            if v is not None and v.shape[-1] == Xt.shape[1]:
                ls = v.detach().cpu().numpy().reshape(-1)
                break
        if ls is None:
            return None
        values, measure = 1.0 / ls, "1 / ARD lengthscale (GP, features normalised to [0, 1])"
    order = np.argsort(-values)[:top]
    return {"kind": kind, "n_labels": len(ids), "names": [names[j] for j in order],
            "values": [float(values[j]) for j in order], "measure": measure, "features_key": fs.key,
            "n_features": len(names)}


def plot_relevance(ins: dict, target: str, out_dir: Path) -> str:
    """Horizontal bar chart of ``refit_relevance``'s features, most relevant at the top; returns the file name."""
    from matplotlib.figure import Figure

    n = len(ins["names"])
    fig = Figure(figsize=(7.6, 1.2 + 0.26 * n), dpi=110, layout="constrained")
    ax = fig.subplots()
    y = np.arange(n)[::-1]
    ax.barh(y, ins["values"], 0.65, color="#1f5fa8")
    ax.set_yticks(y, ins["names"], fontsize=7.5)
    ax.set_xlabel(ins["measure"], fontsize=9)
    ax.set_title(f"features the {ins['kind'].upper()} surrogate of {axis_label(target)} relies on most\n"
                 f"({ins['n_labels']} labels, {ins['n_features']} features after preprocessing)", fontsize=9.5)
    ax.grid(True, axis="x", alpha=0.25)
    ax.spines[["top", "right"]].set_visible(False)
    fig.savefig(out_dir / "model_relevance.png", dpi=110)
    return "model_relevance.png"


# -- campaign file and versions -------------------------------------------------------------


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str]:
    """Installed version of each distribution (``importlib.metadata``), ``not installed`` when absent."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for n in names:
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            out[n] = "not installed"
    return out


def campaign_text(meta: dict) -> tuple[str, str] | None:
    """(title, text) of the campaign: meta ``campaign_spec.yaml`` when the store has it, else the spec
    pieces the runner records (objective, constraints, objectives, oracles) as YAML; None if none."""
    import yaml

    spec = meta.get("campaign_spec")
    if isinstance(spec, dict) and isinstance(spec.get("yaml"), str) and spec["yaml"].strip():
        return "Campaign file (as run)", spec["yaml"]
    pieces = {k: meta[k] for k in ("campaign", "objective", "objectives", "constraints", "oracles") if meta.get(k)}
    if not pieces:
        return None
    return ("Campaign settings recorded in the store (the store predates the full campaign file record)",
            yaml.safe_dump(pieces, sort_keys=False, default_flow_style=None))


# -- benchmark output -----------------------------------------------------------------------


def recall_band(R: np.ndarray, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per time step, a percentile-bootstrap interval of the mean recall over seeds (``R``: seeds x steps).

    Resamples the seeds (``scipy.stats.bootstrap``, vectorised over steps); a resampled mean of
    values in [0, 1] lies in [0, 1], so the band does too. With one seed the band is the curve.
    """
    from scipy.stats import bootstrap

    R = np.asarray(R, dtype=float)
    if R.shape[0] < 2:
        return R[0], R[0]
    m = R.mean(axis=0)
    lo, hi = m.copy(), m.copy()
    varying = R.std(axis=0) > 0  # a constant column has a zero-width band (bootstrap would warn)
    if varying.any():
        res = bootstrap((R[:, varying],), np.mean, axis=0, confidence_level=confidence, n_resamples=n_resamples,
                        method="percentile", rng=np.random.default_rng(seed))
        lo[varying], hi[varying] = res.confidence_interval.low, res.confidence_interval.high
    return lo, hi


def read_benchmark(bench_dir: Path) -> tuple[dict, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``summary.json`` and, per strategy, the ``seeds x budget`` recall and best-so-far matrices from ``curves.csv``."""
    import json

    try:
        summary = json.loads((bench_dir / "summary.json").read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read summary.json: {exc}", file=str(bench_dir / "summary.json")) from None
    curves: dict[str, dict[int, list[float]]] = {}
    bests: dict[str, dict[int, list[float]]] = {}
    path = bench_dir / "curves.csv"
    if not path.is_file():
        raise InputError("benchmark output lacks curves.csv", file=str(path))
    with path.open(newline="") as fh:
        for k, row in enumerate(csv.DictReader(fh), start=2):
            try:
                curves.setdefault(row["strategy"], {}).setdefault(int(row["seed"]), []).append(float(row["recall"]))
                bests.setdefault(row["strategy"], {}).setdefault(int(row["seed"]), []).append(float(row["best_so_far"]))
            except (KeyError, ValueError) as exc:
                raise InputError(f"bad row ({exc})", file=str(path), where=f"row {k}") from None
    def matrix(per_seed):
        n = min(len(v) for v in per_seed.values())
        return np.array([per_seed[s][:n] for s in sorted(per_seed)])

    return summary, {k: matrix(v) for k, v in curves.items()}, {k: matrix(v) for k, v in bests.items()}


def plot_benchmark_best(summary: dict, bests: dict[str, np.ndarray], out_dir: Path) -> str:
    """Mean best-so-far label per strategy against evaluations, with its property, unit and direction."""
    from matplotlib.figure import Figure

    goal = str(summary.get("goal", ""))
    word = "minimize" if goal.startswith("min") else "maximize" if goal.startswith("max") else None
    prop = summary.get("property") or "target"
    fig = Figure(figsize=(7.6, 4.0), dpi=110, layout="constrained")
    ax = fig.subplots()
    for name, B in bests.items():
        ax.plot(np.arange(1, B.shape[1] + 1), B.mean(axis=0), lw=2, label=f"{name} (mean of {B.shape[0]} seeds)")
    ax.set_xlabel("evaluations (1 cost unit each)")
    label = axis_label(prop, word, wrap=True) if word else f"{prop} (goal {goal}: closer to the window is better)"
    ax.set_ylabel("best so far: " + label, fontsize=9)
    ax.set_title(f"{summary.get('dataset', 'benchmark')}: best label value found so far", fontsize=9.5)
    ax.grid(True, alpha=0.25)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=8, frameon=False)
    fig.savefig(out_dir / "benchmark_best.png", dpi=110)
    return "benchmark_best.png"


def plot_benchmark_recall(summary: dict, mats: dict[str, np.ndarray], out_dir: Path) -> str:
    """Mean recall per strategy with a bootstrap 95 % band, the random expectation drawn last (on top)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.6, 4.4), dpi=110, layout="constrained")
    ax = fig.subplots()
    n_pool = summary.get("n_pool")
    t_max = 0
    for name, R in mats.items():
        ts = np.arange(1, R.shape[1] + 1)
        t_max = max(t_max, len(ts))
        lo, hi = recall_band(R)
        line, = ax.plot(ts, R.mean(axis=0), lw=2, label=f"{name} (mean of {R.shape[0]} seeds)", zorder=3)
        if R.shape[0] > 1:
            ax.fill_between(ts, lo, hi, color=line.get_color(), alpha=0.18, lw=0, zorder=2)
    if n_pool:
        ts = np.arange(0, t_max + 1)
        ax.plot(ts, ts / n_pool, color="k", ls=(0, (4, 2)), lw=1.6, zorder=10,
                label="random search (expected)")
    ax.set_xlabel("evaluations (1 cost unit each)")
    ax.set_ylabel(f"recall of the good set (|G| = {summary.get('n_good', '?')}; higher is better)")
    ax.set_ylim(0, 1)
    ax.set_xlim(0, max(t_max, 1))
    ax.set_title(f"{summary.get('dataset', 'benchmark')}: {summary.get('goal', '')}, N = {n_pool}; "
                 "bands: bootstrap 95 % CI over seeds", fontsize=9.5)
    ax.grid(True, alpha=0.25)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    fig.savefig(out_dir / "benchmark_recall.png", dpi=110)
    return "benchmark_recall.png"
