"""Shockley-Queisser limit under AM1.5G."""

from __future__ import annotations

import numpy as np
import pytest

from matloop.oracles.efficiency import shockley_queisser_efficiency, short_circuit_current_a_per_m2, slme


def test_maximum_is_33_7_percent_near_1_34_ev():
    gaps = np.arange(1.20, 1.50, 0.02)
    effs = [shockley_queisser_efficiency(g) for g in gaps]
    best = int(np.argmax(effs))
    assert effs[best] == pytest.approx(0.337, abs=0.002)
    assert gaps[best] == pytest.approx(1.34, abs=0.03)


@pytest.mark.parametrize(
    ("gap_ev", "lo", "hi"),
    [
        (1.1, 0.32, 0.335),  # silicon
        # detailed balance gives J_sc 14.6 mA/cm2, V_oc 1.70 V and 22.8 % at 2.0 eV
        (2.0, 0.22, 0.235),
    ],
)
def test_known_gaps(gap_ev, lo, hi):
    assert lo <= shockley_queisser_efficiency(gap_ev) <= hi


def test_short_circuit_current_of_silicon():
    # ~44 mA/cm2 for every AM1.5G photon above 1.1 eV
    assert short_circuit_current_a_per_m2(1.1) / 10 == pytest.approx(44.2, abs=0.5)


@pytest.mark.parametrize("gap_ev", [0.0, -1.0, float("nan")])
def test_no_gap_no_power(gap_ev):
    assert shockley_queisser_efficiency(gap_ev) == 0.0


def test_hotter_cells_are_less_efficient():
    assert shockley_queisser_efficiency(1.34, temperature_k=350) < shockley_queisser_efficiency(1.34)


def test_slme_of_a_thick_step_absorber_is_the_sq_limit():
    energies = np.linspace(0.0, 10.0, 5001)
    alpha = np.where(energies >= 1.34, 1e8, 0.0)
    assert slme(energies, alpha, thickness_um=100.0, gap_ev=1.34) == pytest.approx(
        shockley_queisser_efficiency(1.34), abs=0.003
    )


def test_slme_thin_films_and_indirect_gaps_lose_efficiency():
    energies = np.linspace(0.0, 10.0, 5001)
    alpha = np.where(energies >= 1.3, 1e4 * np.sqrt(np.clip(energies - 1.3, 0, None)), 0.0)  # direct-gap-like edge
    thick = slme(energies, alpha, thickness_um=10.0, gap_ev=1.3)
    thin = slme(energies, alpha, thickness_um=0.1, gap_ev=1.3)
    indirect = slme(energies, alpha, thickness_um=10.0, gap_ev=1.3, direct_gap_ev=1.5)
    assert 0 < thin < thick < 0.34
    assert indirect < thick
