"""Run oracle jobs on Dask: a local cluster of worker processes, or a running scheduler.

``DaskExecutor`` has the interface of ``LocalExecutor``: ``submit(oracle, request)``
returns a handle at once, ``handle.done()`` never blocks, and ``handle.result()`` always
gives an ``Observation``.

Worker loss. A job whose worker process dies (segfault, out of memory, ``kill -9``, a batch
job reaching its wall time) is resubmitted once under a new key; if that worker dies too,
the job becomes a failed observation with reason ``worker lost twice: ...``. Nothing is
raised into the loop. Task keys are ``matloop-<request id>-try<n>``, so in the dashboard or
the scheduler logs a resubmission can be told from a first attempt.

Each observation from a worker carries ``extra["dask_worker"]`` (the worker's address),
and one that succeeded only after a loss carries ``extra["worker_lost"]`` (what happened).
Oracles that are cheap (``oracle.inline`` true) run in the planning process, as with
``LocalExecutor``.

Timeouts: Dask runs tasks in worker threads, where ``SIGALRM`` cannot fire, so
``Oracle.run`` runs a job with ``timeout_s`` on a helper thread and answers a failed
observation "timeout after ... s" at the deadline; the helper is told to stop at its next
Python instruction (a call blocked in C stops when it returns, as with ``SIGALRM``).

Local use (one machine)::

    executor:
      kind: dask
      workers: 4          # worker processes, one thread each

HPC use (SLURM, PBS, ...). Start a cluster with dask-jobqueue in a long-lived process on
the login node (or in a batch job), and give the campaign its scheduler address. Set
``allowed-failures`` to 0 before the cluster is made, so that the scheduler does not rerun a
job whose worker died several times by itself before matloop sees the loss::

    import dask
    from dask_jobqueue import SLURMCluster      # or PBSCluster, SGECluster, LSFCluster

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = SLURMCluster(cores=8, processes=1, memory="32GB", walltime="04:00:00",
                               job_extra_directives=["--account=myproject"])
    cluster.scale(jobs=10)                     # or cluster.adapt(minimum_jobs=1, maximum_jobs=20)
    print(cluster.scheduler_address)           # e.g. tcp://10.0.0.5:8786
    input("serving; press Enter to stop")

::

    executor:
      kind: dask
      address: tcp://10.0.0.5:8786
      workers: 10         # how many jobs matloop expects to run at once

The workers must have matloop (and any plug-in oracles) installed in the same versions
as the planning process, because oracles are sent to them pickled. A standalone
scheduler (``dask scheduler``) works the same way; start it with
``DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES=0``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import time

from matloop.core.oracle import failed_observation
from matloop.core.records import Observation, Request

from .handles import Handle

log = logging.getLogger("matloop")

#: Attempts per job: the first, and one resubmission after its worker died.
MAX_ATTEMPTS = 2
#: Seconds to wait for a finished job's result to come back from its worker.
FETCH_TIMEOUT_S = 60.0


def _run_on_worker(oracle, request: Request) -> Observation:
    """The task sent to a worker: the oracle's own ``run``, plus where it ran."""
    obs = oracle.run(request)
    try:
        from distributed import get_worker

        obs.extra = {**obs.extra, "dask_worker": get_worker().address}
    except ValueError:  # not inside a worker (a client running it locally)
        pass
    return obs


def _worker_loss(exc: BaseException) -> str | None:
    """A short description if ``exc`` means the job's worker went away, else None."""
    from distributed import KilledWorker
    from distributed.comm.core import CommClosedError

    if isinstance(exc, KilledWorker):
        return f"worker {exc.last_worker.address} died while running it"
    if isinstance(exc, (concurrent.futures.CancelledError, asyncio.CancelledError)):
        return f"job cancelled by the scheduler ({exc})"
    if isinstance(exc, (CommClosedError, OSError, TimeoutError)):
        return f"lost contact with the worker ({type(exc).__name__}: {exc})"
    return None


