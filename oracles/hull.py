"""Reference convex hull: energy above the hull, decomposition, and coating-screen properties.

A candidate's stability is only as good as the hull it is measured against. ``ReferenceHull``
holds the competing phases of a reference database as formation energies per atom (elements
at 0) and answers, for a composition and a formation energy on the same scale:

* ``stability``: the signed distance to the reference hull and the phases it decomposes into
  (pymatgen ``PhaseDiagram.get_decomp_and_e_above_hull``);
* ``electrochemical_window``: the voltage range (V vs Li/Li+) over which the phase is neither
  lithiated nor delithiated, from the Li element profile of the phase diagram with the
  candidate added (Richards et al., Chem. Mater. 28, 266 (2016));
* ``interface_reaction_energy``: the most negative reaction energy of the candidate with a
  partner phase over all mixing ratios (pymatgen ``InterfacialReactivity``).

Sources of reference phases: ``ReferenceHull.shipped()`` (a table inside the package, built
by ``scripts/build_reference_hull.py``; see ``data/README.md``), ``ReferenceHull.from_mp_api``
(live Materials Project entries, when the caller has an API key), ``ReferenceHull.from_optimade``
(an OPTIMADE provider that serves formation energies) and ``ReferenceHull.from_csv``.
The OPTIMADE standard defines no energy field: providers that serve energies do so under
provider-specific names (e.g. Alexandria's ``_alexandria_formation_energy_per_atom``) with their
own DFT settings and corrections, so the user names the field, and is responsible for its being
on a scale comparable with the oracle's (Alexandria's PBE set applies MP2020-compatible corrections).

How the oracles use it
----------------------
The MLIP tier (``mlip.MlipOracle``) and the GPAW tiers (``gpaw.GpawPbeOracle``) take a ``hull``
setting (``HullSettings``: ``source: auto | shipped | mp-api | optimade``). ``ReferenceHullMixin``
resolves it once, on first use (``auto`` is ``mp-api`` when ``MP_API_KEY`` is set at that moment,
else ``optimade`` when ``optimade_url`` is configured, else ``shipped``; nothing reads the
environment at import), puts the resolved source and the shipped table's version
(or ``mp-api/MP2020``) into the oracle's ``version``, and hands out the hull covering a
chemical system (``reference_hull``; mp-api queries that system, cached on disk under the
site's ``cache_dir``). Every observation records the version of the hull it used in
``extra["hull_reference"]`` and its decomposition in ``extra["decomposition"]``.

Energy scale
------------
Every energy here is on the Materials Project **MP2020** scale (``MaterialsProject2020Compatibility``
corrections: anion/oxide corrections and the GGA/GGA+U mixing correction; Wang et al., Sci.
Rep. 11, 15496 (2021)). The shipped table comes from a pre-2021 MP snapshot whose formation
energies carry the *legacy* ``MaterialsProjectCompatibility`` corrections (bromides, iodides
and selenides uncorrected, Fe in oxides corrected by -2.733 eV instead of -2.256 eV, ...); the
build script moves each entry onto the MP2020 scale with ``legacy_to_mp2020_shift_ev_per_atom``.

MLIP energies: do they need the MP2020 corrections?
---------------------------------------------------
* **CHGNet (0.3.0, 0.2.0): no, they already include them.** CHGNet was trained on MPtrj
  energies *after* MP2020 corrections. Sources checked: CHGNet's ``examples/fine_tuning.ipynb``
  ("Extras 1: GGA / GGA+U compatibility": users must apply ``MaterialsProject2020Compatibility``
  to their own VASP energies to keep them compatible with the pretrained labels), and
  matbench-discovery's ``models/chgnet/join_chgnet_results.py``, which turns ``chgnet_energy``
  into formation energies with MP elemental references and no correction step. Applying
  MP2020 again would count the corrections twice.
* **SevenNet-0 (7net-0): yes.** matbench-discovery's ``models/sevennet/join_7net_preds.py``:
  "As SevenNet-0 (11July2024) is trained on 'uncorrected energy' of MPtrj, MP formation energy
  corrections need to be applied", done with ``MaterialsProject2020Compatibility`` on
  ``ComputedStructureEntry`` objects before computing formation energies.
* CHGNet ``r2scan`` is on the r2SCAN scale: not comparable with this hull (refused).

Measured (rocksalt/antifluorite cells at MP lattice constants, MP elemental references,
against the shipped table): CHGNet 0.3.0 without corrections is off by +0.03 (NaCl), +0.06
(Li2O), +0.06 (MnO), +0.00 (NiO), +0.08 (CoO) eV/atom, and by -0.3 to -1.6 eV/atom with them;
SevenNet-0 with corrections by +0.01 (NaCl), +0.02 (Li2O), +0.04 (MnO), -0.06 (NiO), +0.01
(LiF) eV/atom, and by +0.2 to +1.6 eV/atom without them.

``corrected_formation_energy`` applies the corrections (or not, ``apply_mp2020``) to the
compound and to the elemental references alike (pure elements get no MP2020 correction) and
returns the formation energy per atom on the MP2020 scale. ``mp_elemental_energies_ev_per_atom``
gives MP's own uncorrected PBE energies of the elemental ground states (the references
matbench-discovery uses with MLIPs); an oracle may instead pass its own model's elemental
energies.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import io
import itertools
import json
import math
import os
import warnings
from collections.abc import Iterable, Sequence
import dataclasses
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from matloop.core.records import OracleError

#: file names inside ``matloop.oracles/data``
SHIPPED_TABLE = "mp_hull.csv.gz"
ELEMENTAL_REFS = "mp_elemental_ref_energies.json"
#: a phase is a hull vertex when its energy above the hull is within this (eV/atom)
HULL_TOLERANCE_EV_PER_ATOM = 1e-6
#: phase diagrams kept per ReferenceHull before the cache is emptied
_MAX_CACHED_DIAGRAMS = 256
#: the energy scale every ReferenceHull uses
SCHEME = "MP2020"
#: elements whose oxides and fluorides MP computes with GGA+U (MPRelaxSet)
GGA_U_ELEMENTS = ("Co", "Cr", "Fe", "Mn", "Mo", "Ni", "V", "W")
#: anions MP2020 corrects (besides oxide and sulfide) when they carry a negative oxidation state
_MP2020_ANIONS = frozenset({"Br", "I", "Se", "Si", "Sb", "Te", "H", "N", "F", "Cl"})


# -- records ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReferencePhase:
    """One competing phase: reduced formula, formation energy (eV/atom, MP2020 scale), id."""

    formula: str
    formation_energy_ev_per_atom: float
    id: str = ""
    on_hull: bool = True


@dataclass(frozen=True)
class Stability:
    """Where a composition at a given formation energy sits relative to the reference hull.

    Attributes:
        formula: reduced formula of the candidate.
        formation_energy_ev_per_atom: the formation energy that was placed on the hull.
        e_above_hull_ev_per_atom: signed distance to the reference hull. Negative when the
            candidate lies *below* the reference hull (it would become a new hull vertex):
            the value is then its energy minus the hull built without it, i.e. by how much
            it beats the known competing phases.
        decomposition: (reduced formula, atom fraction) of the reference phases the candidate
            decomposes into (or, when below the hull, the phases it competes with).
        reference_phases: the hull vertices of the candidate's chemical system that were used,
            as ``formula:id``.
        hull_version: ``ReferenceHull.version`` of the hull.
    """

    formula: str
    formation_energy_ev_per_atom: float
    e_above_hull_ev_per_atom: float
    decomposition: tuple[tuple[str, float], ...]
    reference_phases: tuple[str, ...]
    hull_version: str

    @property
    def is_stable(self) -> bool:
        """True when on or below the reference hull (within 1e-6 eV/atom)."""
        return self.e_above_hull_ev_per_atom <= HULL_TOLERANCE_EV_PER_ATOM


@dataclass(frozen=True)
class InterfaceReaction:
    """Most negative reaction between a candidate and a partner (pymatgen InterfacialReactivity).

    Attributes:
        ev_per_atom_min: reaction energy per atom of mixture at the worst mixing ratio (<= 0;
            0 means no reaction).
        ratio: mixing ratio x at that minimum: the mixture is x candidate + (1 - x) partner,
            per atom.
        products: reduced formulas of the products at that ratio.
        reaction: the balanced reaction at that ratio, as text.
    """

    ev_per_atom_min: float
    ratio: float
    products: tuple[str, ...]
    reaction: str

    def __iter__(self):
        """Unpacks as ``(ev_per_atom_min, ratio, products)``."""
        return iter((self.ev_per_atom_min, self.ratio, self.products))


# -- the hull --------------------------------------------------------------------------------
class ReferenceHull:
    """Formation-energy convex hull of a reference database, one phase diagram per chemical system.

    Args:
        phases: competing phases (elements may be omitted: every element that occurs gets a
            0 eV/atom reference).
        source: short description of where the phases come from; enters ``version``.
        elements: the elements the source covers (default: those occurring in ``phases``);
            a composition with any other element is refused, since its hull is unknown.
    """

    def __init__(self, phases: Sequence[ReferencePhase], source: str, elements: Iterable[str] | None = None):
        from pymatgen.core import Composition

        self.source = source
        self.phases = tuple(phases)
        self._by_system: dict[frozenset[str], list[ReferencePhase]] = {}
        seen: set[str] = set()
        for ph in self.phases:
            system = frozenset(str(el) for el in Composition(ph.formula).elements)
            self._by_system.setdefault(system, []).append(ph)
            seen |= system
        self.elements = frozenset(elements) if elements is not None else frozenset(seen)
        digest = hashlib.sha256()
        for ph in sorted(self.phases, key=lambda p: (p.formula, p.id)):
            digest.update(f"{ph.formula},{ph.formation_energy_ev_per_atom:.6f},{ph.id};".encode())
        self.content_hash = digest.hexdigest()[:12]
        self._diagrams: dict[frozenset[str], Any] = {}

    @property
    def version(self) -> str:
        """Source, energy scale and content hash: changes whenever a reference energy changes."""
        return f"{self.source}/{SCHEME}/{self.content_hash}"

    def __repr__(self) -> str:
        return f"ReferenceHull({self.version}, {len(self.phases)} phases, {len(self.elements)} elements)"

    # -- constructors ------------------------------------------------------------------------
    @classmethod
    def shipped(cls) -> ReferenceHull:
        """The table shipped with matloop (cached per process); see ``oracles/data/README.md``."""
        return _shipped_hull()

    @classmethod
    def from_csv(cls, path: str | Path, source: str | None = None) -> ReferenceHull:
        """A hull from a CSV (optionally gzipped) with ``formula,formation_energy_ev_per_atom[,id,on_hull]``."""
        path = Path(path)
        raw = path.read_bytes()
        return cls._from_csv_bytes(raw, source or f"csv:{path.name}")

    @classmethod
    def _from_csv_bytes(cls, raw: bytes, source: str) -> ReferenceHull:
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        text = raw.decode()
        rows = csv.DictReader(line for line in io.StringIO(text) if not line.startswith("#"))
        phases = [
            ReferencePhase(
                formula=row["formula"],
                formation_energy_ev_per_atom=float(row["formation_energy_ev_per_atom"]),
                id=row.get("id") or "",
                on_hull=row.get("on_hull", "1") != "0",
            )
            for row in rows
        ]
        return cls(phases, source)

    @classmethod
    def from_mp_api(
        cls, chemsys: str | Iterable[str], api_key: str, cache_dir: str | Path | None = None
    ) -> ReferenceHull:
        """Live Materials Project entries of a chemical system (GGA/GGA+U thermo type, MP2020-corrected).

        Uses ``mp_api.client.MPRester.get_entries_in_chemsys`` (install ``matloop[mp]``); the
        formation energies of every entry are cached on disk as JSON per chemical system, so
        a campaign queries MP once. The caller decides when to use this (e.g. when
        ``MP_API_KEY`` is set); nothing here reads the environment.

        Args:
            chemsys: "Li-Co-O" or an iterable of element symbols.
            api_key: Materials Project API key.
            cache_dir: folder for ``mp-<chemsys>.json`` caches (none: no cache).
        """
        elements = sorted(chemsys.split("-") if isinstance(chemsys, str) else set(chemsys))
        key = "-".join(elements)
        cache = Path(cache_dir) / f"mp-{key}.json" if cache_dir else None
        if cache is not None and cache.exists():
            data = json.loads(cache.read_text())
        else:
            try:
                from mp_api.client import MPRester
            except ImportError as exc:  # optional dependency
                raise OracleError("the Materials Project client is not installed: pip install 'matloop[mp]'") from exc
            from pymatgen.analysis.phase_diagram import PhaseDiagram

            with MPRester(api_key) as mpr:
                # pinned to the GGA/GGA+U (MP2020) hull; the default mixes in r2SCAN entries
                entries = mpr.get_entries_in_chemsys(
                    elements, compatible_only=True, additional_criteria={"thermo_types": ["GGA_GGA+U"]}
                )
            if not entries:
                raise OracleError(f"Materials Project returned no entries for {key}")
            pd = PhaseDiagram(entries)
            data = {
                "chemsys": key,
                "phases": [
                    {
                        "formula": e.composition.reduced_formula,
                        "formation_energy_ev_per_atom": float(pd.get_form_energy_per_atom(e)),
                        "id": str(e.entry_id),
                    }
                    for e in entries
                ],
            }
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.write_text(json.dumps(data, indent=1))
        phases = [ReferencePhase(**p) for p in data["phases"]]
        return cls(phases, f"mp-api:{key}", elements=elements)

    @classmethod
    def from_optimade(
        cls, base_url: str, chemsys: str | Iterable[str], energy_field: str,
        cache_dir: str | Path | None = None, timeout_s: float = 60.0,
    ) -> ReferenceHull:
        """Phases of a chemical system from an OPTIMADE provider that serves formation energies.

        Queries ``/v1/structures`` for every entry whose elements lie within the system (one
        query per sub-system, ``elements HAS ALL ... AND nelements=n``, which every provider
        supports, unlike the optional ``HAS ONLY``), asks for ``chemical_formula_reduced`` and
        ``energy_field`` only, follows ``links.next`` and caches the phases on disk as JSON per
        provider and system. Entries without a numeric ``energy_field`` are skipped.

        Args:
            base_url: the provider's base URL (without ``/v1``).
            chemsys: "Li-Co-O" or an iterable of element symbols.
            energy_field: the provider's formation-energy field, eV/atom relative to the elements.
            cache_dir: folder of ``optimade-<host>-<chemsys>.json`` caches (none: no cache).
        """
        import urllib.error
        import urllib.parse
        import urllib.request

        elements = sorted(chemsys.split("-") if isinstance(chemsys, str) else set(chemsys))
        key = "-".join(elements)
        host = urllib.parse.urlparse(base_url).netloc.replace(":", "_") or "provider"
        cache = Path(cache_dir) / f"optimade-{host}-{key}-{energy_field.strip('_')}.json" if cache_dir else None
        if cache is not None and cache.exists():
            phases = [ReferencePhase(**p) for p in json.loads(cache.read_text())["phases"]]
            return cls(phases, f"optimade:{host}:{key}")  # covers only the elements it served
        phases = []
        for n in range(1, len(elements) + 1):
            for subset in itertools.combinations(elements, n):
                flt = "elements HAS ALL " + ",".join(f'"{e}"' for e in subset) + f" AND nelements={n}"
                query = urllib.parse.urlencode({"filter": flt, "page_limit": 100,
                                                "response_fields": f"chemical_formula_reduced,{energy_field}"})
                url: str | None = f"{base_url.rstrip('/')}/v1/structures?{query}"
                while url:
                    try:
                        with urllib.request.urlopen(url, timeout=timeout_s) as r:
                            page = json.load(r)
                    except (urllib.error.URLError, OSError, ValueError) as exc:
                        raise OracleError(f"OPTIMADE provider {base_url}: {exc}") from exc
                    for entry in page.get("data", []):
                        attrs = entry.get("attributes", {})
                        e = attrs.get(energy_field)
                        if isinstance(e, (int, float)) and not isinstance(e, bool) and math.isfinite(e):
                            phases.append(ReferencePhase(attrs["chemical_formula_reduced"], float(e), str(entry["id"])))
                    nxt = (page.get("links") or {}).get("next")
                    url = nxt.get("href") if isinstance(nxt, dict) else nxt
        if not phases:
            raise OracleError(f"OPTIMADE provider {base_url} returned no entries with {energy_field} for {key}")
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps({"chemsys": key, "base_url": base_url, "energy_field": energy_field,
                                         "phases": [dataclasses.asdict(p) for p in phases]}, indent=1))
        return cls(phases, f"optimade:{host}:{key}")  # covers only the elements it served

    # -- phase diagrams ----------------------------------------------------------------------
    def check_elements(self, elements: Iterable[str]) -> None:
        """Raise ``OracleError`` naming the elements the reference does not cover."""
        missing = sorted(set(elements) - self.elements)
        if missing:
            raise OracleError(
                f"reference hull {self.source} has no phases for element(s) {', '.join(missing)}: "
                "their competing phases are unknown, so no energy above the hull can be given"
            )

    def phases_in(self, elements: Iterable[str]) -> list[ReferencePhase]:
        """Reference phases whose elements are all among ``elements``."""
        els = frozenset(elements)
        if len(els) <= 12:
            subsystems = (
                frozenset(c) for r in range(1, len(els) + 1) for c in itertools.combinations(sorted(els), r)
            )
            return [ph for s in subsystems for ph in self._by_system.get(s, ())]
        return [ph for s, phs in self._by_system.items() if s <= els for ph in phs]

    def phase_diagram(self, elements: Iterable[str], extra_phases: Sequence[ReferencePhase] = ()):
        """pymatgen ``PhaseDiagram`` of the reference phases in a chemical system (cached).

        Args:
            elements: the chemical system.
            extra_phases: further phases on the same scale (e.g. those a campaign computed);
                the ones inside the system join the hull of this call only (not cached).
        """
        from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
        from pymatgen.core import Composition

        els = frozenset(elements)
        self.check_elements(els)
        inside = [ph for ph in extra_phases if {str(el) for el in Composition(ph.formula).elements} <= els]
        if inside:
            base = self.phase_diagram(els)
            entries = list(base.stable_entries)  # phases above the hull cannot shape it
            for ph in inside:
                comp = Composition(ph.formula)
                entries.append(
                    PDEntry(comp, ph.formation_energy_ev_per_atom * comp.num_atoms, name=comp.reduced_formula,
                            attribute=ph.id)
                )
            return PhaseDiagram(entries)
        if els not in self._diagrams:
            if len(self._diagrams) >= _MAX_CACHED_DIAGRAMS:  # bound the memory of long campaigns
                self._diagrams.clear()
            entries = [PDEntry(Composition(el), 0.0, name=el, attribute="element") for el in sorted(els)]
            for ph in self.phases_in(els):
                comp = Composition(ph.formula)
                entries.append(
                    PDEntry(comp, ph.formation_energy_ev_per_atom * comp.num_atoms, name=ph.formula, attribute=ph.id)
                )
            self._diagrams[els] = PhaseDiagram(entries)
        return self._diagrams[els]

    def find_phase(self, formula: str) -> ReferencePhase | None:
        """The lowest-energy reference phase with this reduced formula, or None."""
        from pymatgen.core import Composition

        comp = Composition(formula)
        reduced = comp.reduced_formula
        system = frozenset(str(el) for el in comp.elements)
        matches = [ph for ph in self._by_system.get(system, ()) if Composition(ph.formula).reduced_formula == reduced]
        if not matches and len(system) == 1 and next(iter(system)) in self.elements:
            return ReferencePhase(reduced, 0.0, "element")
        return min(matches, key=lambda p: p.formation_energy_ev_per_atom) if matches else None

    # -- stability ---------------------------------------------------------------------------
    def stability(
        self, composition, formation_energy_ev_per_atom: float, extra_phases: Sequence[ReferencePhase] = ()
    ) -> Stability:
        """Energy above the reference hull (signed) and decomposition of a composition.

        Args:
            composition: formula string or pymatgen ``Composition``.
            formation_energy_ev_per_atom: on the MP2020 scale (see ``corrected_formation_energy``).
            extra_phases: further competing phases on the same scale (see ``phase_diagram``).
        """
        from pymatgen.analysis.phase_diagram import PDEntry
        from pymatgen.core import Composition

        comp = Composition(composition)
        if not math.isfinite(formation_energy_ev_per_atom):
            raise OracleError(f"formation energy of {comp.reduced_formula} is not finite")
        pd = self.phase_diagram((str(el) for el in comp.elements), extra_phases)
        entry = PDEntry(comp, formation_energy_ev_per_atom * comp.num_atoms, name="candidate")
        decomp, e_hull = pd.get_decomp_and_e_above_hull(entry, allow_negative=True)
        decomposition = tuple(
            sorted(
                ((e.composition.reduced_formula, round(float(f), 6)) for e, f in decomp.items()),
                key=lambda t: (-t[1], t[0]),
            )
        )
        used = tuple(sorted(f"{e.name}:{e.attribute or ''}" for e in pd.stable_entries))
        return Stability(
            formula=comp.reduced_formula,
            formation_energy_ev_per_atom=float(formation_energy_ev_per_atom),
            e_above_hull_ev_per_atom=float(e_hull),
            decomposition=decomposition,
            reference_phases=used,
            hull_version=self.version,
        )

    # -- coating-screen properties -------------------------------------------------------------
    def _diagram_with(
        self,
        composition,
        formation_energy_ev_per_atom: float,
        extra_elements: Iterable[str],
        extra_phases: Sequence[ReferencePhase] = (),
    ):
        """Phase diagram of the reference hull vertices plus the candidate (lowered onto the hull if above it)."""
        from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
        from pymatgen.core import Composition

        comp = Composition(composition)
        els = {str(el) for el in comp.elements} | set(extra_elements)
        base = self.phase_diagram(els, extra_phases)
        e_total = formation_energy_ev_per_atom * comp.num_atoms
        _, e_hull = base.get_decomp_and_e_above_hull(PDEntry(comp, e_total), allow_negative=True)
        if e_hull > -1e-4:
            # a phase on or above the hull has no stability range of its own; evaluate it just
            # below the hull (the usual convention for metastable electrolytes such as cubic
            # LLZO, whose 0.05-2.91 V in Richards et al. this reproduces), so the window is that
            # of the phase were it stabilised. ``stability`` says how far off it is.
            e_total -= (e_hull + 1e-4) * comp.num_atoms
        candidate = PDEntry(comp, e_total, name=comp.reduced_formula, attribute="candidate")
        return PhaseDiagram([*base.stable_entries, candidate]), candidate

    def electrochemical_window(
        self,
        composition,
        formation_energy_ev_per_atom: float,
        mobile: str = "Li",
        extra_phases: Sequence[ReferencePhase] = (),
    ) -> tuple[float, float]:
        """Voltage range (V vs mobile/mobile+) over which the phase is stable against the mobile ion.

        The range of the mobile element's chemical potential over which the phase is neither
        reduced (takes up the mobile element) nor oxidised (gives it up), from
        ``PhaseDiagram.get_element_profile`` on the reference hull plus the candidate; the
        voltage is -(mu - mu_metal)/e. A phase without the mobile element that never gives
        any up has ``v_max = inf``. A phase above the hull is evaluated as if it were on it.
        ``extra_phases`` join the hull as in ``phase_diagram``.
        """
        from pymatgen.core import Composition, Element

        comp = Composition(composition)
        pd, _ = self._diagram_with(comp, formation_energy_ev_per_atom, [mobile], extra_phases)
        ref = pd.el_refs[Element(mobile)].energy_per_atom
        profile = pd.get_element_profile(Element(mobile), comp)
        mus = [p["chempot"] - ref for p in profile]
        # profile steps run from the metal (mu = 0) to ever lower mu; the phase itself is the
        # equilibrium on the step whose element evolution is zero.
        for i, p in enumerate(profile):
            if abs(p["evolution"]) < 1e-8:
                v_min = max(0.0, -mus[i])
                v_max = -mus[i + 1] if i + 1 < len(mus) else math.inf
                return float(v_min), float(v_max)
        raise OracleError(f"{comp.reduced_formula} is never in equilibrium with {mobile} on this hull")

    def interface_reaction_energy(
        self,
        composition,
        formation_energy_ev_per_atom: float,
        partner_formula: str,
        extra_phases: Sequence[ReferencePhase] = (),
    ) -> InterfaceReaction:
        """Most negative mutual reaction energy (eV/atom of mixture) of the candidate with a partner phase.

        pymatgen ``InterfacialReactivity`` over all mixing ratios, with both reactants at the
        hull energy of their composition (``use_hull_energy=True``), so a metastable partner
        such as cubic Li7La3Zr2O12 or a metastable candidate does not count its own
        decomposition as a reaction (``stability`` reports that). A partner the reference does
        not hold raises ``OracleError``. ``extra_phases`` join the hull as in ``phase_diagram``.
        Unpacks as ``(ev_per_atom_min, ratio, products)``.
        """
        from pymatgen.analysis.interface_reactions import InterfacialReactivity
        from pymatgen.core import Composition

        comp = Composition(composition)
        partner = Composition(partner_formula)
        self.check_elements({str(el) for el in partner.elements})
        if self.find_phase(partner_formula) is None:
            raise OracleError(
                f"partner {partner.reduced_formula} is not in the reference hull {self.source}: "
                "no reaction energy against it can be given"
            )
        pd, _ = self._diagram_with(
            comp, formation_energy_ev_per_atom, [str(el) for el in partner.elements], extra_phases
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kinks = InterfacialReactivity(comp, partner, pd, norm=True, use_hull_energy=True).get_kinks()
        _, x, energy, reaction, _ = min(kinks, key=lambda k: k[2])
        products = tuple(sorted(c.reduced_formula for c in reaction.products))
        return InterfaceReaction(
            ev_per_atom_min=min(0.0, float(energy)) + 0.0, ratio=float(x), products=products, reaction=str(reaction)
        )


@lru_cache(maxsize=1)
def _shipped_hull() -> ReferenceHull:
    raw = resources.files("matloop.oracles").joinpath("data", SHIPPED_TABLE).read_bytes()
    header = gzip.decompress(raw).split(b"\n", 1)[0].decode()
    source = header[1:].strip() if header.startswith("#") else "shipped"
    return ReferenceHull._from_csv_bytes(raw, source)


# -- choosing the reference: the ``hull:`` settings of the oracles ----------------------------
#: environment variable holding a Materials Project API key (read when a hull is chosen, never at import)
MP_API_KEY_ENV = "MP_API_KEY"
#: the oracle-version tag of the live Materials Project source (its content changes over time;
#: each observation records the content hash of the chemical system it used)
MP_API_VERSION = f"mp-api/{SCHEME}"


class HullSettings(BaseModel):
    """Which reference hull an oracle measures stability against (a science setting)."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["auto", "shipped", "mp-api", "optimade"] = Field(
        "auto",
        description="shipped: the Materials Project table inside matloop (offline; see oracles/data/README.md); "
        f"mp-api: live Materials Project entries per chemical system (needs {MP_API_KEY_ENV} and matloop[mp]; "
        "cached under the site's cache_dir); optimade: the provider at optimade_url, formation energies from "
        f"optimade_energy_field (cached likewise); auto: mp-api when {MP_API_KEY_ENV} is set when the oracle is "
        "first used, else optimade when optimade_url is set, else shipped",
    )
    optimade_url: str | None = Field(
        None, description="base URL of an OPTIMADE provider serving formation energies, e.g. "
        "https://alexandria.icams.rub.de/pbe",
    )
    optimade_energy_field: str | None = Field(
        None, description="the provider's formation-energy field (eV/atom vs the elements), e.g. "
        "_alexandria_formation_energy_per_atom; its scale must match the oracle's (MP2020)",
    )

    @model_validator(mode="after")
    def _optimade_complete(self) -> HullSettings:
        if (self.source == "optimade" or self.optimade_url) and not (self.optimade_url and self.optimade_energy_field):
            raise ValueError("an OPTIMADE hull needs both optimade_url and optimade_energy_field")
        return self


