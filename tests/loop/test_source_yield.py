"""source_yield: where a campaign's stable, unique, novel discoveries came from (read from the store)."""

from __future__ import annotations

import numpy as np
from pymatgen.core import Lattice, Structure

from matloop.core.records import Candidate, Observation, Request, Status
from matloop.loop.generation import source_yield, sun_counts
from matloop.loop.store import Store


def rocksalt(a: str, b: str, lat: float) -> Structure:
    """Primitive rock-salt cell of conventional lattice constant ``lat``."""
    h = lat / 2
    return Structure(Lattice([[0, h, h], [h, 0, h], [h, h, 0]]), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]])


def observation(req: Request, e_hull: float | None, hull_phases=(), ok=True, cost=1.0, relaxed=None) -> Observation:
    extra = {"hull_phases": list(hull_phases)}
    if relaxed is not None:
        extra["relaxed_structure"] = relaxed.as_dict()
    props = {} if e_hull is None else {"e_above_hull_ev_per_atom": e_hull}
    return Observation(req.id, req.candidate.id, "mlip", "v1", 0, Status.SUCCESS if ok else Status.FAILED,
                       properties=props if ok else {}, extra=extra if ok else {}, cost=cost,
                       reason=None if ok else "relaxation exploded")


def campaign(tmp_path):
    """A store with two generator sources and a pool, every candidate's outcome chosen."""
    new_a = Candidate.from_structure(rocksalt("Li", "At", 5.0), source="wyckoff")       # stable, new formula
    twin = Candidate.from_structure(rocksalt("Li", "At", 5.3), source="wyckoff")        # same structure, scaled
    high = Candidate.from_structure(rocksalt("Na", "At", 5.4), source="wyckoff")        # 0.3 eV above the hull
    known = Candidate.from_structure(rocksalt("K", "Cl", 6.3), source="baseline")       # stable, but a known phase
    failed = Candidate.from_structure(rocksalt("Rb", "At", 6.6), source="baseline")     # relaxation failed
    new_b = Candidate.from_structure(rocksalt("Cs", "At", 7.0), source="baseline")      # stable, new
    unevaluated = Candidate.from_structure(rocksalt("Fr", "At", 7.2), source="baseline")
    pool = Candidate.from_structure(rocksalt("Na", "Cl", 5.64), source="pool")
    cands = [new_a, twin, high, known, failed, new_b, unevaluated, pool]
    store = Store(tmp_path / "c.sqlite")
    store.add_candidates(cands)
    reqs = {c.id: Request(Request.make_id(c.id, "mlip", 0), c, "mlip", 0) for c in cands if c is not unevaluated}
    store.start_iteration(0, {}, list(reqs.values()))
    outcomes = {
        new_a.id: dict(e_hull=0.02, hull_phases=["Li:mp-1", "LiAt2:x"], relaxed=rocksalt("Li", "At", 5.1)),
        twin.id: dict(e_hull=0.05, hull_phases=["Li:mp-1"], cost=3.0),
        high.id: dict(e_hull=0.3, hull_phases=["Na:mp-2"]),
        known.id: dict(e_hull=0.0, hull_phases=["K:mp-3", "KCl:mp-23193", "Cl:mp-4"]),
        failed.id: dict(e_hull=None, ok=False),
        new_b.id: dict(e_hull=-0.01, hull_phases=["Cs:mp-5"]),
        pool.id: dict(e_hull=0.0, hull_phases=["NaCl:mp-22862"]),
    }
    for cid, kw in outcomes.items():
        store.add_observation(observation(reqs[cid], **kw))
    return store


def test_source_yield_counts_stable_unique_novel_per_source(tmp_path):
    store = campaign(tmp_path)
    y = source_yield(store)
    # wyckoff: two stable LiAt structures that are one (StructureMatcher with scaling) and one unstable
    assert {k: y["wyckoff"][k] for k in ("proposed", "evaluated", "stable", "sun")} == \
        {"proposed": 3, "evaluated": 3, "stable": 2, "sun": 1}
    assert np.isclose(y["wyckoff"]["sun_rate"], 1 / 3) and np.isclose(y["wyckoff"]["cost"], 5.0)
    # baseline: KCl is stable but a phase of the reference hull (not novel); the failure and the
    # unevaluated candidate count as proposed only
    b = y["baseline"]
    assert {k: b[k] for k in ("proposed", "evaluated", "stable", "sun")} == \
        {"proposed": 4, "evaluated": 3, "stable": 2, "sun": 1}
    assert np.isclose(b["sun_rate"], 1 / 3)
    assert y["pool"]["sun"] == 0 and y["pool"]["stable"] == 1


