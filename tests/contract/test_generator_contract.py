"""One suite over every registered generator (``matloop.generators`` entry points).

``generate(n, state, rng)`` returns at most ``n`` ``Candidate``s, each with its ``source``
(the generator's name) and provenance naming the operator; the same seed gives the same
candidates; unknown settings are rejected with a pydantic error. Generators that need a
service get a local one (OPTIMADE's reference server on loopback) or skip with the reason
(Materials Project without an API key).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from pymatgen.core import Lattice, Structure

from matloop.core.protocols import CampaignState, Generator
from matloop.core.records import Candidate, InputError
from matloop.core.registry import GENERATORS, load, names

KINDS = names(GENERATORS)


def rocksalt(a: str, x: str, lattice_a: float) -> Structure:
    s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(lattice_a), [a, x], [[0, 0, 0], [0.5, 0.5, 0.5]])
    return s.get_primitive_structure()


PARENTS = [rocksalt("Na", "Cl", 5.64), rocksalt("K", "Cl", 6.29), rocksalt("Mg", "O", 4.21), rocksalt("Ca", "O", 4.81)]


def state() -> CampaignState:
    """Four labelled rock-salt parents: something to mutate, train on, or be new against."""
    cands = [Candidate.from_structure(s, source="pool") for s in PARENTS]
    return CampaignState(candidates={c.id: c for c in cands}, fitness={c.id: -float(i) for i, c in enumerate(cands)})


@pytest.fixture(scope="module")
def optimade_url():
    """OPTIMADE's reference server on loopback, serving three rock salts (started only when needed)."""
    from matloop.agents.generation.enumeration import reference_server

    structures = [("licl", rocksalt("Li", "Cl", 5.13)), ("nabr", rocksalt("Na", "Br", 5.97)),
                  ("kbr", rocksalt("K", "Br", 6.6))]
    try:
        with reference_server(structures) as url:
            yield url
    except (ImportError, RuntimeError) as exc:
        pytest.skip(f"no OPTIMADE reference server here: {exc}")


def optimade_settings(fixtures: pytest.FixtureRequest, tmp_path: Path) -> dict:
    return {"base_url": fixtures.getfixturevalue("optimade_url"), "page_limit": 2}


def materials_project_settings(fixtures: pytest.FixtureRequest, tmp_path: Path) -> dict:
    if not os.environ.get("MP_API_KEY"):
        pytest.skip("no MP_API_KEY: the Materials Project generator needs the live API")
    return {"criteria": {"chemsys": "Li-Cl"}, "max_entries": 10}


def ase_db_settings(fixtures: pytest.FixtureRequest, tmp_path: Path) -> dict:
    import ase.db
    from pymatgen.io.ase import AseAtomsAdaptor

    path = tmp_path / "structures.db"
    if not path.exists():
        db = ase.db.connect(str(path))
        for s in (rocksalt("Li", "Cl", 5.13), rocksalt("Na", "Br", 5.97), rocksalt("K", "Br", 6.6)):
            db.write(AseAtomsAdaptor.get_atoms(s))
    return {"path": str(path)}


@dataclass
class Case:
    """How to build one generator kind for the suite.

    Attributes:
        settings: builds valid settings from the fixtures and a folder (may start a local service or skip).
        n: how many candidates to ask for.
    """

    settings: Callable[[pytest.FixtureRequest, Path], dict] = field(default=lambda fixtures, tmp_path: {})
    n: int = 3


CASES: dict[str, Case] = {
    "mutation": Case(),
    # a tiny, quick VAE: a few epochs on the four parents
    "vae": Case(lambda fixtures, tmp_path: {"epochs": 3, "hidden": 16, "latent_dim": 2, "max_atoms": 2, "n_best": 2,
                                  "max_attempts_per_candidate": 10, "device": "cpu"}),
    "substitution": Case(),
    # every rock salt of the parents' elements is a known MP phase: without the known-formula filter
    "wyckoff": Case(lambda fixtures, tmp_path: {"avoid_formulas": None}),
    "optimade": Case(optimade_settings),
    "materials-project": Case(materials_project_settings),
    "ase-db": Case(ase_db_settings),
}


@pytest.fixture(scope="module")
def settings_of(request, tmp_path_factory) -> Callable[[str], dict]:
    """Settings per kind, built once per module (one OPTIMADE server, one database file)."""
    cache: dict[str, dict] = {}

    def get(kind: str) -> dict:
        if kind not in cache:
            cache[kind] = CASES.get(kind, Case()).settings(request, tmp_path_factory.mktemp(kind.replace("-", "_")))
        return cache[kind]

    return get


def build(kind: str, settings: dict, name: str = "contract"):
    try:
        return load(GENERATORS, kind)(name, dict(settings))
    except InputError as exc:  # a missing optional package or credential
        pytest.skip(f"{kind} cannot be built here: {exc}")


@pytest.mark.parametrize("kind", KINDS)
def test_generate_returns_at_most_n_candidates_with_provenance(kind, settings_of):
    gen = build(kind, settings_of(kind))
    assert isinstance(gen, Generator) and gen.name == "contract"
    n = CASES.get(kind, Case()).n
    out = gen.generate(n, state(), np.random.default_rng(0))
    assert isinstance(out, list) and len(out) <= n
    assert out or kind not in CASES, f"{kind} generated nothing from its contract case"
    known = set(state().candidates)
    for c in out:
        assert isinstance(c, Candidate)
        assert c.source == "contract"
        assert isinstance(c.provenance, dict) and c.provenance.get("operator"), c.provenance
        assert c.id not in known
    assert len({c.id for c in out}) == len(out)
    assert gen.generate(0, state(), np.random.default_rng(0)) == []


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_candidates(kind, settings_of):
    n = CASES.get(kind, Case()).n
    runs = [build(kind, settings_of(kind)).generate(n, state(), np.random.default_rng(7)) for _ in range(2)]
    assert [c.id for c in runs[0]] == [c.id for c in runs[1]]
    assert [c.provenance for c in runs[0]] == [c.provenance for c in runs[1]]


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_settings_are_rejected(kind):
    settings = {"path": "unused.db"} if kind == "ase-db" else {}
    with pytest.raises(ValidationError, match="no_such_setting"):
        load(GENERATORS, kind)("contract", {**settings, "no_such_setting": 1})