def resolve_hull_source(source: str, optimade_url: str | None = None) -> str:
    """``shipped``, ``mp-api`` or ``optimade``: ``auto`` becomes ``mp-api`` when ``MP_API_KEY`` is set now,
    else ``optimade`` when a provider URL is configured, else ``shipped``."""
    if source == "auto":
        if os.environ.get(MP_API_KEY_ENV):
            return "mp-api"
        return "optimade" if optimade_url else "shipped"
    if source not in ("shipped", "mp-api", "optimade"):
        raise OracleError(f"unknown hull source {source!r}; known: auto, shipped, mp-api, optimade")
    return source


def hull_source_version(resolved: str, settings: HullSettings | None = None) -> str:
    """What enters an oracle's version for a resolved source: the shipped table's version,
    ``mp-api/MP2020``, or the OPTIMADE provider and energy field."""
    if resolved == "shipped":
        return ReferenceHull.shipped().version
    if resolved == "optimade" and settings is not None:
        return f"optimade/{settings.optimade_url}/{settings.optimade_energy_field}"
    return MP_API_VERSION


def reference_hull(resolved: str, elements: Iterable[str], cache_dir: str | Path | None = None,
                   settings: HullSettings | None = None) -> ReferenceHull:
    """The reference hull of a resolved source that covers ``elements`` (the shipped one covers them all).

    Args:
        resolved: ``shipped``, ``mp-api`` or ``optimade`` (see ``resolve_hull_source``).
        elements: the chemical system needed (mp-api and OPTIMADE query exactly this system).
        cache_dir: folder of the mp-api and OPTIMADE JSON caches.
        settings: the ``HullSettings`` (the OPTIMADE provider and field).

    Raises:
        OracleError: an element the reference does not cover (named), or mp-api without a key.
    """
    els = sorted(set(elements))
    if resolved == "shipped":
        hull = ReferenceHull.shipped()
    elif resolved == "optimade":
        if settings is None or not settings.optimade_url or not settings.optimade_energy_field:
            raise OracleError("hull source optimade needs optimade_url and optimade_energy_field")
        hull = _optimade_hull(settings.optimade_url, "-".join(els), settings.optimade_energy_field,
                              str(cache_dir) if cache_dir else None)
    else:
        key = os.environ.get(MP_API_KEY_ENV)
        if not key:
            raise OracleError(f"hull source mp-api needs the {MP_API_KEY_ENV} environment variable")
        hull = _mp_api_hull("-".join(els), key, str(cache_dir) if cache_dir else None)
    hull.check_elements(els)
    return hull


