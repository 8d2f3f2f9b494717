"""When a campaign ends: its one budget, and the early-stop rules.

``Budget`` is the only place spend is compared with ``spec.budget``; the batch loop asks it
between iterations, the asynchronous loop before each submission (counting the requests
still running as spent).
"""

from __future__ import annotations

import numpy as np

from matloop.core.goals import Goal

from .ledger import Ledger
from .spec import Budget as BudgetSpec
from .spec import StopRule


class Budget:
    """The agent arm's spend against the campaign's cost, evaluation and iteration limits.

    Args:
        limits: ``spec.budget``.
        ledger: where spend is read (the agent arm's observations and iterations).
        max_unit_cost: the costliest oracle's cost, charged for each running request.
    """

    def __init__(self, limits: BudgetSpec, ledger: Ledger, max_unit_cost: float = 0.0):
        self.limits = limits
        self.ledger = ledger
        self.max_unit_cost = max_unit_cost

    def spent(self) -> tuple[float, int]:
        """Cost and evaluations spent by the agent so far."""
        return self.ledger.spent("agent")

    def cost_left(self) -> float | None:
        """Remaining cost, or None without a cost limit."""
        return None if self.limits.cost is None else self.limits.cost - self.spent()[0]

    def evaluations_left(self) -> int | None:
        """Remaining evaluations, or None without an evaluation limit."""
        return None if self.limits.evaluations is None else self.limits.evaluations - self.spent()[1]

    def exhausted(self, in_flight: int = 0) -> str | None:
        """Why the budget is spent, or None; ``in_flight`` running requests count as spent."""
        b = self.limits
        cost, n_eval = self.spent()
        cost += in_flight * self.max_unit_cost
        n_iter = self.ledger.n_iterations("agent")
        if b.cost is not None and cost >= b.cost - 1e-12:
            return f"cost budget spent ({cost:g} of {b.cost:g})"
        if b.iterations is not None and n_iter >= b.iterations:
            return f"iteration budget reached ({n_iter})"
        if b.evaluations is not None and n_eval + in_flight >= b.evaluations:
            return f"evaluation budget reached ({n_eval + in_flight})"
        return None


def stop_reason(rules: list[StopRule], goal: Goal, history: list[float | None]) -> str | None:
    """The first early-stop rule that fires on the best-so-far ``history`` (one value per iteration), or None."""
    better_or_equal = lambda a, b: goal.score(np.array([a]))[0] >= goal.score(np.array([b]))[0]  # noqa: E731
    for rule in rules:
        best = history[-1] if history else None
        if rule.kind == "target" and best is not None and better_or_equal(best, rule.value):
            return f"target {rule.value:g} reached (best {best:g})"
        if rule.kind == "no_improvement" and len(history) > rule.patience:
            recent = history[-(rule.patience + 1):]
            if recent[0] is not None and all(h is not None and better_or_equal(recent[0], h) for h in recent[1:]):
                return f"no improvement for {rule.patience} iterations"
    return None
