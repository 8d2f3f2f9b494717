"""The Python API: drive a campaign from a notebook with ask / tell.

    from matloop import Campaign

    camp = Campaign.from_yaml("campaign.yaml")
    batch = camp.ask()                      # plans; one row per open request
    batch["target"] = measure(batch)        # fill in the property columns
    camp.tell(batch)                        # checked like `matloop tell`: all rows or none
    camp.add_measurements(prior_df)         # results you already have (prior data)
    df = camp.to_dataframe()                # one row per observation

``matloop ask`` and ``matloop tell`` call the same functions as the methods here
(:func:`requests_frame`, :func:`tell_results`): one code path for the checks.

Prior data (``add_measurements``) is recorded in the store as an iteration of the arm
``prior``: its requests and observations are ordinary records, so the agent plans from
them like from its own labels, never requests those candidates again from that oracle, and
the budget and the agent's best-so-far count only what the campaign evaluated itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from matloop.core.checks import observation_problems
from matloop.core.records import Candidate, InputError, Observation, Request, Status

from .spec import CampaignSpec, check_inputs, check_resume, load_campaign, validate_campaign
from .store import Store, stored_campaign_spec

#: the arm under which ``add_measurements`` records prior data (the agent plans from it)
PRIOR_ARM = "prior"


# -- reading cells ------------------------------------------------------------------------------
def _cell(row, column: str) -> str:
    """A cell as stripped text; missing, None and NaN cells are ``""``."""
    v = row.get(column, "") if hasattr(row, "get") else ""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return str(v).strip()


def _numbers(row, where: str, properties: list[str], problems: list[str], default_cost: float):
    """Parse one result row: (status, properties, uncertainties, cost, reason), appending problems found."""
    status = (_cell(row, "status") or "success").lower()
    if status not in ("success", "failed"):
        problems.append(f"  {where} column 'status': must be success or failed, not {status!r}")
        return None
    props, unc, bad = {}, {}, False
    if status == "success":
        for prop in properties:
            raw = _cell(row, prop)
            if raw == "":
                problems.append(f"  {where} column {prop!r}: missing value")
                bad = True
                continue
            try:
                props[prop] = float(raw)
            except ValueError:
                problems.append(f"  {where} column {prop!r}: not a number: {raw!r}")
                bad = True
                continue
            raw_u = _cell(row, f"uncertainty_{prop}")
            if raw_u:
                try:
                    unc[prop] = float(raw_u)
                except ValueError:
                    problems.append(f"  {where} column 'uncertainty_{prop}': not a number: {raw_u!r}")
                    bad = True
    cost = default_cost
    if _cell(row, "cost"):
        try:
            cost = float(_cell(row, "cost"))
        except ValueError:
            problems.append(f"  {where} column 'cost': not a number: {_cell(row, 'cost')!r}")
            return None
    # the one gate for numbers entering the store, asked per column so that each problem names its cell
    for column, found in ([(p, observation_problems({p: v})) for p, v in props.items()]
                          + [(f"uncertainty_{p}", observation_problems({}, {p: u})) for p, u in unc.items()]
                          + [("cost", observation_problems({}, None, cost))]):
        problems.extend(f"  {where} column {column!r}: {text}" for text in found)
        bad = bad or bool(found)
    if bad:
        return None
    reason = (_cell(row, "reason") or "reported failed") if status == "failed" else None
    return Status(status), props, unc, float(cost), reason


def _same(obs: Observation, status: Status, props: dict) -> bool:
    """Whether a stored observation carries these results (equal status and values)."""
    if obs.status != status or set(obs.properties) != set(props):
        return False
    return all(math.isclose(float(obs.properties[k]), v, rel_tol=1e-9, abs_tol=1e-12) for k, v in props.items())


def _problems_error(problems: list[str], file: str | None, where: str | None) -> InputError:
    return InputError(f"{len(problems)} problem(s); nothing was recorded:\n" + "\n".join(problems), file=file,
                      where=where)


# -- tell ---------------------------------------------------------------------------------------
def tell_results(store: Store, table: pd.DataFrame, *, file: str | None = None,
                 row_label: Callable[[Any], str] = lambda i: f"row {i}", source: str = "") -> tuple[int, int]:
    """Record results for open requests; every row is checked before anything is stored.

    Rows name their request by ``request_id`` (or ``candidate_id`` + ``oracle``) and carry
    one column per property of that oracle, optionally ``uncertainty_<prop>``, ``cost``,
    ``status`` (success or failed) and ``reason``. Numbers pass
    :func:`matloop.core.checks.observation_problems`. A row whose request already holds the
    same result is skipped as already recorded; a different result for it is a problem
    (results are never overwritten).

    Args:
        store: the campaign's store.
        table: the results (cells as text or numbers; empty or NaN cells are missing).
        file: the file the table came from, named in messages and recorded with each result.
        row_label: how a row index is named in messages (the CLI names CSV lines).
        source: recorded in each observation's ``extra['told_from']``.

    Returns:
        (results recorded, rows already recorded).

    Raises:
        InputError: any bad row; it lists every problem and nothing is recorded.
    """
    oracles = store.get_meta("oracles", {}) or {}
    open_reqs = {r[0]: r for r in store.open_requests()}
    by_cand = {(r[3], r[4]): r[0] for r in open_reqs.values()}
    answered = {o.request_id: o for o in store.observations()}
    answered_by_cand = {(o.candidate_id, o.oracle): o.request_id for o in answered.values()}
    if "request_id" not in table.columns and "candidate_id" not in table.columns:
        raise InputError("needs a request_id (or candidate_id + oracle) column", file=file, where=None if file else "tell")
    observations, problems, seen, already = [], [], set(), 0
    for i, row in table.iterrows():
        where = row_label(i)
        rid = _cell(row, "request_id")
        if not rid and _cell(row, "candidate_id"):
            key = (_cell(row, "candidate_id"), _cell(row, "oracle"))
            rid = by_cand.get(key) or answered_by_cand.get(key, "")
        if rid and rid in seen:
            problems.append(f"  {where}: request {rid!r} appears twice")
            continue
        seen.add(rid)
        if rid in answered:
            obs = answered[rid]
            parsed = _numbers(row, where, (oracles.get(obs.oracle, {}).get("properties") or list(obs.properties)),
                              [], obs.cost)
            if parsed is not None and _same(obs, parsed[0], parsed[1]):
                already += 1
            else:
                recorded = ", ".join(f"{k}={v:g}" for k, v in obs.properties.items()) or obs.status.value
                problems.append(f"  {where}: request {rid!r} is already recorded ({recorded}); "
                                f"results are never overwritten")
            continue
        if rid not in open_reqs:
            problems.append(f"  {where}: request {rid or '(none)'!r} is not a request of this store")
            continue
        _, _it, _arm, cid, oracle = open_reqs[rid]
        meta = oracles.get(oracle, {})
        parsed = _numbers(row, where, list(meta.get("properties") or []), problems, meta.get("cost", 0.0))
        if parsed is None:
            continue
        status, props, unc, cost, reason = parsed
        observations.append(Observation(
            request_id=rid, candidate_id=cid, oracle=oracle, oracle_version=meta.get("version", oracle),
            fidelity=int(meta.get("fidelity", 0)), status=status, properties=props, uncertainties=unc,
            extra={"told_from": source or file or "python", "row": str(i)}, cost=cost, wall_time_s=0.0, reason=reason,
        ))
    if problems:
        raise _problems_error(problems, file, None if file else "tell")
    with store.transaction():
        n = sum(store.add_observation(o) for o in observations)
    return n, already


# -- prior data ---------------------------------------------------------------------------------
def _oracle_meta(store: Store, spec: CampaignSpec) -> dict[str, dict]:
    """Kind, version, fidelity, cost and properties per oracle: from the store, else built from the spec."""
    meta = store.get_meta("oracles")
    if meta:
        return meta
    from .tiers import build_oracles, oracle_properties

    return {n: {"kind": o.kind, "version": o.version, "fidelity": o.fidelity, "cost": o.cost,
                "properties": list(oracle_properties(o))} for n, o in build_oracles(spec).items()}


def _prior_candidate(row, where: str, known: dict[str, Candidate], by_formula: dict[str, list[Candidate]],
                     base_dir: Path, problems: list[str]) -> Candidate | None:
    """The candidate a prior-data row names: by ``candidate_id``, a ``structure`` file, or its ``composition``."""
    cid, structure, comp = _cell(row, "candidate_id"), _cell(row, "structure"), _cell(row, "composition")
    if cid:
        if cid not in known:
            problems.append(f"  {where} column 'candidate_id': {cid!r} is not a candidate of this store")
            return None
        return known[cid]
    if structure:
        from pymatgen.core import Structure

        path = Path(structure) if Path(structure).is_absolute() else base_dir / structure
        try:
            return Candidate.from_structure(Structure.from_file(str(path)), source=PRIOR_ARM,
                                            provenance={"file": str(path)})
        except Exception as exc:
            problems.append(f"  {where} column 'structure': cannot read {str(path)!r}: {exc}")
            return None
    if not comp:
        problems.append(f"  {where}: needs a candidate_id, structure or composition")
        return None
    try:
        cand = Candidate.from_composition(comp, source=PRIOR_ARM)
        if not cand.pmg_composition().valid:  # pymatgen reads unknown symbols as dummy species
            raise ValueError("not made of known elements")
    except Exception as exc:
        problems.append(f"  {where} column 'composition': cannot parse {comp!r}: {exc}")
        return None
    if cand.id in known:
        return known[cand.id]
    same = by_formula.get(cand.formula, [])
    if len(same) == 1:  # a structure pool: the one polymorph of this formula
        return same[0]
    if len(same) > 1:
        problems.append(f"  {where} column 'composition': {comp!r} matches {len(same)} structures in the pool "
                        f"({', '.join(c.id for c in same[:4])}); give candidate_id or structure")
        return None
    return cand


def add_prior(store: Store, spec: CampaignSpec, table: pd.DataFrame, *, file: str | None = None,
              row_label: Callable[[Any], str] = lambda i: f"row {i}", source: str = "") -> tuple[int, int]:
    """Record results you already have (prior data) for candidates this campaign never requested.

    Each row names a candidate (``candidate_id``, a ``structure`` file, or a ``composition``;
    one not in the pool is added to it), the ``oracle`` whose measurement it is (default: the
    objective's oracle), and the property values as for ``tell`` (``cost`` defaults to 0).
    All rows are recorded as one iteration of the arm ``prior``.

    Returns:
        (results recorded, rows already recorded as the same prior data).

    Raises:
        InputError: any bad row (unknown oracle, a candidate already requested from that
        oracle, bad numbers, a row twice); nothing is recorded.
    """
    oracles = _oracle_meta(store, spec)
    known = {c.id: c for c in store.candidates()}
    by_formula: dict[str, list[Candidate]] = {}
    for c in known.values():
        if c.structure is not None:
            by_formula.setdefault(c.formula, []).append(c)
    requested = store.requested_pairs()
    prior_obs = {(o.candidate_id, o.oracle): o for o in store.observations(arm=PRIOR_ARM)}
    default_oracle = spec.objective_oracle.name
    problems, rows, seen, already = [], [], set(), 0
    for i, row in table.iterrows():
        where = row_label(i)
        oracle = _cell(row, "oracle") or default_oracle
        if oracle not in oracles:
            problems.append(f"  {where} column 'oracle': {oracle!r} is not an oracle of this campaign "
                            f"({', '.join(oracles)})")
            continue
        cand = _prior_candidate(row, where, known, by_formula, spec.base_dir or Path.cwd(), problems)
        if cand is None:
            continue
        if (cand.id, oracle) in seen:
            problems.append(f"  {where}: {cand.formula} ({cand.id}) on {oracle} appears twice")
            continue
        seen.add((cand.id, oracle))
        meta = oracles[oracle]
        parsed = _numbers(row, where, list(meta.get("properties") or []), problems, 0.0)
        if parsed is None:
            continue
        if (cand.id, oracle) in prior_obs and _same(prior_obs[(cand.id, oracle)], parsed[0], parsed[1]):
            already += 1
            continue
        if (cand.id, oracle) in requested:
            problems.append(f"  {where}: {cand.formula} ({cand.id}) was already requested from {oracle}; "
                            f"give its result with tell")
            continue
        rows.append((cand, oracle, meta, parsed, i))
    if problems:
        raise _problems_error(problems, file, None if file else "add_measurements")
    if not rows:
        return 0, already
    new = [c for c, *_ in rows if c.id not in known]
    if new:
        store.add_candidates(list({c.id: c for c in new}.values()), iteration=-1)
    idx = store.next_iteration()
    requests, observations = [], []
    for cand, oracle, meta, (status, props, unc, cost, reason), i in rows:
        rid = Request.make_id(cand.id, oracle, idx)
        requests.append(Request(rid, cand, oracle, idx))
        observations.append(Observation(
            request_id=rid, candidate_id=cand.id, oracle=oracle, oracle_version=meta.get("version", oracle),
            fidelity=int(meta.get("fidelity", 0)), status=status, properties=props, uncertainties=unc,
            extra={"prior": True, "told_from": source or file or "python", "row": str(i)}, cost=cost,
            wall_time_s=0.0, reason=reason,
        ))
    # observations first: they stay invisible until their requests exist, and a retry after a
    # crash in between makes the same request ids (same iteration index), so nothing is doubled
    with store.transaction():
        n = sum(store.add_observation(o) for o in observations)
    store.start_iteration(idx, {"prior": {"n": len(rows), "source": source or file or "python"}}, requests,
                          arm=PRIOR_ARM)
    store.finish_iteration(idx)
    return n, already


# -- ask ----------------------------------------------------------------------------------------
def pick_reason(tier_info: dict, choice: dict | None, prop: str | None) -> str:
    """One sentence: why the plan picked this candidate for this tier (from the iteration's rationale)."""
    from matloop.core.units import format_value

    if "promoted" in tier_info:
        rule = tier_info.get("rule") or {}
        return (f"promoted after {rule.get('after')}: passed {_rule_text(rule)} "
                f"(one of {tier_info.get('passed')} passing)")
    if choice and choice.get("rationale"):
        return str(choice["rationale"])
    sel = tier_info.get("selection") or {}
    if sel.get("reason"):
        return f"initial design, {sel['reason']}"
    parts = [f"{sel.get('acquisition', 'acquisition')} on {sel.get('surrogate', 'the surrogate')}"]
    if choice:
        if choice.get("acquisition") is not None:
            parts.append(f"acquisition {choice['acquisition']:.3g}")
        mean, std = choice.get("predicted_mean"), choice.get("predicted_std")
        if mean is not None:
            parts.append(f"predicted {prop or 'value'} {format_value(mean, prop)}"
                         + (f" ± {format_value(std, prop)}" if std is not None else ""))
    if sel.get("shortlist_size"):
        parts.append(f"ranked among a shortlist of {sel['shortlist_size']}")
    return "; ".join(parts)


def _rule_text(rule: dict) -> str:
    if rule.get("top_k"):
        return f"top {rule['top_k']} by {rule.get('property') or 'the objective'}"
    bounds = [f">= {rule['min']:g}" if rule.get("min") is not None else "",
              f"<= {rule['max']:g}" if rule.get("max") is not None else ""]
    return f"{rule.get('property', '')} {' and '.join(b for b in bounds if b)}".strip() or "the rule"


def requests_frame(store: Store, oracle: str | None = None, structures: str | Path | None = None) -> pd.DataFrame:
    """The open requests, one row each, with the plan's reasoning and an empty column per property to fill in.

    Columns: ``request_id``, ``iteration``, ``oracle``, ``candidate_id``, ``formula``,
    ``composition``, ``structure_file`` (a CIF written to ``structures`` when given),
    ``predicted_mean``, ``predicted_std``, ``acquisition``, ``reason_picked``, then one
    column per property the oracle reports (NaN: to fill in).
    """
    from .export import predictions

    oracles = store.get_meta("oracles", {}) or {}
    prop = (store.get_meta("objective") or {}).get("property")
    its = {it["idx"]: it["rationale"] for it in store.iterations(arm=None)}
    preds = predictions(store.iterations(arm=None))
    rows = []
    for rid, it, _arm, cid, name in store.open_requests():
        if oracle and name != oracle:
            continue
        c = store.candidate(cid)
        row = {"request_id": rid, "iteration": it, "oracle": name, "candidate_id": cid, "formula": c.formula,
               "composition": c.composition, "structure_file": ""}
        if structures and c.structure is not None:
            d = Path(structures)
            d.mkdir(parents=True, exist_ok=True)
            f = d / f"{cid}.cif"
            c.pmg_structure().to(filename=str(f))
            row["structure_file"] = str(f)
        p = preds.get((it, name, cid), {})
        row.update(predicted_mean=p.get("predicted_mean"), predicted_std=p.get("predicted_std"),
                   acquisition=p.get("acquisition"))
        tiers = (its.get(it) or {}).get("tiers") or {}
        info = next((v for k, v in tiers.items() if name in k.split("+") and isinstance(v, dict)), {})
        choice = next((ch for ch in info.get("chosen") or [] if ch.get("candidate") == cid), None)
        row["reason_picked"] = pick_reason(info, choice, prop) if info else ""
        for q in oracles.get(name, {}).get("properties") or []:
            row[q] = math.nan
        rows.append(row)
    cols = ["request_id", "iteration", "oracle", "candidate_id", "formula", "composition", "structure_file",
            "predicted_mean", "predicted_std", "acquisition", "reason_picked"]
    return pd.DataFrame(rows, columns=list(dict.fromkeys(cols + [k for r in rows for k in r])))


def plan_batch(spec: CampaignSpec, store: Store, n: int | None = None) -> str | None:
    """Plan and record one batch of requests without submitting them; returns why none was planned, or None.

    The campaign is prepared as ``matloop run`` prepares it (pool, generators, features,
    agent); iterations whose requests are all answered are closed first. A later ``run()``
    submits the recorded requests to their oracles (the resume rule), or ``tell`` answers them.
    """
    from .campaign import Campaign as Loop

    update: dict = {"executor": spec.executor.model_copy(update={"kind": "inline"})}  # nothing runs: start no workers
    if n is not None:
        if int(n) < 1:
            raise InputError(f"n must be at least 1, got {n}", where="ask")
        update["batch_size"] = int(n)
    spec = spec.model_copy(update=update)
    loop = Loop(spec, store=store, quiet=True)
    try:
        loop._prepare(store)
        loop._resume()  # no open requests here: closes the answered iterations
        stopped = loop.budget.exhausted()
        if stopped:
            return stopped
        idx = loop.ledger.next_iteration()
        if loop.generators and loop.generators.draw(loop.ledger, idx, loop.rng):
            loop.pool = None
            loop._featurize()
        plan = loop._plan(idx)
        if not plan.requests:
            return plan.rationale.get("stop_reason", "no candidates left to request")
        loop.ledger.start_iteration(idx, plan.rationale, plan.requests, plan.acquisition)
        return None
    finally:
        if getattr(loop, "executor", None) is not None:
            loop.executor.shutdown()


# -- the notebook object ------------------------------------------------------------------------
def _checked(spec: CampaignSpec, path, store, allow_changes: bool) -> CampaignSpec:
    """The checks ``matloop run`` makes before writing anything: files and columns, and a resume
    of an existing store with a changed campaign (refused unless ``allow_changes`` covers it)."""
    check_inputs(spec, path, store, parse_pools=False)
    store_path = Path(store).expanduser() if store is not None else spec.resolve(spec.store)
    if store_path.is_file():
        check_resume(stored_campaign_spec(store_path), spec, allow_changes, store_path)
    return spec


class Campaign:
    """One campaign and its store, driven from Python.

    Args:
        spec: the validated campaign (``from_yaml`` / ``from_dict`` build it).
        store: the SQLite store (default: the campaign's ``store`` key).
        quiet: no progress lines from ``run()``.

    Attributes:
        stop_reason: why the last ``ask`` planned nothing (budget spent, pool exhausted), else None.
    """

    def __init__(self, spec: CampaignSpec, store: str | Path | None = None, quiet: bool = False):
        self.spec = spec
        self.store_path = Path(store) if store is not None else spec.resolve(spec.store)
        self.quiet = quiet
        self.stop_reason: str | None = None

    def __repr__(self) -> str:
        return f"Campaign({self.spec.name!r}, store={str(self.store_path)!r})"

    @classmethod
    def from_yaml(cls, path: str | Path, store: str | Path | None = None, overrides: dict | None = None,
                  allow_changes: bool = False) -> Campaign:
        """Load a campaign file, validated as ``matloop run`` validates it (files, columns, resume).

        Args:
            path: the campaign YAML.
            store: the store to use instead of the file's ``store`` key.
            overrides: dotted YAML keys to override, as ``--set`` does (``{"budget.evaluations": 20}``).
            allow_changes: resume an existing store whose campaign changed only in budget,
                executor or stop rules (as ``matloop run --allow-changes``).

        Raises:
            InputError: the file has problems; the message lists each with its YAML path.
        """
        spec = load_campaign(path, overrides or None)
        return cls(_checked(spec, path, store, allow_changes), store=store)

    @classmethod
    def from_dict(cls, mapping: dict, base_dir: str | Path = ".", store: str | Path | None = None,
                  allow_changes: bool = False) -> Campaign:
        """A campaign from a mapping (the YAML file's content), validated as a file is.

        Args:
            mapping: the campaign, as the YAML would parse.
            base_dir: the folder relative paths (pool files, the store) resolve against.
            store: the store to use instead of the mapping's ``store`` key.
            allow_changes: as in :meth:`from_yaml`.

        Raises:
            InputError: the mapping has problems; the message lists each with its path
            (line numbers refer to the mapping written out as YAML).
        """
        import yaml

        if not isinstance(mapping, dict):
            raise InputError("a campaign must be a mapping", where="from_dict")
        data = yaml.safe_load(yaml.safe_dump(mapping, sort_keys=False))  # a copy, as a file would give it
        root = yaml.compose(yaml.safe_dump(data, sort_keys=False))
        spec = validate_campaign(data, root, Path("<campaign mapping>"), base_dir=base_dir)
        return cls(_checked(spec, "<campaign mapping>", store, allow_changes), store=store)

    def _store(self) -> Store:
        return Store(self.store_path)

    def ask(self, n: int | None = None, structures: str | Path | None = None) -> pd.DataFrame:
        """The next batch: plans one when no request is open, and returns the open requests.

        Args:
            n: batch size for this plan (default: the campaign's ``batch_size``).
            structures: folder to write each candidate's CIF into (``structure_file`` column).

        Returns:
            One row per open request (see :func:`requests_frame`); empty when the budget is
            spent or no candidate is left (``stop_reason`` says which).
        """
        store = self._store()
        try:
            self.stop_reason = None
            if not store.open_requests():
                self.stop_reason = plan_batch(self.spec, store, n)
            return requests_frame(store, structures=structures)
        finally:
            store.close()

    def tell(self, results: pd.DataFrame) -> int:
        """Record results for open requests (the frame ``ask`` returned, with the property columns filled in).

        Every row is checked first, as ``matloop tell`` checks a CSV; on any problem nothing
        is recorded and an ``InputError`` lists every bad row. Rows already recorded with the
        same values are skipped. Returns how many results were recorded.
        """
        store = self._store()
        try:
            n, _ = tell_results(store, _frame(results, "tell"))
            return n
        finally:
            store.close()

    def add_measurements(self, data: pd.DataFrame) -> int:
        """Record results you already have, for candidates never requested (prior data); see :func:`add_prior`.

        The agent plans from them from its next ``ask``/``run`` on. Returns how many were recorded.
        """
        store = self._store()
        try:
            n, _ = add_prior(store, self.spec, _frame(data, "add_measurements"))
            return n
        finally:
            store.close()

    def run(self) -> dict:
        """Run (or resume) the campaign as ``matloop run`` does; returns its summary.

        With a manual oracle it plans the next batch and stops, waiting for ``tell``.
        """
        from .campaign import Campaign as Loop

        return Loop(self.spec, store_path=self.store_path, quiet=self.quiet).run()

    def to_dataframe(self, structures: str | Path | None = None) -> pd.DataFrame:
        """One row per observation (every arm): composition, one column per property and
        ``uncertainty_<prop>``, the plan's ``predicted_mean``/``predicted_std`` and ``acquisition``
        where recorded; relaxed structures are written to ``structures`` (extxyz) when given."""
        from .export import columns, observation_table

        if not self.store_path.exists():
            return pd.DataFrame(columns=columns([]))
        store = self._store()
        try:
            rows = observation_table(store, structures=structures)
        finally:
            store.close()
        return pd.DataFrame(rows, columns=columns(rows))


def _frame(data, what: str) -> pd.DataFrame:
    if isinstance(data, pd.DataFrame):
        return data
    try:
        return pd.DataFrame(data)
    except Exception as exc:
        raise InputError(f"expects a pandas DataFrame (or records), got {type(data).__name__}: {exc}",
                         where=what) from None
