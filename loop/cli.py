"""The ``matloop`` command line.

Bad input exits with status 2 and a message naming the file and the row or YAML path —
never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

from matloop.core.goals import Constraint
from matloop.core.records import InputError, MatloopError


def _parse_sets(items: list[str] | None) -> dict:
    import yaml

    out = {}
    for item in items or []:
        if "=" not in item:
            raise InputError(f"--set expects KEY=VALUE, got {item!r}", where="--set")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = yaml.safe_load(v)
        except yaml.YAMLError:
            out[k.strip()] = v
    return out


def cmd_validate(args) -> int:
    """``matloop validate``: load and check a campaign file (with ``--set`` overrides) and print a summary; returns 0."""
    from .spec import load_campaign

    spec = load_campaign(args.file, _parse_sets(args.set))
    print(f"{args.file}: OK — campaign {spec.name!r}, {len(spec.oracles)} oracle(s), {len(spec.sources)} source(s)")
    return 0


def cmd_run(args) -> int:
    """``matloop run``: run or resume a campaign until it stops; ``--json`` prints the final summary. Returns 0."""
    from rich.console import Console

    from .campaign import Campaign
    from .spec import load_campaign

    spec = load_campaign(args.file, _parse_sets(args.set))
    summary = Campaign(spec, store_path=args.store, console=Console(), quiet=args.quiet).run()
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    return 0


def _open_store(path: str):
    from .store import Store

    p = Path(path)
    if not p.exists():
        raise InputError("store not found", file=str(p))
    return Store(p)


def constraint_table(store, constraints: list, cands: dict):
    """A rich table: per constraint and arm, how many evaluated candidates meet it, fail it, or lack the value."""
    from rich.table import Table

    t = Table(title="constraints (feasibility of evaluated candidates)")
    for col in ("constraint", "arm", "evaluated", "met", "removed", "no value"):
        t.add_column(col)
    for c in constraints:
        bounds = " and ".join(x for x in (f">= {c.min:g}" if c.min is not None else "",
                                          f"<= {c.max:g}" if c.max is not None else "") if x)
        label = f"{c.property} {bounds}" + (f" ({c.oracle})" if c.oracle else "")
        for arm in ("agent", "random"):
            per: dict[str, list] = {}
            for o in store.observations(arm=arm):
                if o.ok:
                    per.setdefault(o.candidate_id, []).append(o)
            if not per:
                continue
            has = {cid for cid, obs in per.items()
                   if any((c.oracle is None or o.oracle == c.oracle) and o.value(c.property) is not None for o in obs)}
            met = sum(1 for cid in has if c.met_by(per[cid]))
            t.add_row(label, arm, str(len(per)), str(met), str(len(has) - met), str(len(per) - len(has)))
    return t


def cmd_status(args) -> int:
    """``matloop status``: print spend per oracle, observed ranges, failures, the Pareto front and the last plans; returns 0."""
    from rich.console import Console
    from rich.table import Table

    store = _open_store(args.store)
    console = Console()
    name = store.get_meta("campaign")
    its = store.iterations("agent")
    console.print(f"campaign [bold]{name}[/bold] — store {args.store}")
    console.print(f"candidates: {store.n_candidates()}   iterations: {len(its)}   open requests: {len(store.open_requests())}")
    t = Table(title="spend per oracle (funnel)")
    for col in ("oracle", "fidelity", "evaluations", "failed", "cost", "wall time (s)"):
        t.add_column(col)
    fid = {}
    for o in store.observations():
        fid[o.oracle] = o.fidelity
    for arm in ("agent", "random"):
        for oracle, v in sorted(store.spend(arm).items(), key=lambda kv: fid.get(kv[0], 0)):
            label = oracle if arm == "agent" else f"{oracle} (random baseline)"
            t.add_row(label, str(fid.get(oracle, "")), str(v["evaluations"]), str(v["failed"]), f"{v['cost']:g}", f"{v['wall_time_s']:.1f}")
    console.print(t)
    # best so far per property of each oracle
    obs = store.observations(arm="agent")
    cands = {c.id: c for c in store.candidates()}
    best: dict = {}
    for o in obs:
        if not o.ok:
            continue
        for prop, v in o.properties.items():
            key = (o.oracle, prop)
            best.setdefault(key, []).append((v, cands[o.candidate_id].formula if o.candidate_id in cands else o.candidate_id))
    if best:
        tb = Table(title="observed range per property")
        for col in ("oracle", "property", "n", "min (formula)", "max (formula)"):
            tb.add_column(col)
        for (oracle, prop), vals in sorted(best.items()):
            lo, hi = min(vals), max(vals)
            tb.add_row(oracle, prop, str(len(vals)), f"{lo[0]:.4g} ({lo[1]})", f"{hi[0]:.4g} ({hi[1]})")
        console.print(tb)
    constraints = [Constraint(**c) for c in store.get_meta("constraints") or []]
    if constraints:
        console.print(constraint_table(store, constraints, cands))
    fails = [o for o in obs if not o.ok]
    if fails:
        console.print(f"[bold]failures[/bold] ({len(fails)}):")
        for o in fails[-10:]:
            f = cands.get(o.candidate_id)
            console.print(f"  {o.oracle} {f.formula if f else o.candidate_id}: {o.reason}")
    front = store.get_meta("pareto_front")
    if front:
        hv = front.get("hypervolume")
        labels = [o["label"] for o in front["objectives"]]
        tp = Table(title=f"Pareto front: {len(front['front'])} of {front['n_labelled']} labelled feasible candidates, "
                         f"hypervolume {_fmt(hv)} (score space)")
        for col in ("candidate", "formula", *[f"{o['label']} ({o['goal']})" for o in front["objectives"]]):
            tp.add_column(col)
        for m in front["front"]:
            tp.add_row(m["candidate"], m["formula"], *[_fmt(m["values"].get(lab)) for lab in labels])
        console.print(tp)
    n_show = args.last
    if its and n_show:
        console.print(f"[bold]last {min(n_show, len(its))} plan(s)[/bold]:")
        for it in its[-n_show:]:
            r = it["rationale"]
            console.print(f"  iteration {it['idx']} ({it['status']}): pool {r.get('pool_size')}, expected cost {r.get('expected_cost')}")
            if r.get("pareto"):
                p = r["pareto"]
                console.print(f"    Pareto front when planned: {len(p['front'])} of {p['n_labelled']}, hypervolume "
                              f"{_fmt(p.get('hypervolume'))}: {', '.join(m['formula'] for m in p['front'][:10])}")
            if r.get("fidelity", {}).get("strategy") == "multi_fidelity":
                console.print(f"    multi-fidelity: {r['fidelity'].get('selection')}; costs {r['fidelity'].get('costs')}")
            for tier, info in (r.get("tiers") or {}).items():
                if "chosen" in info:
                    sel = info.get("selection", {})
                    why = sel.get("reason") or f"{sel.get('acquisition')} on {sel.get('surrogate')}, shortlist {sel.get('shortlist_size')}"
                    console.print(f"    {tier}: {why}")
                    if info.get("skill"):
                        console.print(f"      model skill: {info['skill'].get('decision')}")
                    for c in info["chosen"][:10]:
                        console.print(
                            f"      {c['formula']:<16} acq={_fmt(c.get('acquisition'))} "
                            f"mean={_fmt(c.get('predicted_means', c.get('predicted_mean')))} "
                            f"std={_fmt(c.get('predicted_stds', c.get('predicted_std')))}"
                            + (f" cost={c['expected_cost']:g}" if c.get("expected_cost") is not None else "")
                        )
                        if c.get("rationale"):
                            console.print(f"        {c['rationale']}")
                elif "promoted" in info:
                    console.print(f"    {tier}: promoted {len(info['promoted'])} of {info['passed']} passing {info['rule']}")
                else:
                    console.print(f"    {tier}: {info}")
    store.close()
    return 0


def _fmt(x) -> str:
    if isinstance(x, dict):
        return "(" + ", ".join(f"{k}={_fmt(v)}" for k, v in x.items()) + ")"
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.3g}"


def cmd_export(args) -> int:
    """``matloop export``: write one row per observation as CSV or JSON to ``--out`` or stdout; returns 0."""
    store = _open_store(args.store)
    rows = store.export_rows()
    front = store.get_meta("pareto_front")
    store.close()
    if front:
        # several objectives: mark the observations that place a candidate on the final Pareto front
        on_front = {m["candidate"] for m in front["front"]}
        oracles = {o["oracle"] for o in front["objectives"]}
        for r in rows:
            r["pareto"] = int(r["candidate_id"] in on_front and r["oracle"] in oracles and r["status"] == "success"
                               and r.get("arm", "agent") == "agent")
    out = open(args.out, "w") if args.out else sys.stdout
    try:
        if args.format == "json":
            json.dump(rows, out, indent=1)
            out.write("\n")
        else:
            import csv

            props = sorted({p for r in rows for p in r["properties"]})
            fields = ["seq", "iteration", "arm", "candidate_id", "formula", "source", "oracle", "oracle_version", "fidelity",
                      "status", "value", "cost", "wall_time_s", "reason"] + (["pareto"] if front else []) + props
            w = csv.DictWriter(out, fieldnames=fields, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                flat = dict(r)
                vals = list(r["properties"].values())
                flat["value"] = vals[0] if len(vals) == 1 else ""
                flat.update(r["properties"])
                w.writerow(flat)
    finally:
        if args.out:
            out.close()
    return 0


def cmd_ask(args) -> int:
    """The open requests (the next batch), printed or exported for a person or a lab."""
    import csv

    store = _open_store(args.store)
    oracles = store.get_meta("oracles", {}) or {}
    rows = []
    for rid, it, arm, cid, oracle in store.open_requests():
        if args.oracle and oracle != args.oracle:
            continue
        c = store.candidate(cid)
        row = {"request_id": rid, "iteration": it, "oracle": oracle, "candidate_id": cid, "formula": c.formula,
               "composition": c.composition, "structure_file": ""}
        if args.structures and c.structure is not None:
            d = Path(args.structures)
            d.mkdir(parents=True, exist_ok=True)
            f = d / f"{cid}.cif"
            c.pmg_structure().to(filename=str(f))
            row["structure_file"] = str(f)
        for prop in (oracles.get(oracle, {}).get("properties") or []):
            row[prop] = ""
        rows.append(row)
    store.close()
    if not rows:
        print("no open requests: run the campaign to plan the next batch")
        return 0
    fields = list(dict.fromkeys(k for r in rows for k in r))
    if args.out:
        with open(args.out, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
        print(f"wrote {len(rows)} open request(s) to {args.out}: fill in the property columns, then `matloop tell {args.store} {args.out}`")
    else:
        w = csv.DictWriter(sys.stdout, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return 0


def cmd_tell(args) -> int:
    """Record measured results for open requests; every row is checked before anything is stored."""
    import time as _time

    import pandas as pd

    from matloop.core.records import Observation, Status

    path = Path(args.results)
    if not path.exists():
        raise InputError("results file not found", file=str(path))
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise InputError(f"cannot read CSV: {exc}", file=str(path)) from None
    store = _open_store(args.store)
    oracles = store.get_meta("oracles", {}) or {}
    open_reqs = {r[0]: r for r in store.open_requests()}
    by_cand = {(r[3], r[4]): r[0] for r in open_reqs.values()}
    if "request_id" not in df.columns and "candidate_id" not in df.columns:
        raise InputError("needs a request_id (or candidate_id + oracle) column", file=str(path))
    observations, problems, seen = [], [], set()
    for i, row in df.iterrows():
        where = f"row {i + 2}"
        rid = row.get("request_id", "").strip()
        if not rid and row.get("candidate_id", "").strip():
            rid = by_cand.get((row["candidate_id"].strip(), row.get("oracle", "").strip()), "")
        if rid not in open_reqs:
            problems.append(f"  {where}: request {rid or '(none)'!r} is not an open request of this store")
            continue
        if rid in seen:
            problems.append(f"  {where}: request {rid!r} appears twice")
            continue
        seen.add(rid)
        _, it, arm, cid, oracle = open_reqs[rid]
        meta = oracles.get(oracle, {})
        status = (row.get("status", "") or "success").strip().lower()
        if status not in ("success", "failed"):
            problems.append(f"  {where} column 'status': must be success or failed, not {status!r}")
            continue
        props, unc = {}, {}
        if status == "success":
            for prop in meta.get("properties") or []:
                raw = str(row.get(prop, "")).strip()
                if raw == "":
                    problems.append(f"  {where} column {prop!r}: missing value")
                    continue
                try:
                    v = float(raw)
                except ValueError:
                    problems.append(f"  {where} column {prop!r}: not a number: {raw!r}")
                    continue
                if not math.isfinite(v):
                    problems.append(f"  {where} column {prop!r}: {raw} is not a finite value")
                    continue
                props[prop] = v
                raw_u = str(row.get(f"uncertainty_{prop}", "")).strip()
                if raw_u:
                    try:
                        unc[prop] = float(raw_u)
                    except ValueError:
                        problems.append(f"  {where} column 'uncertainty_{prop}': not a number: {raw_u!r}")
        cost = meta.get("cost", 0.0)
        if str(row.get("cost", "")).strip():
            try:
                cost = float(row["cost"])
            except ValueError:
                problems.append(f"  {where} column 'cost': not a number: {row['cost']!r}")
        observations.append(Observation(
            request_id=rid, candidate_id=cid, oracle=oracle, oracle_version=meta.get("version", oracle),
            fidelity=int(meta.get("fidelity", 0)), status=Status(status), properties=props, uncertainties=unc,
            extra={"told_from": str(path), "row": int(i)}, cost=float(cost), wall_time_s=0.0,
            reason=(row.get("reason", "") or "reported failed") if status == "failed" else None,
        ))
    if problems:
        store.close()
        raise InputError(f"{len(problems)} problem(s); nothing was recorded:\n" + "\n".join(problems), file=str(path))
    with store.transaction():
        n = sum(store.add_observation(o) for o in observations)
    store.close()
    print(f"recorded {n} result(s) from {path} at {_time.strftime('%Y-%m-%d %H:%M:%S')}; run the campaign to plan the next batch")
    return 0


def cmd_evaluate(args) -> int:
    """``matloop evaluate``: run one oracle on one structure file; the observation as JSON on stdout, a summary on stderr.

    Returns:
        Exit status: 0 if the evaluation succeeded, 1 if it failed.

    Raises:
        InputError: unknown oracle kind, missing or unreadable structure file, or bad ``--set`` settings.
    """
    from pydantic import ValidationError

    from matloop.core.records import Candidate, Request
    from matloop.core.registry import RegistryError, oracle_class

    try:
        cls = oracle_class(args.oracle)
    except RegistryError as exc:
        raise InputError(str(exc), where="--oracle") from None
    path = Path(args.structure)
    if not path.exists():
        raise InputError("structure file not found", file=str(path))
    from pymatgen.core import Structure

    try:
        if path.suffix == ".json":
            structure = Structure.from_dict(json.loads(path.read_text()))
        else:
            structure = Structure.from_file(str(path))
    except Exception as exc:
        raise InputError(f"cannot read structure: {exc}", file=str(path)) from None
    try:
        oracle = cls(name=args.oracle, settings=_parse_sets(args.set), timeout_s=args.timeout,
                     site={"base_dir": Path.cwd(), **_parse_sets(args.site)})
    except ValidationError as exc:
        msgs = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InputError(f"bad --set/--site settings for {args.oracle}: {msgs}", where="--set/--site") from None
    cand = Candidate.from_structure(structure, source="cli", provenance={"file": str(path)})
    if hasattr(oracle, "setup"):
        oracle.setup([cand])
    obs = oracle.run(Request(Request.make_id(cand.id, args.oracle, 0), cand, args.oracle, 0))
    out = obs.to_json()
    out["formula"] = cand.formula
    out["properties_units"] = {k: unit_of(k) for k in obs.properties}
    out["oracle_description"] = oracle.describe()
    if not args.full:
        out.get("extra", {}).pop("relaxed_structure", None)
    print(json.dumps(out, indent=2, default=str))
    print(evaluation_summary(obs, cand.formula), file=sys.stderr)
    return 0 if obs.ok else 1


#: readable labels of the properties ``evaluation_summary`` knows, in the order it prints them
_LABELS = {
    "energy_ev_per_atom": "energy",
    "formation_energy_ev_per_atom": "formation energy (MP2020 scale)",
    "e_above_hull_ev_per_atom": "energy above the hull",
    "li_window_min_v": "Li window, lower (vs Li/Li+)",
    "li_window_max_v": "Li window, upper (vs Li/Li+)",
    "gap_ev": "band gap",
    "sq_efficiency_percent": "Shockley-Queisser limit",
}


def evaluation_summary(obs, formula: str) -> str:
    """A readable account of one observation: properties with units, decomposition, reactions."""
    head = f"{formula}: {obs.status.value} ({obs.oracle}, {obs.oracle_version}, {obs.wall_time_s:.1f} s)"
    if not obs.ok:
        return f"{head}\n  reason: {obs.reason}"
    extra = obs.extra or {}
    names = [p for p in _LABELS if p in obs.properties] + [p for p in obs.properties if p not in _LABELS]
    rows = []
    for p in names:
        label = _LABELS.get(p) or (f"reaction with {p.rsplit('_', 1)[1]}" if p.startswith("interface_reaction_")
                                   else p)
        value, unit = obs.properties[p], unit_of(p)
        text = f"{value:.4g}" if unit == "dimensionless" else f"{value:.1f} %" if unit == "%" else f"{value:.3f} {unit}"
        if p == "li_window_max_v" and extra.get("li_window_open_above"):
            text += " (open: never gives up Li)"
        if p.startswith("interface_reaction_"):
            r = (extra.get("interface_reactions") or {}).get(p.rsplit("_", 1)[1], {})
            text += f"  {r['reaction']}" if value < 0 and r.get("reaction") else "  (no reaction)"
        rows.append((label, text))
    decomposition = extra.get("decomposition")
    if decomposition:
        rows.append(("decomposes into", " + ".join(f"{d['fraction']:.3g} {d['formula']}" for d in decomposition)
                     + " (atom fractions)"))
    if extra.get("hull_reference"):
        rows.append(("reference hull", str(extra["hull_reference"])))
    if extra.get("formation_energy_error"):
        rows.append(("no formation energy", str(extra["formation_energy_error"])))
    width = max(len(label) for label, _ in rows) if rows else 0
    return "\n".join([head] + [f"  {label:<{width}}  {text}" for label, text in rows])


_UNITS = (
    ("_percent", "%"),
    ("_ev_per_atom", "eV/atom"),
    ("_s_per_cm_300k", "S/cm (300 K)"),
    ("_s_per_cm", "S/cm"),
    ("_cm2_per_s_300k", "cm^2/s (300 K)"),
    ("_cm2_per_s", "cm^2/s"),
    ("_ev", "eV"),
    ("_v", "V"),
    ("_k", "K"),
    ("_a", "angstrom"),
    ("_g_per_cm3", "g/cm^3"),
)


def unit_of(prop: str) -> str:
    """The unit spelled at the end of a property name (``gap_ev`` -> ``eV``), before any ``_<Formula>`` qualifier."""
    prop = re.sub(r"_[A-Z][A-Za-z0-9]*$", "", prop)  # interface_reaction_ev_per_atom_LiCoO2
    for suffix, unit in _UNITS:
        if prop.endswith(suffix):
            return unit
    return "dimensionless"


def cmd_benchmark(args) -> int:
    """``matloop benchmark``: replay a labelled dataset with its labels hidden and print the summary; returns 0.

    Uses the campaign FILE if given (multi-fidelity campaigns get the multi-fidelity benchmark),
    else ``--dataset`` with its columns and ``--goal`` (two-fidelity with ``--cheap-column``).

    Raises:
        InputError: FILE has several objectives, or without FILE a required option is missing.
    """
    from matloop.loop import benchmark as bm

    if args.file:
        from .spec import load_campaign

        spec = load_campaign(args.file)
        if spec.objectives:
            raise InputError("matloop benchmark replays single-objective campaigns; this one has objectives:",
                             file=args.file, where="objectives")
        if spec.agent.fidelity.strategy == "multi_fidelity":
            from matloop.loop import mf_benchmark as mf

            summary = mf.mf_benchmark_from_campaign(args.file, out_dir=args.out, seeds=args.seeds,
                                                    strategies=args.strategies, budget=args.budget, init=args.init)
            mf.print_mf_summary(summary)
            return 0
        summary = bm.benchmark_from_campaign(args.file, out_dir=args.out, seeds=args.seeds, strategies=args.strategies,
                                             budget=args.budget, batch_size=args.batch_size, init=args.init,
                                             top_fraction=args.top_fraction)
    else:
        missing = [n for n, v in (("--dataset", args.dataset), ("--composition-column", args.composition_column),
                                  ("--target-column", args.target_column), ("--goal", args.goal)) if not v]
        if missing:
            raise InputError(f"without a campaign FILE, these are required: {', '.join(missing)}", where="benchmark")
        if args.cheap_column:
            return _mf_benchmark_from_csv(args)
        summary = bm.benchmark_from_csv(
            args.dataset, args.composition_column, args.target_column, args.goal,
            top_fraction=args.top_fraction or 0.01, budget=args.budget or 200, batch_size=args.batch_size or 10,
            init=args.init if args.init is not None else 10, seeds=args.seeds or 5,
            strategies=args.strategies or "matloop,random,rf_ucb,greedy_rf", out_dir=args.out,
        )
    bm.print_summary(summary)
    return 0


def _mf_benchmark_from_csv(args) -> int:
    """``--cheap-column``: a two-fidelity benchmark (cheap column vs target column) by cost."""
    import pandas as pd

    from matloop.loop import mf_benchmark as mf

    from matloop.loop.benchmark import read_table

    path = Path(args.dataset)
    df = read_table(path, (args.composition_column, args.cheap_column, args.target_column))
    try:
        costs = [float(x) for x in (args.costs or "1,10").split(",")]
        if len(costs) != 2 or min(costs) <= 0:
            raise ValueError
    except ValueError:
        raise InputError(f"--costs must be two positive numbers CHEAP,TOP, got {args.costs!r}", where="--costs") from None
    pool = mf.two_fidelity_pool(
        df[args.composition_column].astype(str).tolist(),
        pd.to_numeric(df[args.cheap_column], errors="coerce").to_numpy(float),
        pd.to_numeric(df[args.target_column], errors="coerce").to_numpy(float),
        args.goal, file=str(path), top_fraction=args.top_fraction or 0.01,
    )
    strategies = [s for s in (args.strategies or "single_fidelity,funnel,multi_fidelity").split(",") if s]
    summary = mf.run_mf_benchmark(
        pool, costs={mf.CHEAP: costs[0], mf.TOP: costs[1]}, budget=float(args.budget or 300 * costs[1]),
        round_cost=10 * costs[1], n_init=args.init if args.init is not None else 10, seeds=args.seeds or 5,
        agents=strategies, out_dir=args.out,
    )
    mf.print_mf_summary(summary)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``matloop`` argument parser; each subcommand sets ``func`` to its ``cmd_*`` handler."""
    p = argparse.ArgumentParser(prog="matloop", description="Closed-loop discovery of inorganic materials")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="run or resume a campaign")
    r.add_argument("file")
    r.add_argument("--store", help="SQLite store (default: the campaign's store key)")
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a YAML key (dotted path)")
    r.add_argument("--quiet", action="store_true")
    r.add_argument("--json", action="store_true", help="print the final summary as JSON")
    r.set_defaults(func=cmd_run)

    v = sub.add_parser("validate", help="check a campaign file without running anything")
    v.add_argument("file")
    v.add_argument("--set", action="append", metavar="KEY=VALUE")
    v.set_defaults(func=cmd_validate)

    s = sub.add_parser("status", help="iterations, spend per oracle, best so far, failures, last plans")
    s.add_argument("store")
    s.add_argument("--last", type=int, default=1, help="show the rationale of the last N iterations")
    s.set_defaults(func=cmd_status)

    e = sub.add_parser("export", help="one record per observation")
    e.add_argument("store")
    e.add_argument("--format", choices=("csv", "json"), default="csv")
    e.add_argument("--out")
    e.set_defaults(func=cmd_export)

    a = sub.add_parser("ask", help="print or export the open requests (the next batch) for a person or a lab")
    a.add_argument("store")
    a.add_argument("--out", help="CSV to fill in and give back to `matloop tell`")
    a.add_argument("--structures", help="folder to write each candidate's CIF into")
    a.add_argument("--oracle", help="only this oracle's requests")
    a.set_defaults(func=cmd_ask)

    t = sub.add_parser("tell", help="record measured results for open requests (checked against them)")
    t.add_argument("store")
    t.add_argument("results", help="CSV: request_id, one column per property, optional status/reason/cost/uncertainty_<prop>")
    t.set_defaults(func=cmd_tell)

    ev = sub.add_parser("evaluate", help="evaluate one structure file with one oracle kind")
    ev.add_argument("structure", help="CIF, POSCAR or pymatgen JSON")
    ev.add_argument("--oracle", required=True, help="oracle kind: chgnet, gpaw-pbe, gpaw-hse06, mlip-md, ...")
    ev.add_argument("--set", action="append", metavar="KEY=VALUE", help="oracle setting (the science)")
    ev.add_argument("--site", action="append", metavar="KEY=VALUE",
                    help="site setting: device (auto|cpu|cuda), torch_threads, cache_dir, log_dir")
    ev.add_argument("--timeout", type=float, default=None)
    ev.add_argument("--full", action="store_true", help="include the relaxed structure")
    ev.set_defaults(func=cmd_evaluate)

    from . import report as _report

    rp = sub.add_parser("report", help="HTML report: curves, funnel, parity, sources, top candidates with CIFs")
    _report.add_arguments(rp)
    rp.set_defaults(func=_report.cmd_report)

    b = sub.add_parser("benchmark", help="retrospective benchmark: replay a labelled dataset with labels hidden")
    b.add_argument("file", nargs="?", help="benchmark campaign YAML (lookup oracle)")
    b.add_argument("--dataset")
    b.add_argument("--composition-column")
    b.add_argument("--target-column")
    b.add_argument("--goal", help="max | min | window:LO:HI")
    b.add_argument("--top-fraction", type=float)
    b.add_argument("--budget", type=int)
    b.add_argument("--batch-size", type=int)
    b.add_argument("--init", type=int)
    b.add_argument("--seeds", type=int)
    b.add_argument("--strategies")
    b.add_argument("--cheap-column", help="two-fidelity form: the cheap fidelity's column (target = top fidelity)")
    b.add_argument("--costs", help="two-fidelity form: CHEAP,TOP cost per evaluation (default 1,10)")
    b.add_argument("--out", required=True)
    b.set_defaults(func=cmd_benchmark)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the ``matloop`` CLI on ``argv`` (default ``sys.argv[1:]``); returns the exit status (2 on a matloop error, 130 on Ctrl-C)."""
    import warnings

    warnings.filterwarnings("ignore")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except MatloopError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the store keeps everything recorded so far — run again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
