"""Which trial is best: the one rule behind the sweep's `best` symlink and best.json, the report's ranking and
recommendation, and so the adapter the gate baseline is made from.

    ranked = sorted(trials, key=lambda t: rank_key(t.results, t.feasible))   # best first; stable for ties

Best = within every regression limit (and not marked infeasible by the sweep's constraints), then the highest
held-out score, then the smallest worst regression vs the base. Remaining ties keep their order (the sweep
lists trials by number, so the lowest trial number wins).
"""

from __future__ import annotations

from harness.records import RunResults


def rank_key(results: RunResults, feasible: bool | None) -> tuple[bool, float, float]:
    """Sort key, ascending = better. `feasible`: the sweep's constraint verdict (None: no constraints)."""
    within_limits = results.final.regression_ok and feasible is not False
    return (not within_limits, -results.final.heldout.score, results.final.worst_regression)