class ReferenceHullMixin:
    """For oracles whose settings have ``hull`` (``HullSettings``) and ``formation_energy``.

    Resolves the hull source once, on first use (so ``auto`` reads ``MP_API_KEY`` then, and
    the resolution travels with the pickled oracle to worker processes), and puts the
    resolved source and the reference's version into the oracle's ``version``.
    """

    _hull_source: str | None = None

    def hull_source(self) -> str:
        """``shipped`` or ``mp-api``, resolved on first use and kept."""
        if self._hull_source is None:
            self._hull_source = resolve_hull_source(self.settings.hull.source, self.settings.hull.optimade_url)
        return self._hull_source

    def version_inputs(self) -> Any:
        """The science settings and, with formation energies, the hull's version.

        ``hull.source: auto`` enters as the source it resolved to, so it shares results with that source.
        """
        science: Any = self.settings.model_dump(mode="json")
        if self.settings.formation_energy:
            source = self.hull_source()
            science["hull"]["source"] = source
            science = [science, hull_source_version(source, self.settings.hull)]
        return science

    def reference_hull(self, elements: Iterable[str]) -> ReferenceHull:
        """The reference hull covering ``elements`` (mp-api and OPTIMADE caches go to ``<site cache_dir>/mp-api``)."""
        return reference_hull(self.hull_source(), elements, self.site.cache_folder("mp-api"), self.settings.hull)


