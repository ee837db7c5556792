"""What a search found out: parameter importance, a parallel-coordinates view, and what pruning spent and saved.

    blocks = search_section(sweeps, images)     # "What mattered", for sweeps that vary more than one parameter
    line = pruning_budget(sweep)                # None without a pruner or recorded trial-steps

Importance is Optuna's default evaluator (`optuna.importance.get_param_importances`; PED-ANOVA in Optuna 5, which
has no random state, so a rebuilt report is the same), run on an in-memory study rebuilt from the trial records
(params and the selection-split objective of the complete trials), with each parameter's distribution as the sweep
searched it. Nothing is read from the study's storage: the report needs only the sweep's artifacts.
"""

from __future__ import annotations

import warnings

from harness.config import LOG_UNIFORM
from harness.render import Heading, Image, Para, Table
from harness.report import Sweep
from harness.report_plots import plot_parallel_coordinates

MIN_TRIALS_FOR_IMPORTANCE = 2


def searched(sweep: Sweep) -> dict[str, list]:
    """The parameters the sweep varied (a one-value list fixes a setting, it does not search it)."""
    return {name: list(choices) for name, choices in sweep.meta.space.items() if len(choices) > 1}


def log_uniform(sweep: Sweep) -> set[str]:
    """Parameters sampled log-uniform from [low, high] (a grid lists them as categories instead)."""
    return {name for name in sweep.meta.space if name in LOG_UNIFORM and sweep.meta.sampler != "grid"}


def param_importances(sweep: Sweep) -> dict[str, float] | None:
    """Each searched parameter's share of the objective's variation (they sum to 1), most important first; None
    with fewer than two searched parameters or two complete trials."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    space = searched(sweep)
    logs = log_uniform(sweep)
    distributions = {name: FloatDistribution(choices[0], choices[1], log=True) if name in logs
                     else CategoricalDistribution(choices) for name, choices in space.items()}
    complete = [t for t in sweep.trials if t.record.state == "COMPLETE" and t.record.values
                and all(_within(t.record.params.get(name), choices, name in logs) for name, choices in space.items())]
    if len(space) < 2 or len(complete) < MIN_TRIALS_FOR_IMPORTANCE:
        return None
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(direction="maximize")  # in memory
        for trial in complete:
            study.add_trial(optuna.trial.create_trial(
                params={name: trial.record.params[name] for name in space}, distributions=distributions,
                value=trial.record.values[0]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "importances will be equal": said in the section instead
            return dict(optuna.importance.get_param_importances(study))
    finally:
        optuna.logging.set_verbosity(verbosity)


def _within(value, choices: list, log: bool) -> bool:
    """Whether a trial's value is one the sweep's space allows (a resumed study with another space is refused,
    but a hand-edited record must not crash the report)."""
    if log:
        return isinstance(value, (int, float)) and choices[0] <= value <= choices[1]
    return value in choices


def search_section(sweeps: list[Sweep], images: dict[str, bytes]) -> list:
    """The "What mattered" section; empty when no sweep varied more than one parameter."""
    multi_param = [s for s in sweeps if len(searched(s)) > 1]
    if not multi_param:
        return []
    blocks: list = [Heading(2, "What mattered")]
    for sweep in multi_param:
        if len(sweeps) > 1:
            blocks.append(Heading(3, f"Sweep {sweep.name}"))
        blocks += _importance_blocks(sweep)
        filename = f"parallel_coordinates_{sweep.name}.png" if len(sweeps) > 1 else "parallel_coordinates.png"
        images[filename] = plot_parallel_coordinates(sweep.trials, searched(sweep), log_uniform(sweep))
        blocks += [Image(filename, f"parallel coordinates of sweep {sweep.name}: settings and held-out score"),
                   Para("One line per trial through its setting of every searched parameter to its held-out score "
                        "(selection split), coloured by that score; dashed: pruned trials at their last "
                        "intermediate score. Log-uniform parameters run from low to high on a log scale.")]
    return blocks


def _importance_blocks(sweep: Sweep) -> list:
    n_complete = sum(t.record.state == "COMPLETE" and bool(t.record.values) for t in sweep.trials)
    importances = param_importances(sweep)
    if importances is None:
        return [Para(f"Parameter importance needs at least {MIN_TRIALS_FOR_IMPORTANCE} complete trials; "
                     f"{n_complete} completed.", "note")]
    values = [t.record.values[0] for t in sweep.trials if t.record.state == "COMPLETE" and t.record.values]
    rows = [[name, f"{share:.3f}", "█" * round(share * 20)] for name, share in importances.items()]
    blocks: list = [Table(["parameter", "importance", ""], rows)]
    text = (f"Parameter importance: Optuna's default evaluator (PED-ANOVA) over the {n_complete} complete trials' "
            "selection-split scores; the shares sum to 1. It says how much each parameter decided whether a trial "
            "landed among the best, within the ranges searched.")
    if len(set(values)) == 1:
        text += " Every complete trial scored the same, so the shares are equal by construction and say nothing."
    elif n_complete < 10:
        text += f" With {n_complete} trials this is a hint to test, not a finding."
    return blocks + [Para(text, "note" if n_complete < 10 else "")]


def pruning_budget(sweep: Sweep) -> str | None:
    """Trial-steps trained against every trial trained to its full budget, and what pruning saved."""
    counted = [t.record for t in sweep.trials if t.record.steps_trained is not None and t.record.steps_budget]
    if not counted or sweep.meta.pruner == "none":
        return None
    trained = sum(r.steps_trained for r in counted)
    budget = sum(r.steps_budget for r in counted)
    pruned = [r for r in counted if r.state == "PRUNED"]
    saved = sum(r.steps_budget - r.steps_trained for r in pruned)
    return (f"Pruning budget ({sweep.name}, pruner {sweep.meta.pruner}): {len(pruned)} of {len(counted)} trials "
            f"pruned; {trained} of {budget} trial-steps trained ({trained / budget:.0%} of the full budget), "
            f"{saved} saved by pruning ({saved / budget:.0%}). The full budget is every trial trained to its "
            "configured steps; failed trials count the steps they trained.")
