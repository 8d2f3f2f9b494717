"""The mlip-neb barrier tier: percolation over hop barriers, and a real climbing-image NEB on a tiny cell."""

from __future__ import annotations

import pytest
from pymatgen.core import Lattice, Structure

from matloop.core.records import Candidate, Request, Status
from matloop.core.registry import oracle_class
from matloop.oracles.neb import MlipNebSettings, migration_graph_for, percolating_barriers

pytest.importorskip("pymatgen.analysis.diffusion", reason="pymatgen-analysis-diffusion is a dependency of mlip-neb")


def run(oracle, structure):
    c = Candidate.from_structure(structure, source="test")
    return oracle.run(Request(Request.make_id(c.id, oracle.name, 0), c, oracle.name, 0))


def test_percolating_barrier_is_the_lowest_threshold_that_spans_the_crystal():
    # Li chains along c (2.8 A hops) joined in-plane by 4.0 A hops
    chains = Structure(Lattice.tetragonal(4.0, 2.8), ["Li"], [[0, 0, 0]])
    mg, cutoff = migration_graph_for(chains, MlipNebSettings(max_hop_distance_a=4.1))
    labels = {round(h["hop_distance"], 1): label for label, h in mg.unique_hops.items()}
    assert sorted(labels) == [2.8, 4.0]
    assert percolating_barriers(mg, {labels[2.8]: 0.1, labels[4.0]: 0.5}) == {1: 0.1, 2: 0.5, 3: 0.5}
    # chains blocked: only the in-plane hops are cheap, which gives 2D sheets first
    assert percolating_barriers(mg, {labels[2.8]: 0.9, labels[4.0]: 0.2}) == {1: 0.2, 2: 0.2, 3: 0.9}
    # a hop left out (failed NEB) breaks that part of the network
    assert percolating_barriers(mg, {labels[2.8]: None, labels[4.0]: 0.2}) == {1: 0.2, 2: 0.2}
    assert percolating_barriers(mg, {labels[2.8]: None, labels[4.0]: None}) == {}


def test_neb_on_bcc_li_gives_a_symmetric_3d_vacancy_barrier():
    oracle = oracle_class("mlip-neb")(
        settings={"min_image_distance_a": 6.0, "n_images": 3, "relax": False},
        site={"device": "cpu"},
    )
    bcc = Structure(Lattice.cubic(3.44), ["Li", "Li"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    obs = run(oracle, bcc)
    assert obs.status == Status.SUCCESS, obs.reason
    barrier = obs.properties["migration_energy_ev"]
    assert 0.02 < barrier < 0.4  # CHGNet 0.3.0 gives ~0.16 eV for the nearest-neighbour vacancy hop
    assert obs.extra["dimensionality"] == "3D"
    (hop,) = obs.extra["hops"]
    assert hop["distance_a"] == pytest.approx(3.44 * 3**0.5 / 2, abs=0.05)
    assert hop["n_atoms"] == 15  # 2x2x2 conventional cells less the vacancy
    energies = hop["energies_ev"]
    assert max(energies) == energies[len(energies) // 2]  # the saddle is the middle image
    assert energies[0] == 0.0 and abs(energies[-1]) < 0.01
    assert obs.oracle_version.startswith("mlip-neb-")
    # the uncertainty: SevenNet re-evaluates the CHGNet band; the spread of the two barriers
    spread = obs.extra["uncertainty"]
    assert 0.0 < hop["partner_barrier_ev"] < 0.6
    assert spread["partner_migration_energy_ev"] == pytest.approx(hop["partner_barrier_ev"])
    assert obs.uncertainties["migration_energy_ev"] == pytest.approx(abs(barrier - hop["partner_barrier_ev"]) / 2**0.5)


def test_a_structure_without_the_mobile_ion_fails_with_a_reason():
    oracle = oracle_class("mlip-neb")(site={"device": "cpu"})
    nacl = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    obs = run(oracle, nacl)
    assert obs.status == Status.FAILED and "no Li in NaCl" in obs.reason
