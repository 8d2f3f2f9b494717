"""The ``Oracle`` contract.

An oracle evaluates one candidate at one fidelity and reports named properties with units
in their names (``gap_ev``, ``formation_energy_ev_per_atom``). Subclasses implement
``evaluate``; ``run`` wraps it with timing, a timeout and failure capture so that every
outcome, good or bad, is an ``Observation``.

Compute oracles are run by an executor (``matloop.loop.executors``) in worker processes:
``submit`` hands ``run`` to the executor and returns a handle at once; ``poll`` and
``collect`` read finished handles. Asynchronous lab oracles (results days later) override
``submit``/``poll``/``collect`` instead.

Science is separate from the site, as in ASE's calculator profiles: the settings are a
pydantic model per oracle kind, validated from YAML and hashed into the oracle's ``version``;
``SiteSettings`` (the folder relative paths resolve against, device, threads, cache and log
folders) says where and how this machine runs it, and never enters the version.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
import traceback
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .records import Candidate, Observation, OracleError, OracleResult, Request, Status, stable_hash


class SiteSettings(BaseModel):
    """Where and how this machine runs an oracle; never part of its ``version``.

    In a campaign file it is an oracle's optional ``site:`` mapping; ``base_dir`` is filled
    by the loop with the campaign file's folder.
    """

    model_config = ConfigDict(extra="forbid")

    base_dir: Path | None = Field(
        None,
        description="folder that relative paths in settings resolve against (the loop sets the campaign "
        "file's folder); None: the working directory when the oracle is built",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="torch device; auto: CUDA when available, else CPU")
    torch_threads: int = Field(
        1,
        ge=1,
        description="torch and BLAS CPU threads per process; 1 is fastest for small cells and parallel workers "
        "(2 threads on a busy 2-core machine were 14x slower than 1)",
    )
    cache_dir: str | None = Field(
        None,
        description="root folder of on-disk caches (elemental references, HSE06 shifts); each oracle kind uses "
        "a subfolder of it; None: ~/.cache/matloop",
    )
    log_dir: str | None = Field(
        None, description="folder to keep calculation logs in (GPAW text logs); None: a temporary folder"
    )

    def resolve(self, path: str | Path) -> Path:
        """``path`` with ``~`` expanded, taken from ``base_dir`` when relative."""
        p = Path(path).expanduser()
        if p.is_absolute():
            return p
        return (self.base_dir or Path.cwd()) / p

    def cache_folder(self, subfolder: str) -> Path:
        """``<cache_dir>/<subfolder>`` (``cache_dir`` resolved like any other path)."""
        root = self.resolve(self.cache_dir) if self.cache_dir else Path.home() / ".cache" / "matloop"
        return root / subfolder


#: keys of ``SiteSettings`` a user may set (``base_dir`` comes from the loop)
SITE_KEYS = tuple(k for k in SiteSettings.model_fields if k != "base_dir")


class OracleSettings(BaseModel):
    """Base of every oracle's settings model (the science). Unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _site_keys_moved(cls, data: Any) -> Any:
        if isinstance(data, dict):
            moved = [k for k in data if k in SITE_KEYS and k not in cls.model_fields]
            if moved:
                raise ValueError(
                    f"{', '.join(moved)} {'is a site setting' if len(moved) == 1 else 'are site settings'}, "
                    f"not science: give {'it' if len(moved) == 1 else 'them'} as "
                    f"{', '.join('site.' + k for k in moved)} "
                    "(YAML: the oracle's site: mapping; Python: Oracle(site={...}))"
                )
        return data


class OracleTimeout(OracleError):
    """An evaluation ran past the oracle's ``timeout_s``."""


@contextlib.contextmanager
def _alarm(timeout_s: float | None):
    """SIGALRM-based timeout; only in the main thread of a process (worker processes are).

    Elsewhere (a Dask worker's task thread) ``Oracle.run`` enforces the timeout with a
    deadline thread instead: see :func:`_run_with_deadline`.
    """
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
        settings: dict validated against ``Settings`` (the science: hashed into ``version``).
        cost: nominal cost per evaluation in ``cost_unit``.
        fidelity: 0 = cheapest; higher is closer to the truth the campaign cares about.
        timeout_s: wall-clock limit per evaluation; exceeding it is a failed observation.
        site: where and how it runs (``SiteSettings`` or a dict of its fields); never in ``version``.
            A missing ``base_dir`` becomes the working directory at construction.
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
        site: SiteSettings | dict | None = None,
    ):
        self.name = name or self.kind
        self.settings = self.Settings(**(settings or {}))
        site = site if isinstance(site, SiteSettings) else SiteSettings.model_validate(site or {})
        base = site.base_dir.expanduser().resolve() if site.base_dir is not None else Path.cwd()
        self.site = site.model_copy(update={"base_dir": base})
        self.cost = float(cost)
        self.cost_unit = cost_unit
        self.fidelity = int(fidelity)
        self.timeout_s = timeout_s

    @property
    def version(self) -> str:
        """Kind, code version and a hash of the science settings (never the site): equal versions give equal results."""
        return f"{self.kind}-{self.code_version}-{stable_hash(self.version_inputs(), 8)}"

    def version_inputs(self) -> Any:
        """What the version hashes: the science settings (JSON). An oracle whose results depend on
        more (a reference table's version) or less (a disabled setting) overrides this."""
        return self.settings.model_dump(mode="json")

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
        """Evaluate with timing, timeout and failure capture. Never raises.

        ``timeout_s`` is enforced with ``SIGALRM`` in a process's main thread (local worker
        processes, inline runs) and with a deadline on a helper thread anywhere else (Dask
        runs tasks in worker threads): see :func:`_run_with_deadline`.
        """
        if self.timeout_s and threading.current_thread() is not threading.main_thread():
            return _run_with_deadline(self, request)
        return self._run_here(request)

    def _run_here(self, request: Request) -> Observation:
        """``run`` in the calling thread (the ``SIGALRM`` timeout applies in a main thread)."""
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
        """What this oracle is, as JSON: name, kind, properties, cost, version, settings and site."""
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
            "site": self.site.model_dump(mode="json"),
        }


def _raise_in_thread(thread: threading.Thread, exc_type: type[BaseException]) -> bool:
    """Ask ``thread`` to raise ``exc_type`` at its next Python instruction (CPython's async exception)."""
    import ctypes

    n = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(exc_type))
    return n == 1


def _run_with_deadline(oracle: Oracle, request: Request) -> Observation:
    """``oracle._run_here(request)`` on a helper thread, answered after ``timeout_s`` at the latest.

    Past the deadline the result is a failed observation "timeout after ... s" and the helper
    thread is told to raise ``OracleTimeout`` -- the same semantics as ``SIGALRM``: Python code
    stops at its next instruction, a call blocked inside C (a sleep, a solver) when it returns.
    Measured reason for hand-written code: ``SIGALRM`` works only in a main thread, and
    ``distributed`` has no per-task time limit.
    """
    import contextvars

    t0 = time.perf_counter()
    box: dict[str, Observation] = {}
    ctx = contextvars.copy_context()  # e.g. the command oracle's running request

    def target() -> None:
        box["obs"] = ctx.run(oracle._run_here, request)

    helper = threading.Thread(target=target, name=f"matloop-oracle-{request.id}", daemon=True)
    helper.start()
    helper.join(oracle.timeout_s)
    if "obs" in box:
        return box["obs"]
    _raise_in_thread(helper, OracleTimeout)
    return failed_observation(oracle, request, f"timeout after {oracle.timeout_s:g} s", time.perf_counter() - t0,
                              extra={"timeout": "deadline on a worker thread"})


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
