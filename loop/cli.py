"""The ``matloop`` command line.

Bad input exits with status 2 and a message naming the file and the row or YAML path —
never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from matloop.core.goals import Constraint
from matloop.core.records import CampaignPaused, InputError, MatloopError
from matloop.core.units import unit_of


def _parse_sets(items: list[str] | None) -> dict:
    import yaml

    out = {}
    for item in items or []:
        if "=" not in item:
            raise InputError(f"expects KEY=VALUE, got {item!r}", where="--set")
        k, v = item.split("=", 1)
        if not k.strip():
            raise InputError(f"expects KEY=VALUE, got {item!r} (no key)", where="--set")
        try:
            out[k.strip()] = yaml.safe_load(v)
        except yaml.YAMLError:
            out[k.strip()] = v
    return out


def cmd_validate(args) -> int:
    """``matloop validate``: load and check a campaign file (with ``--set`` overrides) and print a summary; returns 0."""
    from .spec import check_inputs, load_campaign

    spec = load_campaign(args.file, _parse_sets(args.set))
    check_inputs(spec, args.file)
    print(f"{args.file}: OK — campaign {spec.name!r}, {len(spec.oracles)} oracle(s), {len(spec.sources)} source(s)")
    return 0


def cmd_run(args) -> int:
    """``matloop run``: run or resume a campaign until it stops; ``--json`` prints the final summary.

    Returns 0; 3 when a lab refused the credentials (paused); 4 when the run stopped after
    ``budget.max_consecutive_failures`` failures in a row. A store in use or damaged exits with 2.
    Before anything is written: the campaign's files and columns are checked (``check_inputs``),
    and a resume is refused if the campaign changed since the store was started (``check_resume``).
    """
    from rich.console import Console

    from .campaign import Campaign
    from .spec import check_inputs, check_resume, load_campaign
    from .store import stored_campaign_spec

    spec = load_campaign(args.file, _parse_sets(args.set))
    check_inputs(spec, args.file, args.store, parse_pools=False)  # the pool's rows are read before any is written
    store_path = Path(args.store).expanduser() if args.store else spec.resolve(spec.store)
    if store_path.is_file():
        accepted = check_resume(stored_campaign_spec(store_path), spec, args.allow_changes, store_path)
        if accepted and not args.quiet:
            print("resuming with these changes to the campaign (--allow-changes):\n" + "\n".join(accepted))
    _echo_log(getattr(args, "log_level", "error"))
    try:
        summary = Campaign(spec, store_path=args.store, console=Console(), quiet=args.quiet).run()
    except CampaignPaused as exc:  # a lab refused the token: nothing failed, run again once it is fixed
        print(f"paused: {exc}", file=sys.stderr)
        return exc.exit_status
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    return summary.get("exit_status", 0)  # 4: stopped after too many consecutive failures


def _echo_log(level: str) -> None:
    """Echo the ``matloop`` log at ``level`` and above to stderr (the store's .log file keeps info and above)."""
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(getattr(logging, level.upper()))
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logging.getLogger("matloop").addHandler(handler)


def _open_store(path: str):
    """Open an existing store for a command; a missing, damaged or foreign file is an ``InputError`` (exit 2).

    A damaged store's error says which tables can still be read and how to salvage them.
    """
    from .store import Store

    p = Path(path)
    if not p.exists():
        raise InputError("store not found", file=str(p))
    if p.is_dir():
        raise InputError("is a folder, not a store file", file=str(p))
    return Store(p, create=False)


def constraint_table(store, constraints: list, cands: dict):
    """A rich table: per constraint and arm, how many evaluated candidates meet it, fail it, or lack the value."""
    from rich.table import Table

    t = Table(title="constraints (feasibility of evaluated candidates)")
    for col in ("constraint", "arm", "evaluated", "met", "removed", "no value"):
        t.add_column(col)
    from .report_panels import constraint_rows

    for r in constraint_rows({arm: store.observations(arm=arm) for arm in ("agent", "random")}, constraints):
        t.add_row(*(str(r[k]) for k in ("constraint", "arm", "evaluated", "met", "removed", "no_value")))
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
    """``matloop export``: one row per observation as CSV or JSON to ``--out`` or stdout (``--structures``: relaxed structures); returns 0."""
    from .export import observation_table, write

    store = _open_store(args.store)
    try:
        rows = observation_table(store, structures=args.structures, structure_format=args.structure_format)
    finally:
        store.close()
    if args.out:
        with open(args.out, "w", newline="") as out:
            write(rows, out, args.format)
    else:
        write(rows, sys.stdout, args.format)
    return 0


def cmd_ask(args) -> int:
    """The open requests (the next batch), printed or exported for a person or a lab."""
    from .api import requests_frame

    store = _open_store(args.store)
    try:
        df = requests_frame(store, oracle=args.oracle, structures=args.structures)
    finally:
        store.close()
    if df.empty:
        print("no open requests: run the campaign to plan the next batch")
        return 0
    if args.out:
        df.to_csv(args.out, index=False)
        print(f"wrote {len(df)} open request(s) to {args.out}: fill in the property columns, then "
              f"`matloop tell {args.store} {args.out}`")
    else:
        df.to_csv(sys.stdout, index=False)
    return 0


def cmd_tell(args) -> int:
    """Record measured results for open requests; every row is checked before anything is stored."""
    import time as _time

    import pandas as pd

    from .api import tell_results

    path = Path(args.results)
    if not path.exists():
        raise InputError("results file not found", file=str(path))
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise InputError(f"cannot read CSV: {exc}", file=str(path)) from None
    store = _open_store(args.store)
    try:
        n, already = tell_results(store, df, file=str(path), row_label=lambda i: f"row {i + 2}")
    finally:
        store.close()
    if n == 0 and already:
        print(f"all {already} result(s) in {path} are already recorded; nothing new")
        return 0
    skipped = f" ({already} already recorded, skipped)" if already else ""
    print(f"recorded {n} result(s) from {path}{skipped} at {_time.strftime('%Y-%m-%d %H:%M:%S')}; "
          "run the campaign to plan the next batch")
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
    df = read_table(path, (args.composition_column, args.cheap_column, args.target_column),
                    text_columns=(args.composition_column,))
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


def cmd_describe(args) -> int:
    """``matloop describe [KIND]``: the settings of one kind (or every kind's name); returns 0.

    Raises:
        InputError: no oracle, generator, surrogate or source is called KIND.
    """
    from . import reference

    if not args.kind:
        for group, kinds in reference.kinds().items():
            print(f"{group}s: {', '.join(kinds)}")
        print("`matloop describe KIND` prints one kind's settings")
        return 0
    reference.describe(args.kind)
    return 0


def cmd_schema(args) -> int:
    """``matloop schema``: print (or write to ``--out``) the campaign file's JSON Schema; returns 0."""
    from .reference import campaign_schema

    text = json.dumps(campaign_schema(), indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
        print(f"wrote the campaign JSON Schema to {args.out}", file=sys.stderr)
    else:
        print(text)
    return 0


def _number(kind, *, low=None, low_ok=True, high=None, what=""):
    """An argparse ``type=``: a finite ``kind`` (int or float) in range; argparse turns the ValueError into exit 2."""

    def parse(text: str):
        try:
            x = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not math.isfinite(x) or (low is not None and (x < low or (x == low and not low_ok))) \
                or (high is not None and x > high):
            raise argparse.ArgumentTypeError(f"{text!r}: must be {what}")
        return x

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


_positive_int = _number(int, low=1, what="an integer >= 1")
_count = _number(int, low=0, what="an integer >= 0")
_seconds = _number(float, low=0, low_ok=False, what="a finite number of seconds > 0")
_fraction = _number(float, low=0, low_ok=False, high=1, what="a fraction in (0, 1]")


def _new_file(text: str) -> str:
    """An argparse ``type=`` for an output file: its folder must exist and it must not be a folder."""
    p = Path(text).expanduser()
    if p.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file name")
    if not p.parent.is_dir():
        raise argparse.ArgumentTypeError(f"folder {p.parent} does not exist")
    return text


def _strategy_names() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(single-fidelity strategies, multi-fidelity agents) from the benchmarks' own registries (imported on demand)."""
    from matloop.loop.benchmark import STRATEGIES
    from matloop.loop.mf_benchmark import AGENTS

    return STRATEGIES, AGENTS


def _strategies(text: str) -> str:
    """An argparse ``type=`` for ``--strategies``: comma-separated names the benchmarks know."""
    single, multi = _strategy_names()
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in single + multi]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown strategies {bad or [text]}; known: {', '.join(single)} "
                                         f"(single fidelity), {', '.join(multi)} (two fidelities)")
    return ",".join(names)