def test_stability_threshold_is_a_parameter(tmp_path):
    store = campaign(tmp_path)
    strict = source_yield(store, stable_ev_per_atom=0.0)
    assert strict["wyckoff"]["stable"] == 0 and strict["baseline"]["stable"] == 2 and strict["baseline"]["sun"] == 1
    loose = sun_counts(store.candidates(), store.observations(), stable_ev_per_atom=0.5)
    assert loose["wyckoff"]["stable"] == 3 and loose["wyckoff"]["sun"] == 2  # NaAt is a new formula too


CAMPAIGN = """
name: bandit
objective: {property: e_above_hull_ev_per_atom, goal: minimize}
sources:
  - {name: pool, kind: prototypes, settings: {prototypes: [rocksalt], cations: [Na], anions: [Cl]}}
  - {name: good, kind: substitution, n_per_iteration: 4}
  - {name: poor, kind: substitution, n_per_iteration: 4}
generation: {mix: adaptive}
oracles:
  - {name: mlip, kind: mlip, cost: 1}
budget: {iterations: 2}
store: bandit.sqlite
"""


def test_adaptive_mix_follows_sun_yield_per_cost(tmp_path):
    from matloop.loop.generation import GeneratorSources
    from matloop.loop.ledger import Ledger
    from matloop.loop.spec import load_campaign

    path = tmp_path / "bandit.yaml"
    path.write_text(CAMPAIGN)
    sources = GeneratorSources(load_campaign(path), scoreboard=None, say=lambda text: None)
    # "good": six stable new rock salts; "poor": six evaluated, none stable
    good = [Candidate.from_structure(rocksalt(a, "At", 5.0 + i / 3), source="good") for i, a in enumerate(["Li", "Na", "K", "Rb", "Cs", "Ag"])]
    poor = [Candidate.from_structure(rocksalt(a, "Po", 5.0 + i / 3), source="poor") for i, a in enumerate(["Li", "Na", "K", "Rb", "Cs", "Ag"])]
    store = Store(tmp_path / "b.sqlite")
    store.add_candidates(good + poor)
    reqs = [Request(Request.make_id(c.id, "mlip", 0), c, "mlip", 0) for c in good + poor]
    store.start_iteration(0, {}, reqs)
    for r in reqs:
        store.add_observation(observation(r, 0.0 if r.candidate.source == "good" else 0.5, cost=1.0))
    ledger = Ledger(store)
    rng = np.random.default_rng(0)
    splits = [sources.bandit_split(ledger, 10, rng) for _ in range(200)]
    assert all(sum(s.values()) == 10 for s in splits)
    assert np.mean([s["good"] for s in splits]) > 7.5
    # the same yields at ten times the cost per evaluation: the cheap source gets the draw
    store2 = Store(tmp_path / "c.sqlite")
    store2.add_candidates(good + poor)
    store2.start_iteration(0, {}, reqs)
    for r in reqs:
        store2.add_observation(observation(r, 0.0, cost=10.0 if r.candidate.source == "good" else 1.0))
    splits = [sources.bandit_split(Ledger(store2), 10, rng) for _ in range(50)]
    assert np.mean([s["poor"] for s in splits]) > 7.5


def test_report_shows_where_stable_discoveries_came_from(tmp_path):
    """The report's sources table carries each source's stable and S.U.N. counts from source_yield."""
    import re

    from matloop.loop.report import write_report

    store = campaign(tmp_path)
    store.set_meta("campaign", "yield")
    store.set_meta("objective", {"property": "e_above_hull_ev_per_atom", "goal": "minimize", "oracle": "mlip"})
    store.set_meta("oracles", {"mlip": {"kind": "mlip", "version": "v1", "fidelity": 0, "cost": 1.0}})
    store.close()
    html = (write_report(tmp_path / "c.sqlite", tmp_path / "report", model_insights=False)).read_text()
    section = html[html.index('id="sources"'):]
    assert "S.U.N. rate" in section
    cells = lambda src: re.findall(r"<td[^>]*>([^<]*)</td>", section[section.index(f">{src}<"):])[:8]  # noqa: E731
    wy, base = cells("wyckoff"), cells("baseline")
    assert wy[-3:] == ["2", "1", "0.33"] and base[-3:] == ["2", "1", "0.33"], (wy, base)