class DaskHandle(Handle):
    """A job on Dask; resubmits itself once when its worker dies."""

    def __init__(self, executor: DaskExecutor, oracle, request: Request):
        super().__init__(oracle, request)
        self._executor = executor
        self.attempts = 0
        self.keys: list[str] = []
        self.losses: list[str] = []
        self._start()

    def _start(self) -> None:
        self.attempts += 1
        key = f"matloop-{self.request.id}-try{self.attempts}"
        self.keys.append(key)
        try:
            self.future = self._executor.client.submit(
                _run_on_worker, self.oracle, self.request, pure=False, key=key
            )
        except Exception as exc:  # e.g. the scheduler is gone: the job fails, the loop goes on
            self.future = None
            self.value = failed_observation(self.oracle, self.request, f"dask submission failed: {type(exc).__name__}: {exc}",
                                            time.time() - self.submitted_at)

    def _settle(self, timeout: float | None) -> None:
        """Read the future (blocking up to ``timeout``): set ``value``, or resubmit after a loss."""
        fut = self.future
        try:
            obs = fut.result(timeout=timeout)
        except (Exception, asyncio.CancelledError) as exc:
            loss = _worker_loss(exc)
            if loss is None:  # Oracle.run never raises; this is e.g. an oracle that cannot be pickled
                self.value = failed_observation(self.oracle, self.request, f"{type(exc).__name__}: {exc}", time.time() - self.submitted_at)
            else:
                self.losses.append(f"attempt {self.attempts}: {loss}")
                log.warning("dask job %s: %s", self.keys[-1], loss)
                if self.attempts >= MAX_ATTEMPTS:
                    reason = "worker lost twice: " + "; ".join(self.losses)
                    self.value = failed_observation(self.oracle, self.request, reason, time.time() - self.submitted_at)
                else:
                    fut.release()
                    self._start()
                    return
        else:
            if self.losses:
                obs.extra = {**obs.extra, "worker_lost": list(self.losses)}
            self.value = obs
        fut.release()
        self.future = None

    def done(self) -> bool:
        """True once the job has an observation.

        Fetching a finished future's result may wait up to ``FETCH_TIMEOUT_S`` seconds; after a
        worker loss the job is resubmitted and this returns False.
        """
        if self.value is not None:
            return True
        if not self.future.done():
            return False
        self._settle(FETCH_TIMEOUT_S)
        return self.value is not None

    def result(self) -> Observation:
        """The observation, blocking until the job (and any resubmission) finishes; never raises."""
        while self.value is None:
            self._settle(None)
        return self.value


class DaskExecutor:
    """Oracle jobs on a Dask cluster.

    Args:
        address: scheduler address (``tcp://host:8786``) of a running cluster; None starts
            a ``LocalCluster`` of ``workers`` single-threaded worker processes on loopback.
        workers: worker processes to start (local) or the parallelism the campaign
            expects (remote).
        start_timeout_s: how long to wait for the local workers to come up.
    """

    def __init__(self, address: str | None = None, workers: int = 2, start_timeout_s: float = 120.0):
        import dask
        from distributed import Client, LocalCluster

        self.workers = max(1, int(workers))
        self.address = address
        self.cluster = None
        if address is None:
            # Same thread budget per worker as LocalExecutor. Dask writes the pre-spawn
            # variables into this process's environment too (documented Nanny behaviour);
            # ``env`` makes sure the workers get our value and not an inherited one.
            threads = str(max(1, (os.cpu_count() or 1) // self.workers))
            thread_env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}
            config = {
                # a dead worker fails its task at once; DaskHandle resubmits it exactly once
                "distributed.scheduler.allowed-failures": 0,
                "distributed.nanny.pre-spawn-environ": {"MALLOC_TRIM_THRESHOLD_": 65536, **thread_env},
            }
            with dask.config.set(config):
                self.cluster = LocalCluster(
                    n_workers=self.workers,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=None,
                    env=thread_env,
                )
            self.client = Client(self.cluster)
            self.client.wait_for_workers(self.workers, timeout=start_timeout_s)
        else:
            self.client = Client(address, timeout=start_timeout_s)
            self._check_allowed_failures()

    def _check_allowed_failures(self) -> None:
        try:
            n = self.client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.allowed_failures)
        except Exception:  # scheduler refuses pickled functions: nothing to check
            return
        if n:
            log.warning(
                "dask scheduler %s has allowed-failures=%s: it reruns a job whose worker died up to %s more "
                "times before matloop sees it; start it with DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES=0",
                self.address, n, n,
            )

    def submit(self, oracle, request: Request) -> Handle:
        """Submit one job and return its handle at once; an ``inline`` oracle runs here, synchronously."""
        if getattr(oracle, "inline", False):
            return Handle(oracle, request, value=oracle.run(request))
        return DaskHandle(self, oracle, request)

    def shutdown(self) -> None:
        """Close the client, and the local cluster if this executor started it."""
        if self.client is not None:
            self.client.close(timeout=30)
            self.client = None
        if self.cluster is not None:
            self.cluster.close(timeout=30)
            self.cluster = None
