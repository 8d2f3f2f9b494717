"""Database enumeration: OPTIMADE against the reference server on 127.0.0.1, MP, ASE db."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from matloop.core.protocols import CampaignState, Generator
from matloop.agents.generation.enumeration import (
    AseDbGenerator,
    EnumerationError,
    MaterialsProjectGenerator,
    OptimadeGenerator,
    reference_server,
)
from matloop.core.records import Candidate, InputError

#: the reference server's bundled structures are synthetic (atoms 0.3 Å apart, 40 g/cm3):
#: switch the physical checks off to exercise transport, pagination and conversion on them
NO_PHYSICS = {"min_distance_angstrom": 0, "min_distance_factor": 0, "density_range_g_cm3": (0, 1e6), "max_atoms": 1000}


def cubic(species, coords, a) -> Structure:
    return Structure(Lattice.cubic(a), species, coords)


def perovskite(a="Sr", b="Ti", x="O", lat=3.905) -> Structure:
    return cubic([a, b, x, x, x], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]], lat)


def rocksalt_primitive(a="Na", x="Cl", lat=5.64) -> Structure:
    return Structure(Lattice.from_parameters(*(3 * [lat / 2**0.5]), 60, 60, 60), [a, x], [[0, 0, 0], [0.5, 0.5, 0.5]])


def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="module")
def bundled_server():
    try:
        with reference_server(page_limit=5) as url:
            yield url
    except ImportError as exc:
        pytest.skip(f"optimade[server] is not available: {exc}")


@pytest.fixture(scope="module")
def real_server():
    structures = [
        ("sto", perovskite()),
        ("bto", perovskite("Ba", "Ti", "O", 4.0)),
        ("nacl", rocksalt_primitive()),
        ("kcl", rocksalt_primitive("K", "Cl", 6.29)),
        ("sto-supercell", perovskite() * (1, 1, 2)),
        ("overlap", cubic(["Na", "Cl"], [[0, 0, 0], [0.05, 0, 0]], 4.0)),
        ("nacl-cscl-type", cubic(["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]], 3.3)),
    ]
    try:
        with reference_server(structures) as url:
            yield url
    except ImportError as exc:
        pytest.skip(f"optimade[server] is not available: {exc}")


def test_paginates_through_the_bundled_data(bundled_server, tmp_path):
    gen = OptimadeGenerator("opt", {"base_url": bundled_server, "page_limit": 4, "validity": NO_PHYSICS,
                                    "cache_dir": str(tmp_path)})
    assert isinstance(gen, Generator)
    out = gen.generate(100, CampaignState(), rng())
    assert gen.stats["attempted"] == 17  # every entry of the bundled set, read 4 per page
    assert gen.pages_fetched == 5 and gen.exhausted
    assert len(out) == gen.stats["novel"] and len(out) >= 15
    ids = [c.provenance["entry_id"] for c in out]
    assert len(set(ids)) == len(ids) and all(i.startswith("mpf_") for i in ids)
    assert all(c.source == "opt" and c.provenance["operator"] == "optimade" for c in out)


def test_default_filter_rejects_synthetic_entries_with_reasons(bundled_server):
    gen = OptimadeGenerator("opt", {"base_url": bundled_server, "page_limit": 10})
    gen.generate(100, CampaignState(), rng())
    assert gen.stats["attempted"] == 17 and gen.stats["valid"] < 17
    assert sum(gen.rejections.values()) == 17 - gen.stats["valid"]
    assert set(gen.rejections) <= {"density", "distance", "max_atoms", "disordered", "lattice", "conversion failed"}


def test_continues_where_it_stopped_and_uses_the_cache(bundled_server, tmp_path):
    settings = {"base_url": bundled_server, "page_limit": 4, "validity": NO_PHYSICS, "cache_dir": str(tmp_path),
                "filter": "nelements>=2"}
    gen = OptimadeGenerator("opt", settings)
    first = gen.generate(3, CampaignState(), rng())
    rest = gen.generate(100, CampaignState(), rng())
    assert len(first) == 3 and not {c.id for c in first} & {c.id for c in rest}
    n_pages = gen.pages_fetched
    again = OptimadeGenerator("opt", settings)
    replay = again.generate(100, CampaignState(), rng())
    assert again.pages_fetched == 0 and again.pages_cached == n_pages
    assert [c.id for c in replay] == [c.id for c in first + rest]
    assert all(len(c.pmg_composition().elements) >= 2 for c in replay)
    other = OptimadeGenerator("opt", {**settings, "filter": "nelements>=3"})
    other.generate(100, CampaignState(), rng())
    assert other.pages_fetched > 0  # a different filter is a different cache key


def test_bad_filter_is_a_clear_error(bundled_server):
    gen = OptimadeGenerator("opt", {"base_url": bundled_server, "filter": "nelemnts<=4", "retries": 0})
    with pytest.raises(EnumerationError, match="HTTP 400"):
        gen.generate(3, CampaignState(), rng())


def test_unreachable_provider_is_a_clear_error():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gen = OptimadeGenerator("opt", {"base_url": f"http://127.0.0.1:{port}", "retries": 0, "timeout_s": 2})
    with pytest.raises(EnumerationError, match="URLError"):
        gen.generate(1, CampaignState(), rng())


def test_real_structures_filtered_validated_and_deduplicated(real_server):
    known = Candidate.from_structure(perovskite("Ba", "Ti", "O", 4.0))
    state = CampaignState(candidates={known.id: known})
    gen = OptimadeGenerator("opt", {"base_url": real_server, "page_limit": 2,
                                    "filter": 'elements HAS ANY "O","Cl" AND nelements=3'})
    out = gen.generate(100, state, rng())
    assert {c.provenance["entry_id"] for c in out} == {"sto"}  # bto is known, the supercell is sto
    assert gen.stats["attempted"] == 3 and gen.pages_fetched == 2

    gen = OptimadeGenerator("opt", {"base_url": real_server, "filter": 'elements HAS "Cl"'})
    out = gen.generate(100, CampaignState(), rng())
    assert {c.provenance["entry_id"] for c in out} == {"nacl", "kcl", "nacl-cscl-type"}
    assert gen.rejections["distance"] == 1  # the overlapping entry


def test_materials_project_needs_key():
    try:
        gen = MaterialsProjectGenerator("mp", {"api_key_env": "MATLOOP_TEST_UNSET_KEY_8731"})
    except InputError as exc:
        assert "mp-api" in str(exc) or "MATLOOP_TEST_UNSET_KEY_8731" in str(exc)
    else:  # pragma: no cover - only if someone sets that variable
        pytest.fail(f"constructed without a key: {gen}")


def test_materials_project_live():
    import os

    if not os.environ.get("MP_API_KEY"):
        pytest.skip("no MP_API_KEY set")
    pytest.importorskip("mp_api")
    gen = MaterialsProjectGenerator("mp", {"criteria": {"chemsys": "Li-S"}, "max_entries": 20})
    out = gen.generate(3, CampaignState(), rng())
    assert out and all(c.provenance["material_id"].startswith("mp-") for c in out)


def test_ase_db_and_extxyz(tmp_path):
    import ase.db
    import ase.io
    from ase.build import bulk

    atoms = [bulk("Cu", "fcc", a=3.6), bulk("NaCl", "rocksalt", a=5.64), bulk("Si", "diamond", a=5.43)]
    db = ase.db.connect(str(tmp_path / "s.db"))
    for a in atoms:
        db.write(a)
    gen = AseDbGenerator("db", {"path": "s.db", "selection": "natoms=2"}, base_dir=tmp_path)
    out = gen.generate(10, CampaignState(), rng())
    assert sorted(c.formula for c in out) == ["NaCl", "Si"]
    ase.io.write(str(tmp_path / "s.extxyz"), atoms + [bulk("Cu", "fcc", a=3.6, cubic=True)], format="extxyz")
    gen = AseDbGenerator("x", {"path": str(tmp_path / "s.extxyz")})
    out = gen.generate(10, CampaignState(), rng())
    assert sorted(c.formula for c in out) == ["Cu", "NaCl", "Si"]  # the cubic Cu cell is a duplicate
    with pytest.raises(InputError):
        AseDbGenerator("x", {"path": str(tmp_path / "missing.db")})


def test_registered_under_entry_point():
    from matloop.core.registry import load

    assert load("matloop.generators", "optimade") is OptimadeGenerator
