"""The pool matrix the agent sees: features per candidate, cached in the store, preprocessed over the pool."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from matloop.agents.decision.acquisition import SurrogateSettings
from matloop.agents.modelling.features import FeaturePreprocessor, featurize, fraction_block, pool_fractions
from matloop.core.records import Candidate

from .spec import CampaignSpec
from .store import Store


@dataclass
class PoolFeatures:
    """Features of the pool, row-aligned with the store's candidates.

    Attributes:
        X: ``N x d`` preprocessed features (float32 when built here).
        fraction_columns: width of the trailing element-fraction block of ``X`` that the
            ``additive_fractions`` kernel reads (0 when there is none).
    """

    X: np.ndarray
    fraction_columns: int = 0


def pool_features(store: Store, spec: CampaignSpec, candidates: list[Candidate],
                  say: Callable[[str], None] = print) -> PoolFeatures:
    """Featurize the candidates the store has no features for, then preprocess the whole pool.

    With ``agent.surrogate.kernel_structure: additive_fractions`` the element fractions
    (``fraction_block``, not standardised) are appended last.
    """
    key = spec.features.key
    ids = [c.id for c in candidates]
    X, missing = store.get_features(key, ids)
    if missing:
        t0 = time.perf_counter()
        miss = set(missing)
        todo = [c for c in candidates if c.id in miss]
        Xm, errors = featurize(todo, spec.features)
        store.put_features(key, [c.id for c in todo], Xm, errors)
        n_err = sum(e is not None for e in errors)
        say(f"featurized {len(todo)} candidates in {time.perf_counter() - t0:.1f} s ({n_err} failures recorded)")
        X, _ = store.get_features(key, ids)
    if "fractions" in spec.features.composition:
        F, _ = pool_fractions(candidates)
        X = np.hstack([X, F])
    X = FeaturePreprocessor().fit_transform(X).astype(np.float32)
    if not SurrogateSettings(**spec.agent.surrogate).fraction_block:
        return PoolFeatures(X, 0)
    F = fraction_block(candidates)
    return PoolFeatures(np.hstack([X, F]), F.shape[1])
