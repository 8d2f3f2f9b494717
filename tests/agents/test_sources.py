import json

import pytest
from pymatgen.core import Lattice, Structure

from matloop.agents.generation.sources import FileSource
from matloop.core.records import InputError


def _nacl():
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_csv_never_reads_label_columns(tmp_path):
    p = tmp_path / "pool.csv"
    p.write_text("composition,secret\nFe2O3,1\nNiO,2\n")
    cands = FileSource("f", {"path": str(p)}).load()
    assert [c.formula for c in cands] == ["Fe2O3", "NiO"]
    assert all("secret" not in json.dumps(c.to_json()) for c in cands)
    assert cands[1].provenance["row"] == 1


def test_cif_dir_json_extxyz(tmp_path):
    from ase.io import write
    from pymatgen.io.ase import AseAtomsAdaptor

    d = tmp_path / "cifs"
    d.mkdir()
    _nacl().to(filename=str(d / "NaCl.cif"))
    (d / "broken.cif").write_text("data_x\n_cell_length_a oops\n")
    with pytest.raises(InputError, match="broken.cif"):
        FileSource("c", {"path": str(d)}).load()
    assert [c.formula for c in FileSource("c", {"path": str(d), "on_bad_row": "skip"}).load()] == ["NaCl"]
    j = tmp_path / "s.json"
    j.write_text(json.dumps([_nacl().as_dict()]))
    assert FileSource("j", {"path": str(j)}).load()[0].structure is not None
    x = tmp_path / "s.extxyz"
    write(str(x), [AseAtomsAdaptor.get_atoms(_nacl())], format="extxyz")
    assert FileSource("x", {"path": str(x)}).load()[0].formula == "NaCl"


def test_csv_structure_column(tmp_path):
    p = tmp_path / "pool.csv"
    import csv

    with open(p, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["cif", "y"])
        w.writerow([_nacl().to(fmt="cif"), 1])
    [c] = FileSource("f", {"path": str(p), "structure_column": "cif", "composition_column": None}).load()
    assert c.formula == "NaCl" and c.id.startswith("s-")


def test_missing_column(tmp_path):
    p = tmp_path / "pool.csv"
    p.write_text("formula\nFe2O3\n")
    with pytest.raises(InputError, match="column 'composition' not found"):
        FileSource("f", {"path": str(p)}).load()
