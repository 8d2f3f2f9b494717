"""Human-in-the-loop oracle: a person measures, ``matloop tell`` records the result.

``submit`` only records that the request is waiting; the campaign then pauses. A scientist
runs ``matloop ask STORE --out batch.csv`` to get the batch (with CIFs when there are
structures), measures, and ``matloop tell STORE results.csv`` records the values, checked
against the open requests. ``matloop run`` then plans the next batch.
"""

from __future__ import annotations

from pydantic import Field

from matloop.core.oracle import Oracle, OracleSettings
from matloop.core.records import Candidate, OracleError, OracleResult, Request


class ManualSettings(OracleSettings):
    """Settings of the human-in-the-loop oracle."""

    properties: list[str] = Field(min_length=1, description="properties the person reports, units in the names")
    instructions: str = Field("", description="what to measure and how; printed by `matloop ask`")


class ManualHandle:
    """A request waiting for a person. Never done by itself: ``matloop tell`` answers it in the store."""

    deferred = True

    def __init__(self, request: Request):
        self.request = request

    def done(self) -> bool:
        """Always False: only ``matloop tell`` answers a manual request."""
        return False

    def result(self):
        """Always raises RuntimeError: the result comes from ``matloop tell``, not the handle."""
        raise RuntimeError(f"request {self.request.id} waits for `matloop tell`")


class ManualOracle(Oracle):
    """A person measures; ``matloop tell`` records the result (``submit`` only marks the request as waiting)."""

    kind = "manual"
    Settings = ManualSettings
    #: the runner does not wait for these: it pauses the campaign until `matloop tell`
    deferred = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.properties = tuple(self.settings.properties)

    def evaluate(self, candidate: Candidate) -> OracleResult:
        """Always raises OracleError: manual results come from ``matloop tell``."""
        raise OracleError("manual oracle: results come from `matloop tell`, not from evaluate()")

    def submit(self, requests: list[Request], executor=None) -> list[ManualHandle]:
        """Mark ``requests`` as waiting for a person; returns one never-done handle each."""
        return [ManualHandle(r) for r in requests]
