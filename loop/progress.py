"""Live progress while a batch of requests runs: evaluations done per tier, failures, an ETA.

``Progress.track`` wraps the execution of one batch. A background thread reads the
ledger (the loop's in-memory record of arrived observations; it never touches the store)
a few times a second and

- on a terminal, redraws a rich progress bar per tier: done / planned, failures so far,
  and the ETA;
- elsewhere (CI logs, pipes), prints a plain line per tier when the counts changed, at
  most every ``line_every_s`` seconds -- no live rendering into files;
- in both, prints each new failure reason once per run (later failures with the same
  reason only count).

The ETA is measured, not nominal: per tier, the mean wall time of that oracle's
evaluations so far (this and earlier runs, cache hits excluded), times the requests left,
divided by the executor's parallel workers; before the first evaluation of a tier
finishes, that tier's ETA is unknown. ``quiet`` shows nothing.
"""

from __future__ import annotations

import math
import threading
import time
from contextlib import contextmanager

#: failure reasons longer than this are cut in the console (the store keeps them whole)
REASON_WIDTH = 160


def duration(seconds: float | None) -> str:
    """A duration rounded for people: ``45 s``, ``3 min 20 s``, ``2 h 05 min``; ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


class TierCount:
    """Counts of one tier (oracle) within the tracked batch, and its measured wall time per evaluation."""

    def __init__(self, name: str, planned: int, walls: list[float]):
        self.name = name
        self.planned = planned
        self.done = 0
        self.failed = 0
        self.walls = list(walls)  # wall times (s) of this oracle's evaluations, cache hits excluded

    def seconds_each(self) -> float | None:
        """Mean measured wall time of one evaluation (s), or None before the first one."""
        return sum(self.walls) / len(self.walls) if self.walls else None

    def eta(self, workers: int) -> float | None:
        """Seconds until this tier's requests are done, from the measured wall time; 0 when done."""
        left = self.planned - self.done
        if left <= 0:
            return 0.0
        each = self.seconds_each()
        return None if each is None else left * each / max(1, min(workers, left))


class Progress:
    """Shows the progress of each batch a campaign executes (see the module docstring).

    Args:
        console: a rich Console (default: one on stdout); live bars only when it is a terminal.
        quiet: show nothing.
        workers: parallel evaluations (the executor's workers), for the ETA.
        line_every_s: without a terminal, the least time between two progress lines.
    """

    def __init__(self, console=None, quiet: bool = False, workers: int = 1, line_every_s: float = 30.0,
                 poll_s: float = 0.25):
        self.console = console
        self.quiet = quiet
        self.workers = max(1, int(workers))
        self.line_every_s = line_every_s
        self.poll_s = poll_s
        self.reasons_seen: set[str] = set()
        self.tiers: dict[str, TierCount] = {}

    # -- the tracked batch -------------------------------------------------------------------
    @contextmanager
    def track(self, ledger, requests: list):
        """Show the progress of ``requests`` while the body executes them (observations arrive in ``ledger``)."""
        if self.quiet or not requests:
            yield self
            return
        from rich.console import Console

        console = self.console if self.console is not None else Console()
        ids = {r.id for r in requests}
        planned: dict[str, int] = {}
        for r in requests:
            planned[r.oracle] = planned.get(r.oracle, 0) + 1
        self.tiers = {name: TierCount(name, n, [o.wall_time_s for o in ledger.observations(oracle=name)
                                                if o.wall_time_s and o.wall_time_s > 0])
                      for name, n in planned.items()}
        start = len(ledger.observations())
        stop = threading.Event()
        live = _Bars(console, self.tiers, self.workers) if console.is_terminal else None
        last_line = [time.monotonic(), self._counts()]

        def poll():
            nonlocal start
            arrived = ledger.observations()
            new, start = arrived[start:], len(arrived)
            for o in new:
                if o.request_id not in ids:
                    continue
                t = self.tiers[o.oracle]
                t.done += 1
                if o.wall_time_s and o.wall_time_s > 0 and "cached_from" not in (o.extra or {}):
                    t.walls.append(o.wall_time_s)
                if not o.ok:
                    t.failed += 1
                    self._new_reason(console, o)
            if live is not None:
                live.update()
            elif self._counts() != last_line[1] and time.monotonic() - last_line[0] >= self.line_every_s:
                console.print(self.line(), highlight=False, soft_wrap=True)
                last_line[:] = [time.monotonic(), self._counts()]

        def loop():
            while not stop.wait(self.poll_s):
                poll()

        thread = threading.Thread(target=loop, name="matloop-progress", daemon=True)
        if live is not None:
            live.start()
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()
            poll()  # whatever arrived since the last look
            if live is not None:
                live.stop()

    def _counts(self) -> tuple:
        return tuple((t.done, t.failed) for t in self.tiers.values())

    def _new_reason(self, console, obs) -> None:
        reason = (obs.reason or "no reason given").strip()
        if reason in self.reasons_seen:
            return
        self.reasons_seen.add(reason)
        text = reason if len(reason) <= REASON_WIDTH else reason[:REASON_WIDTH - 1] + "…"
        console.print(f"  new failure on {obs.oracle}: {text}", highlight=False, soft_wrap=True, markup=False)

    def eta(self) -> float | None:
        """Seconds until the tracked batch is done (the tiers' ETAs added: they share the workers); None if unknown."""
        etas = [t.eta(self.workers) for t in self.tiers.values()]
        return None if any(e is None for e in etas) else sum(etas)

    def line(self) -> str:
        """One plain progress line: done / planned and failures per tier, and the ETA."""
        parts = [f"{t.name} {t.done}/{t.planned}" + (f" ({t.failed} failed)" if t.failed else "")
                 for t in self.tiers.values()]
        return "  progress: " + ", ".join(parts) + f" | ETA {duration(self.eta())}"


class _Bars:
    """rich progress bars, one per tier, redrawn in place on a terminal."""

    def __init__(self, console, tiers: dict[str, TierCount], workers: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.tiers, self.workers = tiers, workers
        self.bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("{task.fields[failed]}"), TextColumn("ETA {task.fields[eta]}"),
                             TimeElapsedColumn(), console=console, transient=True)
        self.tasks = {name: self.bars.add_task(name, total=t.planned, failed="", eta="?")
                      for name, t in tiers.items()}

    def start(self) -> None:
        self.bars.start()

    def stop(self) -> None:
        self.bars.stop()

    def update(self) -> None:
        for name, t in self.tiers.items():
            self.bars.update(self.tasks[name], completed=t.done, failed=f"{t.failed} failed" if t.failed else "",
                             eta=duration(t.eta(self.workers)))
