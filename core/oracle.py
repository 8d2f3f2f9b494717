"""The ``Oracle`` contract.

An oracle evaluates one candidate at one fidelity and reports named properties with units
in their names (``gap_ev``, ``formation_energy_ev_per_atom``). Subclasses implement
``evaluate``; ``run`` wraps it with timing, a timeout and failure capture so that every
outcome, good or bad, is an ``Observation``.

Compute oracles are run by an executor (``matloop.loop.executors``) in worker processes:
``submit`` hands ``run`` to the executor and returns a handle at once; ``poll`` and
``collect`` read finished handles. Asynchronous lab oracles (results days later) override
``submit``/``poll``/``collect`` instead.

Science (the settings) is separate from the site (executor, paths): settings are a pydantic
model per oracle kind, validated from YAML, and hashed into the oracle's ``version``.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
import traceback
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from .records import Candidate, Observation, OracleError, OracleResult, Request, Status, stable_hash


class OracleSettings(BaseModel):
    """Base of every oracle's settings model. Unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid")


class OracleTimeout(OracleError):
    pass


@contextlib.contextmanager
def _alarm(timeout_s: float | None):
    """SIGALRM-based timeout; only in the main thread of a process (worker processes are)."""
    if not timeout_s or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise OracleTimeout(f"timeout after {timeout_s:g} s")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, float(timeout_s))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class Oracle(ABC):
    """Evaluates candidates. Subclasses set ``kind``, ``properties``, ``Settings``, ``code_version``.

    Args:
        name: the campaign's name for this oracle (several oracles may share a kind).
        settings: dict validated against ``Settings``.
        cost: nominal cost per evaluation in ``cost_unit``.
        fidelity: 0 = cheapest; higher is closer to the truth the campaign cares about.
        timeout_s: wall-clock limit per evaluation; exceeding it is a failed observation.
    """

    kind: ClassVar[str] = "abstract"
    properties: ClassVar[tuple[str, ...]] = ()
    code_version: ClassVar[str] = "1"
    Settings: ClassVar[type[OracleSettings]] = OracleSettings
    needs_structure: ClassVar[bool] = False
    #: True when evaluation is cheap and may run inline in the planning process.
    inline: ClassVar[bool] = False

    def __init__(
        self,
        name: str | None = None,
        settings: dict | None = None,
        cost: float = 1.0,
        fidelity: int = 0,
        timeout_s: float | None = None,
        cost_unit: str = "unit",
    ):
        self.name = name or self.kind
        self.settings = self.Settings(**(settings or {}))
        self.cost = float(cost)
        self.cost_unit = cost_unit
        self.fidelity = int(fidelity)
        self.timeout_s = timeout_s

    @property
    def version(self) -> str:
        """Code version plus a hash of the settings: equal versions give equal results."""
        return f"{self.kind}-{self.code_version}-{stable_hash(self.settings.model_dump(mode='json'), 8)}"

    def cache_key(self, candidate: Candidate) -> str:
        """Candidate identity + settings: results are reused for an equal key."""
        return stable_hash([candidate.id, self.version], 20)

    @abstractmethod
    def evaluate(self, candidate: Candidate) -> OracleResult:
        """Compute the properties of one candidate. Raise ``OracleError`` on a known failure."""

    def setup(self, candidates: list[Candidate]) -> None:  # noqa: B027 - optional hook
        """Called once in the planning process with the campaign's pool (e.g. to build references)."""

    # -- execution ---------------------------------------------------------------------------
    def run(self, request: Request) -> Observation:
        """Evaluate with timing, timeout and failure capture. Never raises."""
        t0 = time.perf_counter()
        try:
            if self.needs_structure and request.candidate.structure is None:
                raise OracleError(f"oracle {self.name!r} ({self.kind}) needs a structure; candidate has only a composition")
            with _alarm(self.timeout_s):
                result = self.evaluate(request.candidate)
            bad = {k: v for k, v in result.properties.items() if v is None or v != v or v in (float("inf"), float("-inf"))}
            if bad:
                raise OracleError(f"non-finite property values {sorted(bad)}")
            return Observation(
                request_id=request.id,
                candidate_id=request.candidate.id,
                oracle=self.name,
                oracle_version=self.version,
                fidelity=self.fidelity,
                status=Status.SUCCESS,
                properties={k: float(v) for k, v in result.properties.items()},
                uncertainties={k: float(v) for k, v in result.uncertainties.items()},
                extra=_jsonable(result.extra),
                cost=float(result.cost if result.cost is not None else self.cost),
                wall_time_s=time.perf_counter() - t0,
            )
        except Exception as exc:  # failures are data
            reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, OracleError) else str(exc)
            tb = "" if isinstance(exc, OracleError) else traceback.format_exc(limit=4)
            return failed_observation(self, request, reason, time.perf_counter() - t0,
                                      extra={"traceback": tb} if tb else {})

    def submit(self, requests: list[Request], executor) -> list[Any]:
        """Start evaluations without blocking; returns one handle per request."""
        return [executor.submit(self, r) for r in requests]

    def poll(self, handles: list[Any]) -> list[Any]:
        """The handles whose results are ready."""
        return [h for h in handles if h.done()]

    def collect(self, handles: list[Any]) -> list[Observation]:
        """Observations for finished handles (failed observations for crashed jobs)."""
        return [h.result() for h in handles]

    def describe(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "properties": list(self.properties),
            "fidelity": self.fidelity,
            "cost": self.cost,
            "cost_unit": self.cost_unit,
            "version": self.version,
            "timeout_s": self.timeout_s,
            "settings": self.settings.model_dump(mode="json"),
        }


def _jsonable(obj):
    import json

    try:
        json.dumps(obj)
        return obj
    except TypeError:
        return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def failed_observation(oracle: Oracle, request: Request, reason: str, wall_time_s: float,
                       extra: dict | None = None) -> Observation:
    """The failed ``Observation`` of ``request`` on ``oracle``, charged the oracle's nominal cost."""
    return Observation(
        request_id=request.id,
        candidate_id=request.candidate.id,
        oracle=oracle.name,
        oracle_version=oracle.version,
        fidelity=oracle.fidelity,
        status=Status.FAILED,
        cost=oracle.cost,
        wall_time_s=float(wall_time_s),
        reason=reason,
        extra=dict(extra or {}),
    )
