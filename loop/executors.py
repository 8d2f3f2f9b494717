"""Where oracle jobs run: inline, local worker processes, or Dask.

An executor's ``submit(oracle, request)`` returns a ``Handle`` at once; ``handle.done()``
never blocks and ``handle.result()`` always gives an ``Observation`` — a crashed worker
process becomes a failed observation with its reason, never an exception in the loop.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from matloop.core.records import Observation, Request

from .handles import Handle


class InlineExecutor:
    """Runs each job in the calling process at submit time (cheap oracles, tests)."""

    workers = 1

    def submit(self, oracle, request: Request) -> Handle:
        """Run the job now, in this process, and return an already finished handle."""
        return Handle(oracle, request, value=oracle.run(request))

    def shutdown(self) -> None:
        """Nothing to release (no-op)."""
        pass


def _worker_init(threads: int) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    try:
        import torch

        torch.set_num_threads(threads)
    except Exception:
        pass


def _ping() -> int:
    import time as _t

    import matloop.core.oracle  # noqa: F401  (the import cost is paid here, once per worker)

    _t.sleep(0.2)  # keep this worker busy so that the next ping goes to another one
    return os.getpid()


def _run(oracle, request: Request) -> Observation:
    return oracle.run(request)


class LocalExecutor:
    """A pool of spawned worker processes; each keeps its loaded models between jobs.

    A worker that dies (segfault, out of memory, ``kill``) fails only its own jobs: the pool
    is rebuilt for the next submission.
    """

    def __init__(self, workers: int = 2):
        self.workers = max(1, int(workers))
        self._pool: ProcessPoolExecutor | None = None

    def _ensure(self) -> ProcessPoolExecutor:
        if self._pool is None or getattr(self._pool, "_broken", False):
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
            threads = max(1, (os.cpu_count() or 1) // self.workers)
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=mp.get_context("spawn"), initializer=_worker_init, initargs=(threads,)
            )
        return self._pool

    def warm_up(self) -> None:
        """Start every worker process now (imports included), not on the first job."""
        pool = self._ensure()
        for f in [pool.submit(_ping) for _ in range(self.workers)]:
            f.result()

    def submit(self, oracle, request: Request) -> Handle:
        """Submit one job to the pool (rebuilt if broken) and return its handle at once; ``inline`` oracles run here."""
        if getattr(oracle, "inline", False):
            return Handle(oracle, request, value=oracle.run(request))
        try:
            fut = self._ensure().submit(_run, oracle, request)
        except BrokenProcessPool:
            self._pool = None
            fut = self._ensure().submit(_run, oracle, request)
        return Handle(oracle, request, future=fut)

    def shutdown(self) -> None:
        """Cancel queued jobs, wait for running ones and stop the worker processes."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def make_executor(spec):
    """Executor from an ``ExecutorSpec``."""
    if spec.kind == "inline":
        return InlineExecutor()
    if spec.kind == "local":
        return LocalExecutor(spec.workers)
    if spec.kind == "dask":
        from .dask_executor import DaskExecutor

        return DaskExecutor(address=spec.address, workers=spec.workers)
    raise ValueError(spec.kind)
