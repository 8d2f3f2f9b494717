"""Generator sources: new candidates drawn before the first iteration and during the loop.

With ``generation.mix: adaptive`` a Thompson-sampling bandit splits each iteration's draw
among the generators: a generator wins when a candidate it proposed was picked by the agent
and came back in the top quarter of the counted objective values.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np

from matloop.agents.generation.sources import SOURCE_KINDS
from matloop.core.protocols import CampaignState
from matloop.core.registry import load

from .ledger import Ledger
from .objective import Scoreboard
from .spec import CampaignSpec

log = logging.getLogger("matloop")


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
        """Thompson sampling: ``total`` new candidates split among the generators by a Beta draw each."""
        observations = ledger.observations(arm="agent")
        fitness = self.scoreboard.fitness(observations)
        good = set()
        if fitness:
            thresh = np.quantile(np.array(list(fitness.values())), 0.75)
            good = {cid for cid, x in fitness.items() if x >= thresh}
        picked = {o.candidate_id for o in observations}
        draws = {}
        for s, _ in self.sources:
            mine = [cid for cid in picked if cid in ledger.by_id and ledger.by_id[cid].source == s.label]
            wins = sum(1 for cid in mine if cid in good)
            draws[s.label] = rng.beta(1 + wins, 1 + len(mine) - wins)
        weights = np.array([draws[s.label] for s, _ in self.sources])
        weights = weights / weights.sum()
        split = np.floor(weights * total).astype(int)
        split[int(np.argmax(weights))] += total - split.sum()
        return {s.label: int(k) for (s, _), k in zip(self.sources, split)}