@lru_cache(maxsize=32)
def _optimade_hull(base_url: str, chemsys: str, energy_field: str, cache_dir: str | None) -> ReferenceHull:
    return ReferenceHull.from_optimade(base_url, chemsys, energy_field, cache_dir=cache_dir)


@lru_cache(maxsize=32)
def _mp_api_hull(chemsys: str, api_key: str, cache_dir: str | None) -> ReferenceHull:
    return ReferenceHull.from_mp_api(chemsys, api_key, cache_dir=cache_dir)


# -- energy scales ---------------------------------------------------------------------------
@lru_cache(maxsize=1)
def mp_elemental_energies_ev_per_atom() -> dict[str, float]:
    """MP's uncorrected PBE energies (eV/atom) of the lowest-energy elemental phases (2022-09-19)."""
    text = resources.files("matloop.oracles").joinpath("data", ELEMENTAL_REFS).read_text()
    return {k: float(v) for k, v in json.loads(text)["energies_ev_per_atom"].items()}


def mlip_needs_mp2020(backend: str, model: str) -> bool:
    """Whether an MLIP's total energies still need the MP2020 corrections (see module docstring)."""
    backend = backend.lower()
    if backend == "chgnet":
        if "r2scan" in model.lower():
            raise OracleError("CHGNet r2scan energies are on the r2SCAN scale, not comparable with the MP GGA hull")
        return False  # trained on MP2020-corrected MPtrj energies
    if backend in {"sevennet", "7net"}:
        return True  # trained on uncorrected MPtrj energies
    raise OracleError(f"unknown MLIP backend {backend!r}: its energy scale relative to MP2020 is not known")


