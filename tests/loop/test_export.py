"""`matloop export`: composition, a column per property and uncertainty, predictions, relaxed structures."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

from pymatgen.core import Lattice, Structure

from matloop.core.records import Candidate, Observation, Request, Status
from matloop.loop.store import Store


def matloop(*args):
    return subprocess.run([sys.executable, "-m", "matloop.loop.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def _store(path) -> tuple[Candidate, Structure]:
    """A store as an MLIP campaign leaves it: two properties per observation, a relaxed structure, a planned pick."""
    s = Structure(Lattice.cubic(4.2), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    relaxed = Structure(Lattice.cubic(4.25), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    cand = Candidate.from_structure(s, source="prototypes")
    other = Candidate.from_composition("CaO", source="file")
    store = Store(path)
    store.set_meta("objective", {"property": "formation_energy_ev_per_atom", "goal": "minimize"})
    store.add_candidates([cand, other])
    reqs = [Request(Request.make_id(c.id, "chgnet", 0), c, "chgnet", 0) for c in (cand, other)]
    rationale = {"tiers": {"chgnet": {"selection": {"acquisition": "qlognei", "surrogate": "gp"}, "chosen": [
        {"candidate": cand.id, "formula": "MgO", "acquisition": 0.42, "predicted_mean": -2.9, "predicted_std": 0.3}]}}}
    store.start_iteration(0, rationale, reqs)
    store.add_observation(Observation(
        reqs[0].id, cand.id, "chgnet", "chgnet-1-abc", 0, Status.SUCCESS,
        {"formation_energy_ev_per_atom": -3.05, "e_above_hull_ev_per_atom": 0.0},
        {"formation_energy_ev_per_atom": 0.05}, {"relaxed_structure": relaxed.as_dict()}, 1.0, 12.5))
    store.add_observation(Observation(reqs[1].id, other.id, "chgnet", "chgnet-1-abc", 0, Status.FAILED,
                                      reason="relaxation did not converge", cost=1.0))
    store.close()
    return cand, relaxed


def test_csv_has_every_property_composition_predictions(tmp_path):
    cand, _ = _store(tmp_path / "s.sqlite")
    out = tmp_path / "all.csv"
    res = matloop("export", tmp_path / "s.sqlite", "--out", out)
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 2
    ok = next(r for r in rows if r["status"] == "success")
    assert ok["composition"] == "Mg1O1" and ok["formula"] == "MgO"
    assert float(ok["formation_energy_ev_per_atom"]) == -3.05 and float(ok["e_above_hull_ev_per_atom"]) == 0.0
    assert float(ok["value"]) == -3.05  # the objective's value, though the oracle reports two properties
    assert float(ok["uncertainty_formation_energy_ev_per_atom"]) == 0.05
    assert float(ok["predicted_mean"]) == -2.9 and float(ok["predicted_std"]) == 0.3 and float(ok["acquisition"]) == 0.42
    assert ok["relaxed_structure"] == ""  # no --structures: nothing written
    failed = next(r for r in rows if r["status"] == "failed")
    assert failed["reason"] == "relaxation did not converge" and failed["composition"] == "CaO"
    assert failed["formation_energy_ev_per_atom"] == "" and failed["predicted_mean"] == ""


def test_relaxed_structures_as_extxyz_and_ase_db(tmp_path):
    from ase.db import connect
    from ase.io import read

    cand, relaxed = _store(tmp_path / "s.sqlite")
    res = matloop("export", tmp_path / "s.sqlite", "--out", tmp_path / "a.csv", "--structures", tmp_path / "xyz")
    assert res.returncode == 0, res.stderr
    ok = next(r for r in csv.DictReader(open(tmp_path / "a.csv")) if r["status"] == "success")
    atoms = read(ok["relaxed_structure"])
    assert atoms.get_chemical_formula() == "MgO" and abs(atoms.get_volume() - relaxed.volume) < 1e-6

    res = matloop("export", tmp_path / "s.sqlite", "--format", "json", "--structures", tmp_path / "db",
                  "--structure-format", "db")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    ok = next(r for r in rows if r["status"] == "success")
    db = connect(ok["relaxed_structure"])
    row = db.get(request_id=ok["request_id"])
    assert row.formula == "MgO" and row.candidate_id == cand.id and abs(row.formation_energy_ev_per_atom + 3.05) < 1e-12
    assert abs(row.toatoms().get_volume() - relaxed.volume) < 1e-6
