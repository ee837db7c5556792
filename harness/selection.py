"""Which trial is best: the one rule behind the sweep's `best` symlink and best.json, the report's ranking and
recommendation, and so the adapter the gate baseline is made from.

    ranked = sorted(trials, key=lambda t: rank_key(t.results, t.feasible))   # best first; stable for ties

Best = within every regression limit (and not marked infeasible by the sweep's constraints), then the highest
held-out score, then the smallest worst regression vs the base. Remaining ties keep their order (the sweep
lists trials by number, so the lowest trial number wins).

Every score here is on the eval set's selection split: trial results are scored on it (a sweep refuses
eval.split=reporting), so choosing never touches the reporting split. `reporting_candidates` names the few
trials a sweep then scores on the reporting split, where the verdicts are made (harness.reporting).
"""

from __future__ import annotations

from typing import TypeVar

from harness.records import RunResults

T = TypeVar("T")


def rank_key(results: RunResults, feasible: bool | None) -> tuple[bool, float, float]:
    """Sort key, ascending = better. `feasible`: the sweep's constraint verdict (None: no constraints)."""
    within_limits = results.final.regression_ok and feasible is not False
    return (not within_limits, -results.final.heldout.score, results.final.worst_regression)


def training_cost(results: RunResults) -> tuple[int, int]:
    """(LoRA rank, optimizer steps over all stages): lower is cheaper to train, store and serve."""
    return results.adapter.r, sum(stage.steps for stage in results.metrics.stages.values())


def is_cheaper(a: RunResults, b: RunResults) -> bool:
    """`a` costs no more than `b` in rank and in steps, and less in one of them."""
    cost_a, cost_b = training_cost(a), training_cost(b)
    return cost_a != cost_b and all(x <= y for x, y in zip(cost_a, cost_b, strict=True))


def reporting_candidates(ranked: list[tuple[T, RunResults]]) -> tuple[T, T | None, T | None]:
    """(best, runner-up, cheaper alternative) from trials ranked best first by rank_key.

    The cheaper alternative is the best-ranked trial within its limits that is cheaper than the best
    (`is_cheaper`); it is often the runner-up itself. Only these are scored on the reporting split: the
    verdicts need no other trial, and each costs a held-out evaluation.
    """
    best_trial, best = ranked[0]
    runner_up = ranked[1][0] if len(ranked) > 1 else None
    cheaper = next((trial for trial, results in ranked[1:]
                    if results.final.regression_ok and is_cheaper(results, best)), None)
    return best_trial, runner_up, cheaper