@lru_cache(maxsize=1)
def _mp2020():
    from pymatgen.entries.compatibility import MaterialsProject2020Compatibility

    return MaterialsProject2020Compatibility(check_potcar=False)


def mp_calculation_parameters(composition) -> dict:
    """The ``run_type``/``hubbards``/``is_hubbard`` MP would have used for this composition.

    MP runs GGA+U (U values of ``MPRelaxSet``) on Co, Cr, Fe, Mn, Mo, Ni, V, W when the most
    electronegative element is O or F, plain GGA otherwise; matbench-discovery sets the same
    fields on MLIP entries so that ``MaterialsProject2020Compatibility`` accepts them.
    """
    from pymatgen.core import Composition

    comp = Composition(composition)
    elements = sorted((el for el in comp.elements if comp[el] > 0), key=lambda el: el.X)
    anion = elements[-1].symbol if elements else ""
    u_settings = _mp2020().u_settings.get(anion, {})
    hubbards = {el.symbol: float(u_settings[el.symbol]) for el in comp.elements if u_settings.get(el.symbol)}
    return {
        "run_type": "GGA+U" if hubbards else "GGA",
        "hubbards": hubbards,
        "is_hubbard": bool(hubbards),
        "software": "vasp",
    }


def _entry(structure_or_composition, energy_ev: float, oxidation_states: dict | None = None):
    from pymatgen.core import Composition, Structure
    from pymatgen.entries.computed_entries import ComputedEntry, ComputedStructureEntry

    if isinstance(structure_or_composition, Structure):
        comp = structure_or_composition.composition
        params = mp_calculation_parameters(comp)
        entry = ComputedStructureEntry(structure_or_composition, energy_ev, parameters=params)
    else:
        comp = Composition(structure_or_composition)
        entry = ComputedEntry(comp, energy_ev, parameters=mp_calculation_parameters(comp))
    if oxidation_states is not None:
        entry.data["oxidation_states"] = oxidation_states
    return entry