class _StrategyHelp(argparse.HelpFormatter):
    """Fills ``{strategies}`` in help texts with the registered names, importing the benchmarks only when help is shown."""

    def _get_help_string(self, action):
        text = super()._get_help_string(action)
        if "{strategies}" in text:
            single, multi = _strategy_names()
            text = text.replace("{strategies}", f"{', '.join(single)} (all by default); two-fidelity form: "
                                                f"{', '.join(multi)} (single_fidelity,funnel,multi_fidelity by default)")
        return text


def build_parser() -> argparse.ArgumentParser:
    """The ``matloop`` argument parser; each subcommand sets ``func`` to its ``cmd_*`` handler.

    Every option's help states its default; numeric options are checked by ``type=`` (exit 2 when out of range).
    """
    p = argparse.ArgumentParser(prog="matloop", description="Closed-loop discovery of inorganic materials")
    from matloop import __version__

    p.add_argument("--version", action="version", version=f"matloop {__version__}",
                   help="print the installed version and exit")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="run or resume a campaign")
    r.add_argument("file", help="campaign YAML file")
    r.add_argument("--store", help="SQLite store (default: the campaign's store key)")
    r.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a YAML key (dotted path, list items by index: oracles.0.cost=2); repeatable "
                        "(default: none)")
    r.add_argument("--allow-changes", action="store_true",
                   help="resume a store although budget, executor or stop rules changed since it was started "
                        "(default: off, any change is refused; other changes are refused even with it)")
    r.add_argument("--quiet", action="store_true", help="no progress lines; they still go to STORE.log (default: off)")
    r.add_argument("--json", action="store_true", help="print the final summary as JSON (default: off)")
    r.set_defaults(func=cmd_run)

    v = sub.add_parser("validate", help="check a campaign file, its files, tables and columns, without running anything")
    v.add_argument("file", help="campaign YAML file")
    v.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a YAML key (dotted path), as for run (default: none)")
    v.set_defaults(func=cmd_validate)

    s = sub.add_parser("status", help="iterations, spend per oracle, best so far, failures, last plans")
    s.add_argument("store", help="the campaign's SQLite store")
    s.add_argument("--last", type=_count, default=1, help="show the rationale of the last N iterations (default: 1)")
    s.set_defaults(func=cmd_status)

    e = sub.add_parser("export", help="one record per observation")
    e.add_argument("store", help="the campaign's SQLite store")
    e.add_argument("--format", choices=("csv", "json"), default="csv", help="output format (default: csv)")
    e.add_argument("--out", type=_new_file, help="output file, in an existing folder (default: stdout)")
    e.add_argument("--structures", metavar="DIR",
                   help="write each relaxed structure into DIR; the relaxed_structure column gives its path "
                   "(default: none written)")
    e.add_argument("--structure-format", choices=("extxyz", "db"), default="extxyz",
                   help="extxyz: one file per observation; db: one ASE database DIR/structures.db (default: %(default)s)")
    e.set_defaults(func=cmd_export)

    a = sub.add_parser("ask", help="print or export the open requests (the next batch) for a person or a lab")
    a.add_argument("store", help="the campaign's SQLite store")
    a.add_argument("--out", type=_new_file,
                   help="CSV to fill in and give back to `matloop tell` (default: print to stdout)")
    a.add_argument("--structures", help="folder to write each candidate's CIF into (default: none written)")
    a.add_argument("--oracle", help="only this oracle's requests (default: every oracle's)")
    a.set_defaults(func=cmd_ask)

    t = sub.add_parser("tell", help="record measured results for open requests (checked against them)")
    t.add_argument("store", help="the campaign's SQLite store")
    t.add_argument("results", help="CSV: request_id, one column per property, optional status/reason/cost/uncertainty_<prop>")
    t.set_defaults(func=cmd_tell)

    ev = sub.add_parser("evaluate", help="evaluate one structure file with one oracle kind")
    ev.add_argument("structure", help="CIF, POSCAR or pymatgen JSON")
    ev.add_argument("--oracle", required=True, help="oracle kind: chgnet, gpaw-pbe, gpaw-hse06, mlip-md, ... (required)")
    ev.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="oracle setting (the science); repeatable (default: the kind's defaults)")
    ev.add_argument("--site", action="append", metavar="KEY=VALUE",
                    help="site setting: device (auto|cpu|cuda), torch_threads, cache_dir, log_dir (default: the kind's)")
    ev.add_argument("--timeout", type=_seconds, default=None,
                    help="wall-clock limit in seconds, > 0 (default: none)")
    ev.add_argument("--full", action="store_true", help="include the relaxed structure (default: off)")
    ev.set_defaults(func=cmd_evaluate)

    from . import report as _report

    rp = sub.add_parser("report", help="HTML report: curves, funnel, parity, sources, top candidates with CIFs")
    _report.add_arguments(rp)
    rp.set_defaults(func=_report.cmd_report)

    b = sub.add_parser("benchmark", help="retrospective benchmark: replay a labelled dataset with labels hidden",
                       formatter_class=_StrategyHelp)
    b.add_argument("file", nargs="?", help="benchmark campaign YAML (lookup oracle) (default: none; then --dataset)")
    b.add_argument("--dataset", help="labelled CSV, without a campaign FILE (default: none)")
    b.add_argument("--composition-column", help="--dataset's composition column (required with --dataset)")
    b.add_argument("--target-column", help="--dataset's label column (required with --dataset)")
    b.add_argument("--goal", help="max | min | window:LO:HI (required with --dataset)")
    b.add_argument("--top-fraction", type=_fraction,
                   help="the good set: this top fraction of the pool, in (0, 1] (default: 0.01)")
    b.add_argument("--budget", type=_positive_int,
                   help="evaluations per run, >= 1 (default: 200, or the campaign's; two-fidelity: cost, 300 x TOP cost)")
    b.add_argument("--batch-size", type=_positive_int, help="picks per batch, >= 1 (default: 10, or the campaign's)")
    b.add_argument("--init", type=_positive_int,
                   help="random initial picks shared by every strategy, >= 1 (default: 10, or the campaign's)")
    b.add_argument("--seeds", type=_positive_int, help="independent runs per strategy, >= 1 (default: 5)")
    b.add_argument("--strategies", type=_strategies,
                   help="comma-separated names (default: the form's set below): {strategies}")
    b.add_argument("--cheap-column",
                   help="two-fidelity form: the cheap fidelity's column (target = top fidelity) (default: none)")
    b.add_argument("--costs", help="two-fidelity form: CHEAP,TOP cost per evaluation (default: 1,10)")
    b.add_argument("--out", required=True, help="folder for summary.json, curves.csv and plots (required)")
    b.set_defaults(func=cmd_benchmark)

    r.add_argument("--log-level", choices=("info", "warning", "error"), default="error",
                   help="echo log messages of this level and above to stderr; warning shows every failed evaluation "
                        "(the console shows each new failure reason once) (default: %(default)s)")
    d = sub.add_parser("describe", help="the settings of an oracle, generator, surrogate or source kind: "
                                        "types, defaults, units")
    d.add_argument("kind", nargs="?", help="e.g. mlip, lookup, manual, mutation, gp, file; omit to list every kind")
    d.set_defaults(func=cmd_describe)
    sc = sub.add_parser("schema", help="JSON Schema of the campaign file (for editors' completion and checks)")
    sc.add_argument("--out", help="write it to this file (default: stdout)")
    sc.set_defaults(func=cmd_schema)
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
