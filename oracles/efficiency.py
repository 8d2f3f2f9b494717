"""Detailed-balance (Shockley-Queisser) limit of a single-junction solar cell under AM1.5G.

``shockley_queisser_efficiency(gap_ev)`` follows Shockley & Queisser, J. Appl. Phys. 32, 510
(1961), with the usual modern assumptions (e.g. Rühle, Sol. Energy 130, 139 (2016)):

* absorptance is a step: every photon above the gap is absorbed and gives one electron-hole
  pair, none below it;
* recombination is radiative only, and the cell emits as a black body at ``temperature_k``
  above the gap, through its front surface into the hemisphere;
* J(V) = J_sc - J_0 (exp(qV / kT) - 1), and the efficiency is max_V J V over the incident
  power.

The spectrum is ASTM G173-03 global tilt (W m^-2 nm^-1, integrating to ~1000 W m^-2) from
``pvlib.spectrum.get_reference_spectra``; its tabulation ends at 4000 nm, so gaps below
0.31 eV lose the far infrared (irrelevant near the optimum). pvlib and scipy provide the
spectrum, the quadrature and the maximisation; the detailed-balance formulas are a few
lines with no library equivalent.

``slme(...)`` is the spectroscopic limited maximum efficiency of Yu & Zunger, Phys. Rev. Lett.
108, 068701 (2012): the same balance with the absorptivity a(E) = 1 - exp(-2 alpha(E) L) of a
film of thickness L (back reflector) in place of the step, and the radiative saturation
current divided by the fraction f_r = exp(-(E_g^da - E_g) / kT) of radiative recombination
when the lowest direct allowed gap E_g^da lies above the fundamental gap E_g. With a step
absorption coefficient and a thick film it reduces to the Shockley-Queisser limit.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

#: physical constants (CODATA 2018, exact where SI defines them)
_H_J_S = 6.62607015e-34
_C_M_S = 299792458.0
_Q_C = 1.602176634e-19
_KB_J_K = 1.380649e-23


@lru_cache(maxsize=1)
def _am15g() -> tuple[np.ndarray, np.ndarray, float]:
    """Wavelengths (nm), spectral irradiance (W m^-2 nm^-1) and total irradiance (W m^-2) of AM1.5G."""
    from pvlib.spectrum import get_reference_spectra

    spectra = get_reference_spectra(standard="ASTM G173-03")
    wavelength_nm = spectra.index.to_numpy(dtype=float)
    irradiance = spectra["global"].to_numpy(dtype=float)
    return wavelength_nm, irradiance, float(np.trapezoid(irradiance, wavelength_nm))


def short_circuit_current_a_per_m2(gap_ev: float) -> float:
    """J_sc (A m^-2) under AM1.5G when every photon above the gap yields one electron."""
    if not gap_ev > 0:
        return 0.0
    wavelength_nm, irradiance, _ = _am15g()
    edge_nm = _H_J_S * _C_M_S / (gap_ev * _Q_C) * 1e9
    wl, e = wavelength_nm, irradiance
    if edge_nm < wavelength_nm[-1]:  # integrate up to the absorption edge exactly
        below = wavelength_nm < edge_nm
        wl = np.append(wavelength_nm[below], edge_nm)
        e = np.append(irradiance[below], np.interp(edge_nm, wavelength_nm, irradiance))
    photon_flux = e * (wl * 1e-9) / (_H_J_S * _C_M_S)  # photons s^-1 m^-2 nm^-1
    return float(_Q_C * np.trapezoid(photon_flux, wl))


def radiative_saturation_current_a_per_m2(gap_ev: float, temperature_k: float = 300.0) -> float:
    """J_0 (A m^-2): black-body photon emission above the gap, J_0 = q 2 pi / (h^3 c^2) int E^2 / (e^{E/kT} - 1) dE."""
    from scipy.integrate import quad

    kt_j = _KB_J_K * temperature_k
    x_gap = gap_ev * _Q_C / kt_j
    # in x = E / kT: int x^2 / (e^x - 1) dx from x_gap, written with e^-x to avoid overflow
    integral, _ = quad(lambda x: x * x * math.exp(-x) / -math.expm1(-x), x_gap, x_gap + 200.0, limit=200)
    return _Q_C * 2.0 * math.pi / (_H_J_S**3 * _C_M_S**2) * kt_j**3 * integral


def _max_power_fraction(j_sc: float, j_0: float, temperature_k: float) -> float:
    """max_V J(V) V over the AM1.5G power, for J(V) = J_sc - J_0 (exp(qV/kT) - 1)."""
    from scipy.optimize import minimize_scalar

    if j_sc <= 0 or j_0 <= 0:
        return 0.0
    vt = _KB_J_K * temperature_k / _Q_C
    v_oc = vt * math.log1p(j_sc / j_0)
    res = minimize_scalar(
        lambda v: -(j_sc - j_0 * math.expm1(v / vt)) * v, bounds=(0.0, v_oc), method="bounded", options={"xatol": 1e-7}
    )
    _, _, p_in = _am15g()
    return float(-res.fun / p_in)


def shockley_queisser_efficiency(gap_ev: float, temperature_k: float = 300.0) -> float:
    """Detailed-balance efficiency limit (fraction, 0-1) of a single junction with this gap under AM1.5G."""
    if not (gap_ev > 0 and math.isfinite(gap_ev)):
        return 0.0
    j_sc = short_circuit_current_a_per_m2(gap_ev)
    j_0 = radiative_saturation_current_a_per_m2(gap_ev, temperature_k)
    return _max_power_fraction(j_sc, j_0, temperature_k)


def slme(
    energies_ev,
    absorption_coefficient_per_cm,
    thickness_um: float,
    gap_ev: float,
    direct_gap_ev: float | None = None,
    temperature_k: float = 300.0,
) -> float:
    """Spectroscopic limited maximum efficiency (fraction, 0-1; Yu & Zunger 2012) of a film under AM1.5G.

    Args:
        energies_ev: photon energies of the absorption spectrum (increasing).
        absorption_coefficient_per_cm: alpha(E) in cm^-1 on that grid; zero outside it.
        thickness_um: film thickness in micrometres.
        gap_ev: fundamental gap; no absorption is counted below it.
        direct_gap_ev: lowest direct allowed gap (default: the fundamental gap).
    """
    energies = np.asarray(energies_ev, dtype=float)
    alpha_per_m = np.asarray(absorption_coefficient_per_cm, dtype=float) * 100.0
    if energies.ndim != 1 or energies.shape != alpha_per_m.shape or len(energies) < 2:
        raise ValueError("energies_ev and absorption_coefficient_per_cm must be 1-D arrays of the same length")
    if not (gap_ev > 0 and thickness_um > 0):
        return 0.0
    thickness_m = thickness_um * 1e-6

    def absorptivity(e_ev):
        alpha = np.interp(e_ev, energies, alpha_per_m, left=0.0, right=0.0)
        return np.where(e_ev >= gap_ev, -np.expm1(-2.0 * alpha * thickness_m), 0.0)

    wavelength_nm, irradiance, _ = _am15g()
    photon_energy_ev = _H_J_S * _C_M_S / (wavelength_nm * 1e-9) / _Q_C
    photon_flux = irradiance * (wavelength_nm * 1e-9) / (_H_J_S * _C_M_S)
    j_sc = _Q_C * float(np.trapezoid(absorptivity(photon_energy_ev) * photon_flux, wavelength_nm))

    kt_ev = _KB_J_K * temperature_k / _Q_C
    grid = np.linspace(gap_ev, max(energies[-1], gap_ev + 60 * kt_ev), 20000)
    bb = grid**2 * np.exp(-grid / kt_ev) / -np.expm1(-grid / kt_ev)  # E^2 / (e^{E/kT} - 1), eV^2
    integral_j = float(np.trapezoid(absorptivity(grid) * bb, grid)) * _Q_C**3
    j_0_rad = _Q_C * 2.0 * math.pi / (_H_J_S**3 * _C_M_S**2) * integral_j
    f_r = math.exp(-max(0.0, (direct_gap_ev or gap_ev) - gap_ev) / kt_ev)
    return _max_power_fraction(j_sc, j_0_rad / f_r, temperature_k)
