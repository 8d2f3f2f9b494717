"""The handle an executor returns for one submitted job.

``done()`` never blocks and ``result()`` always gives an ``Observation``: a crashed worker
becomes a failed observation with its reason. Executors (inline, local processes, Dask)
import this module; it imports none of them.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool

from matloop.core.oracle import failed_observation
from matloop.core.records import Observation, Request


class Handle:
    """A submitted job: ``done()`` never blocks; ``result()`` always gives an ``Observation``."""

    def __init__(self, oracle, request: Request, future: Future | None = None, value: Observation | None = None):
        self.oracle = oracle
        self.request = request
        self.future = future
        self.value = value
        self.submitted_at = time.time()

    def done(self) -> bool:
        """True once the observation is available; never blocks."""
        return self.value is not None or (self.future is not None and self.future.done())

    def result(self) -> Observation:
        """The observation, blocking until the job finishes; a crashed worker or raising job gives a failed observation."""
        if self.value is not None:
            return self.value
        try:
            self.value = self.future.result()
        except BrokenProcessPool as exc:
            self.value = failed_observation(self.oracle, self.request, f"worker process crashed: {exc}", time.time() - self.submitted_at)
        except Exception as exc:  # the job itself should never raise (Oracle.run catches); belt and braces
            self.value = failed_observation(self.oracle, self.request, f"{type(exc).__name__}: {exc}", time.time() - self.submitted_at)
        return self.value
