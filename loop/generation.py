"""Generator sources: new candidates drawn before the first iteration and during the loop.

With ``generation.mix: adaptive`` a Thompson-sampling bandit splits each iteration's draw
among the generators by yield per cost. When the campaign's observations carry
``e_above_hull_ev_per_atom`` (the ML tier on a reference hull), a generator's yield is its
S.U.N. count (``source_yield``: stable, unique and novel candidates) out of its evaluated
candidates, and each Beta draw is divided by the generator's mean oracle cost per evaluated
candidate. Without hull distances, a generator wins when a candidate it proposed was picked
by the agent and came back in the top quarter of the counted objective values.

``source_yield(store)`` is the per-source table the report shows: where the stable
discoveries came from.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import numpy as np

from matloop.agents.generation.sources import SOURCE_KINDS
from matloop.core.protocols import CampaignState
from matloop.core.records import Candidate, Observation
from matloop.core.registry import load

from .ledger import Ledger
from .objective import Scoreboard
from .spec import CampaignSpec

log = logging.getLogger("matloop")

#: the property a S.U.N. count reads, and the default stability threshold (eV/atom above the reference hull)
HULL_PROPERTY = "e_above_hull_ev_per_atom"
STABLE_EV_PER_ATOM = 0.1


def _hull_formulas(obs: Observation) -> set[str]:
    """Reduced formulas of the reference-hull phases the oracle placed the candidate among (``extra.hull_phases``)."""
    return {str(p).split(":", 1)[0] for p in obs.extra.get("hull_phases", ())}


def sun_counts(candidates: Iterable[Candidate], observations: Iterable[Observation],
               stable_ev_per_atom: float = STABLE_EV_PER_ATOM) -> dict[str, dict]:
    """Per candidate source: proposed, evaluated, stable, sun, sun_rate (= sun / evaluated), cost.

    A candidate is *evaluated* when it has an observation; *stable* when one of its successful
    observations reports ``e_above_hull_ev_per_atom <= stable_ev_per_atom``; *S.U.N.* when
    stable, novel (its reduced formula is not a phase of the reference hull the oracle used,
    ``extra["hull_phases"]``; generators already return only structures new to the campaign)
    and unique (its relaxed structure, or its own when none is recorded, matches no earlier
    S.U.N. candidate of the same source, pymatgen ``StructureMatcher``). ``cost`` sums the
    oracle cost of the source's observations.
    """
    from pymatgen.core import Structure

    from matloop.agents.generation.validity import Deduplicator

    by_id = {c.id: c for c in candidates}
    obs_of: dict[str, list[Observation]] = {}
    for o in observations:
        if o.candidate_id in by_id:
            obs_of.setdefault(o.candidate_id, []).append(o)
    out: dict[str, dict] = {}
    seen: dict[str, Deduplicator] = {}
    for cid, cand in by_id.items():
        row = out.setdefault(cand.source, {"proposed": 0, "evaluated": 0, "stable": 0, "sun": 0, "cost": 0.0})
        row["proposed"] += 1
        mine = obs_of.get(cid, [])
        if not mine:
            continue
        row["evaluated"] += 1
        row["cost"] += sum(o.cost for o in mine)
        hits = [o for o in mine if o.ok and o.value(HULL_PROPERTY) is not None
                and o.value(HULL_PROPERTY) <= stable_ev_per_atom]
        if not hits:
            continue
        row["stable"] += 1
        best = min(hits, key=lambda o: o.value(HULL_PROPERTY))
        if cand.formula in _hull_formulas(best):
            continue
        relaxed = best.extra.get("relaxed_structure")
        st = Structure.from_dict(relaxed) if isinstance(relaxed, dict) else cand.pmg_structure() if cand.structure else cand.composition
        if seen.setdefault(cand.source, Deduplicator()).add(st):
            row["sun"] += 1
    for row in out.values():
        row["sun_rate"] = row["sun"] / row["evaluated"] if row["evaluated"] else None
        row["cost"] = round(row["cost"], 6)
    return out


def source_yield(store, stable_ev_per_atom: float = STABLE_EV_PER_ATOM) -> dict[str, dict]:
    """Where a campaign's stable discoveries came from: ``sun_counts`` over every candidate and observation of ``store``.

    Returns ``{source: {proposed, evaluated, stable, sun, sun_rate, cost}}`` (``sun_rate`` is
    S.U.N. / evaluated, None when nothing of the source was evaluated).
    """
    return sun_counts(store.candidates(), store.observations(), stable_ev_per_atom)


class GeneratorSources:
    """The campaign's generator sources (every source that is not a file or prototype pool)."""

    def __init__(self, spec: CampaignSpec, scoreboard: Scoreboard, say: Callable[[str], None]):
        self.spec = spec
        self.scoreboard = scoreboard
        self.say = say
        # relative paths in a generator's settings (ase-db path, optimade cache) are taken from the campaign folder
        self.sources = [(s, load("matloop.generators", s.kind)(s.label, dict(s.settings), base_dir=spec.base_dir))
                        for s in spec.sources if s.kind not in SOURCE_KINDS]

    def __bool__(self) -> bool:
        return bool(self.sources)

    def draw(self, ledger: Ledger, iteration: int, rng: np.random.Generator, initial: bool = False) -> int:
        """Draw new candidates into the ledger (and store); returns how many were new.

        A generator that raises is reported and skipped: it never stops the campaign.
        """
        if not self.sources:
            return 0
        observations = ledger.observations(arm="agent")
        state = CampaignState(candidates=dict(ledger.by_id), observations=observations,
                              fitness=self.scoreboard.fitness(observations), pending=set(), iteration=iteration)
        counts = {s.label: (s.n_initial if initial else s.n_per_iteration) for s, _ in self.sources}
        if not initial and self.spec.generation.mix == "adaptive":
            counts = self.bandit_split(ledger, sum(counts.values()), rng)
        added_total = 0
        for s, gen in self.sources:
            n = counts.get(s.label, 0)
            if n <= 0:
                continue
            t0 = time.perf_counter()
            try:
                new = gen.generate(n, state, rng)
            except Exception as exc:  # a broken generator must not stop the campaign
                log.warning("generator %s failed: %s", s.label, exc)
                self.say(f"generator {s.label!r} failed: {type(exc).__name__}: {exc}")
                continue
            added = ledger.add_candidates(new, iteration=iteration)
            added_total += added
            self.say(f"generator {s.label!r} ({s.kind}): {len(new)} proposed, {added} new, "
                     f"{time.perf_counter() - t0:.1f} s")
        return added_total

    def bandit_split(self, ledger: Ledger, total: int, rng: np.random.Generator) -> dict[str, int]:
        """Thompson sampling: ``total`` new candidates split among the generators by a Beta draw each.

        With hull distances in the observations the draw is Beta(1 + S.U.N., 1 + evaluated - S.U.N.)
        divided by the source's mean oracle cost per evaluated candidate (yield per cost);
        otherwise Beta(1 + wins, 1 + picked - wins) with wins = picked candidates in the top
        quarter of the objective.
        """
        observations = ledger.observations(arm="agent")
        draws = {}
        if any(o.ok and o.value(HULL_PROPERTY) is not None for o in observations):
            labels = {s.label for s, _ in self.sources}
            counts = sun_counts((c for c in ledger.by_id.values() if c.source in labels), observations)
            costs = [r["cost"] / r["evaluated"] for r in counts.values() if r["evaluated"] and r["cost"] > 0]
            typical = float(np.mean(costs)) if costs else 1.0
            for s, _ in self.sources:
                r = counts.get(s.label, {"evaluated": 0, "sun": 0, "cost": 0.0})
                per_eval = r["cost"] / r["evaluated"] if r["evaluated"] and r["cost"] > 0 else typical
                draws[s.label] = rng.beta(1 + r["sun"], 1 + r["evaluated"] - r["sun"]) * typical / per_eval
        else:
            fitness = self.scoreboard.fitness(observations)
            good = set()
            if fitness:
                thresh = np.quantile(np.array(list(fitness.values())), 0.75)
                good = {cid for cid, x in fitness.items() if x >= thresh}
            picked = {o.candidate_id for o in observations}
            for s, _ in self.sources:
                mine = [cid for cid in picked if cid in ledger.by_id and ledger.by_id[cid].source == s.label]
                wins = sum(1 for cid in mine if cid in good)
                draws[s.label] = rng.beta(1 + wins, 1 + len(mine) - wins)
        weights = np.array([draws[s.label] for s, _ in self.sources])
        weights = weights / weights.sum()
        split = np.floor(weights * total).astype(int)
        split[int(np.argmax(weights))] += total - split.sum()
        return {s.label: int(k) for (s, _), k in zip(self.sources, split)}