def mp2020_correction_ev(structure_or_composition, oxidation_states: dict | None = None) -> float:
    """Total MP2020 energy correction (eV) of a structure or composition (as written, not per atom).

    With a structure, oxide/peroxide/superoxide and sulfide types come from the bonds; with a
    composition, from pymatgen's list of known peroxides/superoxides. ``oxidation_states``
    (element -> oxidation state) overrides pymatgen's guess that decides which anion
    corrections apply.
    """
    from pymatgen.entries.compatibility import CompatibilityError

    entry = _entry(structure_or_composition, 0.0, oxidation_states)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            adjustments = _mp2020().get_adjustments(entry)
        except CompatibilityError as exc:
            raise OracleError(f"MP2020 correction failed for {entry.composition.reduced_formula}: {exc}") from exc
    return float(sum(a.value for a in adjustments))


def corrected_formation_energy(
    structure_or_composition,
    total_energy_ev: float,
    elemental_energies_ev_per_atom: dict[str, float] | None = None,
    *,
    apply_mp2020: bool = True,
    oxidation_states: dict | None = None,
) -> float:
    """Formation energy per atom on the MP2020 scale from an MLIP (or GGA) total energy.

    ``MaterialsProject2020Compatibility`` is applied to the compound (a
    ``ComputedStructureEntry`` when a structure is given) and to the elemental references
    alike; elements get no correction, so the references enter as given.

    Args:
        structure_or_composition: pymatgen ``Structure`` (preferred: peroxide/sulfide detection)
            or a composition; ``total_energy_ev`` is for exactly this cell/formula.
        total_energy_ev: total energy (eV) of the structure.
        elemental_energies_ev_per_atom: chemical potentials per element on the same raw
            scale as ``total_energy_ev`` (default: MP's uncorrected elemental energies,
            ``mp_elemental_energies_ev_per_atom``).
        apply_mp2020: False for energies that already include the corrections (CHGNet,
            see ``mlip_needs_mp2020``).
        oxidation_states: element -> oxidation state, deciding which anion corrections apply.
    """
    from pymatgen.core import Composition, Structure

    comp = (
        structure_or_composition.composition
        if isinstance(structure_or_composition, Structure)
        else Composition(structure_or_composition)
    )
    mu = elemental_energies_ev_per_atom or mp_elemental_energies_ev_per_atom()
    missing = sorted(str(el) for el in comp.elements if str(el) not in mu)
    if missing:
        raise OracleError(f"no elemental reference energy for {', '.join(missing)}")
    energy = float(total_energy_ev)
    if apply_mp2020:
        energy += mp2020_correction_ev(structure_or_composition, oxidation_states)
    reference = 0.0
    for el, amount in comp.items():
        # elements: MP2020 corrects compounds only, the pure-element entry keeps its energy
        e_el = mu[str(el)] + (mp2020_correction_ev(str(el)) if apply_mp2020 else 0.0)
        reference += amount * e_el
    return (energy - reference) / comp.num_atoms


