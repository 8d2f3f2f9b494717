"""Export a campaign: one row per observation, one column per property and uncertainty.

``observation_table`` is the one place a store becomes a flat table: ``matloop export``
writes it as CSV or JSON, and the Python API's ``Campaign.to_dataframe`` returns it as a
DataFrame. Each row carries the candidate's composition, every property the oracle reported
(and ``uncertainty_<prop>`` where it reported one), the surrogate's prediction for that pick
when the plan recorded one, and -- with a structures folder -- the path of the relaxed
structure written there as extended XYZ or into an ASE database.

Everything is read through the store's public methods; nothing here writes to the store.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from matloop.core.records import InputError

#: the columns every row has, in this order; property, uncertainty and prediction columns follow
BASE_COLUMNS = ("seq", "iteration", "arm", "candidate_id", "formula", "composition", "source", "oracle",
                "oracle_version", "fidelity", "status", "value", "cost", "wall_time_s", "reason", "request_id")
STRUCTURE_FORMATS = ("extxyz", "db")


def predictions(iterations: list[dict]) -> dict[tuple[int, str, str], dict]:
    """The plan's record of each pick: (iteration, oracle, candidate id) -> acquisition, predicted mean and sigma.

    Read from the iterations' rationales (``rationale['tiers'][tier]['chosen']``); a
    Pareto tier named ``a+b`` counts for each of its oracles. Several objectives give one
    ``predicted_mean_<label>`` / ``predicted_std_<label>`` per objective.
    """
    out: dict[tuple[int, str, str], dict] = {}
    for it in iterations:
        for tier, info in ((it.get("rationale") or {}).get("tiers") or {}).items():
            if not isinstance(info, dict):
                continue
            for c in info.get("chosen") or []:
                rec = {"acquisition": c.get("acquisition")}
                for key, col in (("predicted_mean", "predicted_mean"), ("predicted_std", "predicted_std"),
                                 ("predicted_means", "predicted_mean"), ("predicted_stds", "predicted_std")):
                    v = c.get(key)
                    if isinstance(v, dict):
                        rec.update({f"{col}_{k}": x for k, x in v.items()})
                    elif v is not None:
                        rec[col] = v
                for oracle in ([c["oracle"]] if c.get("oracle") else tier.split("+")):
                    out[(it["idx"], oracle, c.get("candidate"))] = rec
    return out


def write_structure(structure: dict, path: Path) -> None:
    """Write a pymatgen structure dict as extended XYZ (ASE) to ``path``."""
    from ase.io import write
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    write(str(path), AseAtomsAdaptor.get_atoms(Structure.from_dict(structure)), format="extxyz")


def observation_table(store, structures: str | Path | None = None, structure_format: str = "extxyz") -> list[dict]:
    """One flat record per observation (every arm, arrival order), ready for CSV or a DataFrame.

    Args:
        store: an open ``Store``.
        structures: folder to write each relaxed structure into (none written when None).
        structure_format: ``extxyz`` (one file per observation, ``<candidate>_<oracle>.extxyz``)
            or ``db`` (one ASE database ``structures.db``, rows keyed by ``request_id``).

    Returns:
        Records with ``BASE_COLUMNS``, then one key per property and ``uncertainty_<prop>``,
        the plan's ``acquisition`` and ``predicted_mean``/``predicted_std`` where recorded,
        ``relaxed_structure`` (the written file, or empty), and ``pareto`` when the store
        holds a final Pareto front. ``value`` is the campaign objective's value when the
        row has it, else the row's only property.

    Raises:
        InputError: an unknown ``structure_format``.
    """
    if structure_format not in STRUCTURE_FORMATS:
        raise InputError(f"unknown structure format {structure_format!r}; choose {' or '.join(STRUCTURE_FORMATS)}",
                         where="--structure-format")
    objective = (store.get_meta("objective") or {}).get("property")
    front = store.get_meta("pareto_front")
    preds = predictions(store.iterations(arm=None))
    extras = {o.request_id: o.extra for o in store.observations()}
    folder = Path(structures) if structures else None
    db = None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        if structure_format == "db":
            from ase.db import connect

            db = connect(str(folder / "structures.db"))
    rows = []
    try:
        for r in store.export_rows():
            props, unc = r.pop("properties"), r.pop("uncertainties")
            row = {k: r.get(k) for k in BASE_COLUMNS if k != "value"}
            row["value"] = props.get(objective, next(iter(props.values())) if len(props) == 1 else None)
            row.update(props)
            row.update({f"uncertainty_{k}": v for k, v in unc.items()})
            row.update(preds.get((r["iteration"], r["oracle"], r["candidate_id"]), {}))
            row["relaxed_structure"] = ""
            relaxed = (extras.get(r["request_id"]) or {}).get("relaxed_structure")
            if folder is not None and relaxed:
                row["relaxed_structure"] = _save_structure(relaxed, row, folder, db)
            rows.append(row)
    finally:
        if db is not None and hasattr(db, "close"):
            db.close()
    if front:
        # several objectives: mark the observations that place a candidate on the final Pareto front
        on_front = {m["candidate"] for m in front["front"]}
        oracles = {o["oracle"] for o in front["objectives"]}
        for row in rows:
            row["pareto"] = int(row["candidate_id"] in on_front and row["oracle"] in oracles
                                and row["status"] == "success" and row.get("arm", "agent") == "agent")
    return rows


def _save_structure(structure: dict, row: dict, folder: Path, db) -> str:
    """Write one relaxed structure; returns where it went (a file path, or ``structures.db`` for the database)."""
    if db is None:
        path = folder / f"{row['candidate_id']}_{row['oracle']}.extxyz"
        write_structure(structure, path)
        return str(path)
    from ase.db.core import reserved_keys
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    # key-value pairs: the row's numbers and ids (ASE computes formula, id, ... itself)
    numeric = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
               and math.isfinite(v) and k.isidentifier() and k not in reserved_keys}
    text = {k: str(row[k]) for k in ("request_id", "candidate_id", "oracle", "arm") if row.get(k)}
    db.write(AseAtomsAdaptor.get_atoms(Structure.from_dict(structure)), **numeric, **text)
    return str(folder / "structures.db")


def columns(rows: list[dict]) -> list[str]:
    """The table's columns: ``BASE_COLUMNS``, then properties, uncertainties, predictions and the rest, in first-seen order."""
    seen = list(dict.fromkeys(k for r in rows for k in r))
    rest = [k for k in seen if k not in BASE_COLUMNS]
    uncertainty = [k for k in rest if k.startswith("uncertainty_")]
    plan = [k for k in rest if k == "acquisition" or k.startswith("predicted_")]
    tail = [k for k in ("relaxed_structure", "pareto") if k in rest]
    props = [k for k in rest if k not in uncertainty and k not in plan and k not in tail]
    return list(BASE_COLUMNS) + props + uncertainty + plan + tail


def write(rows: list[dict], out, fmt: str = "csv") -> None:
    """Write ``rows`` to the open text stream ``out`` as ``csv`` (empty cells for missing values) or ``json``."""
    if fmt == "json":
        json.dump(rows, out, indent=1, default=str)
        out.write("\n")
        return
    import csv

    w = csv.DictWriter(out, fieldnames=columns(rows), extrasaction="ignore", restval="")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