# -- legacy MP -> MP2020 ---------------------------------------------------------------------
@lru_cache(maxsize=1)
def _legacy_mp():
    from monty.serialization import loadfn
    from pymatgen.entries import compatibility as compat_module
    from pymatgen.entries.compatibility import AnionCorrection, UCorrection
    from pymatgen.io.vasp.sets import MPRelaxSet

    config = Path(compat_module.__file__).parent / "MPCompatibility.yaml"
    if not config.exists():
        import pymatgen.analysis.compatibility as analysis_compat

        config = Path(analysis_compat.__file__).parent / "MPCompatibility.yaml"
    fitted = loadfn(config)["Advanced"]["CompoundEnergies"]
    return AnionCorrection(config), UCorrection(config, MPRelaxSet, "Advanced"), fitted


def legacy_to_mp2020_shift_ev_per_atom(composition) -> float:
    """Shift (eV/atom) that moves a legacy-MP formation energy (pre-2021 MP) onto the MP2020 scale."""
    from pymatgen.core import Composition

    return _legacy_shift(Composition(composition).reduced_formula)


@lru_cache(maxsize=None)
def _legacy_shift(reduced_formula: str) -> float:
    """Legacy-MP -> MP2020 shift of one reduced formula.

    Legacy formation energies are E_raw + legacy anion/U corrections minus elemental
    references in which N2, F2, Cl2 and H2 carry fitted energies (``MPCompatibility.yaml``);
    MP2020 ones are E_raw + MP2020 corrections minus raw elemental energies. So
    ``e_2020 = e_legacy - legacy_corr + mp2020_corr + sum_gas n * (mu_fit - mu_raw)``, per atom.

    Written here because pymatgen has no converter between the schemes. Composition only:
    peroxides/superoxides are recognised by pymatgen's formula lists in both schemes (a
    misclassified one is off by < 0.03 eV per O, since both schemes fitted similar oxide type
    differences); S counts as sulfide only when it is the most electronegative element
    (sulfates get no sulfide correction in either scheme); MP2020 anion corrections follow
    pymatgen's oxidation-state guess.
    """
    from pymatgen.core import Composition
    from pymatgen.entries.computed_entries import ComputedEntry

    comp = Composition(reduced_formula)
    if len(comp) == 1:
        return 0.0
    anion_corr, u_corr, fitted = _legacy_mp()
    params = mp_calculation_parameters(comp)
    elements = sorted(comp.elements, key=lambda el: el.X)
    sulfide = "sulfide" if elements[-1].symbol == "S" else "none"
    entry = ComputedEntry(comp, 0.0, parameters=params, data={"sulfide_type": sulfide})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        legacy = float(anion_corr.get_correction(entry).nominal_value) + float(
            u_corr.get_correction(entry).nominal_value
        )
        entry2020 = ComputedEntry(comp, 0.0, parameters=params, data={"sulfide_type": sulfide})
        # MP2020 corrects an anion when its oxidation state is negative, or (no guess) when it
        # is the most electronegative element; the two differ only when a correctable anion
        # is not the most electronegative one, so only then pay for pymatgen's guess.
        entry2020.data["oxidation_states"] = {}
        if any(el.symbol in _MP2020_ANIONS for el in elements[:-1]):
            with contextlib.suppress(ValueError):
                entry2020.data["oxidation_states"] = (comp.oxi_state_guesses(max_sites=-20) or ({},))[0]
        mp2020 = float(sum(a.value for a in _mp2020().get_adjustments(entry2020)))
    raw = mp_elemental_energies_ev_per_atom()
    gas = sum(
        comp[el] * (fitted[f"{el.symbol}2"] - raw[el.symbol]) for el in comp.elements if f"{el.symbol}2" in fitted
    )
    return (mp2020 - legacy + gas) / comp.num_atoms


__all__ = [
    "GGA_U_ELEMENTS",
    "HullSettings",
    "InterfaceReaction",
    "MP_API_KEY_ENV",
    "ReferenceHull",
    "ReferenceHullMixin",
    "ReferencePhase",
    "Stability",
    "corrected_formation_energy",
    "hull_source_version",
    "legacy_to_mp2020_shift_ev_per_atom",
    "mlip_needs_mp2020",
    "mp2020_correction_ev",
    "mp_calculation_parameters",
    "mp_elemental_energies_ev_per_atom",
    "reference_hull",
    "resolve_hull_source",
]

