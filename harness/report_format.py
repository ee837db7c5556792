"""Numbers and cell text of the report: paired comparisons and regression deltas of loaded trials, value
formatting, and trials.csv. Used by harness.report_sections and harness.report_plots:

    paired(zero_shot.per_example, trial.final_per_example).verdict()   # McNemar or paired bootstrap
    regression_delta(trial.results, "harness_general_mc")              # a PairedRegressionDelta, or None
    trials_csv(trials)                                                 # every trial, numbers unrounded
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass

import numpy as np

from harness.records import ExampleResult, HeldoutResult, LeakageReport, RunResults, ScoreSummary
from harness.report import ReportError, Sweep, Trial
from harness.stats import PairedComparison, compare_paired


# --- numbers ----------------------------------------------------------------------------------------------
def paired(a_rows: list, b_rows: list) -> PairedComparison:
    """Paired test on held-out rows (ExampleResult) or on lm-eval per-doc scores (floats)."""
    check_aligned(a_rows, b_rows, "A", "B")
    return compare_paired([_row_score(r) for r in a_rows], [_row_score(r) for r in b_rows])


def _row_score(row) -> float:
    return float(row.score) if isinstance(row, ExampleResult) else float(row)


def check_aligned(a_rows: list, b_rows: list, a_name: str, b_name: str) -> None:
    a_sources = [r.source if isinstance(r, ExampleResult) else i for i, r in enumerate(a_rows)]
    b_sources = [r.source if isinstance(r, ExampleResult) else i for i, r in enumerate(b_rows)]
    if a_sources != b_sources:
        raise ReportError(
            f"{a_name} and {b_name} were not scored on the same examples in the same order: "
            "a paired comparison is impossible (are the results records from one eval set?)"
        )


@dataclass
class PairedRegressionDelta:
    """A trial's final score on one regression benchmark minus the base model's, with a paired stderr."""

    delta: float
    stderr: float  # of the paired per-doc differences; from the two stderrs when per-doc scores are missing
    ok: bool  # the drop stays within the benchmark's max_regression

    @property
    def half_width(self) -> float:  # of the normal 95% interval
        return 1.96 * self.stderr


def regression_delta(results: RunResults, task: str) -> PairedRegressionDelta | None:
    limit_check = results.final.regression_delta.get(task)
    base = results.baselines.regression.get(task)
    adapter = results.final_stage.regression.get(task)
    if base is None or adapter is None or limit_check is None:
        return None
    a, b = base.per_example, adapter.per_example
    if len(a) == len(b) >= 2:
        stderr = float(np.std(np.asarray(b, float) - np.asarray(a, float), ddof=1) / math.sqrt(len(a)))
    else:
        stderr = math.sqrt(_nan_to_zero(base.stderr) ** 2 + _nan_to_zero(adapter.stderr) ** 2)
    return PairedRegressionDelta(adapter.score - base.score, stderr, limit_check.ok)


def _nan_to_zero(value: float) -> float:
    return 0.0 if math.isnan(value) else value


def param_names(sweeps: list[Sweep], trials: list[Trial]) -> list[str]:
    names = [p for s in sweeps for p in s.meta.space]
    names += [p for t in trials for p in t.record.params]
    return list(dict.fromkeys(names))


def regression_tasks(trials: list[Trial]) -> list[str]:
    tasks = [task for t in trials if t.results for task in t.results.final.regression_delta]
    return list(dict.fromkeys(tasks))


def stage_names(trials: list[Trial]) -> list[str]:
    return list(dict.fromkeys(stage for t in trials if t.results for stage in t.results.stages))


# --- formatting -------------------------------------------------------------------------------------------
def fmt_value(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def fmt_params(params: dict) -> str:
    return ", ".join(f"{k}={fmt_value(v)}" for k, v in params.items()) or "no swept parameters"


def fmt_estimate(result: ScoreSummary) -> str:
    return f"{result.score:.3f} [95% CI {result.ci_low:.3f}, {result.ci_high:.3f}], n={result.n}"


def score_cells(result: HeldoutResult | ScoreSummary | None) -> list[str]:
    if result is None:
        return ["—", "—", "—"]
    return [f"{result.score:.3f} ± {result.stderr:.3f}", f"[{result.ci_low:.3f}, {result.ci_high:.3f}]", str(result.n)]


def fmt_err(value: float) -> str:
    return "?" if math.isnan(value) else f"{value:.3f}"


def fmt_duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def fmt_output(row: ExampleResult) -> str:
    return f"{row.output or '(empty output)'}\n(score {row.score:.2f})"


def fmt_reference(reference) -> str:
    return reference if isinstance(reference, str) else json.dumps(reference, ensure_ascii=False)


def state_text(trial: Trial) -> str:
    record = trial.record
    if record.state == "COMPLETE":
        text = "complete" if trial.feasible_final else "complete, over a regression limit"
    elif record.state == "PRUNED":
        last = record.intermediate[-1] if record.intermediate else None
        text = f"pruned at step {last.step} (score {last.score:.3f})" if last else "pruned"
    elif record.state == "FAIL":
        text = f"failed: {record.fail_reason or 'no reason recorded'}"
    else:
        text = record.state.lower()
    return text + (f" (retry of #{record.retry_of})" if record.retry_of is not None else "")


def leakage_text(leakage: LeakageReport) -> str:
    overlaps = leakage.exact_overlaps + leakage.ngram_overlaps
    return (
        f"{'passed' if overlaps == 0 else 'OVERLAP FOUND'}: {leakage.exact_overlaps} exact and "
        f"{leakage.ngram_overlaps} {leakage.ngram}-gram overlaps between "
        f"{leakage.n_train} training and {leakage.n_heldout} held-out prompts "
        f"(fraction {leakage.overlap_fraction:.3f})"
    )


# --- CSV --------------------------------------------------------------------------------------------------
def trials_csv(trials: list[Trial]) -> str:
    """Every trial of every sweep, one row each, numbers unrounded (for pandas or a spreadsheet)."""
    params = list(dict.fromkeys(p for t in trials for p in t.record.params))
    tasks = regression_tasks(trials)
    stages = stage_names(trials)
    header = ["sweep", "number", "state", "fail_reason", "retry_of", "feasible"] + [
        f"param_{p}" for p in params
    ]
    header += [
        "heldout_score",
        "heldout_stderr",
        "heldout_ci_low",
        "heldout_ci_high",
        "heldout_n",
        "final_stage",
    ]
    header += [f"heldout_{s}" for s in stages]
    header += [c for task in tasks for c in (f"delta_{task}", f"delta_{task}_stderr", f"delta_{task}_ok")]
    header += [
        "worst_regression",
        "last_intermediate_step",
        "last_intermediate_score",
        "steps_trained",
        "steps_budget",
        "train_runtime_s",
        "duration_s",
        "peak_memory_mb",
        "cost_usd",
        "adapter",
        "command",
    ]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for t in trials:
        r, record = t.results, t.record
        last = record.intermediate[-1] if record.intermediate else None
        row = [t.sweep, record.number, record.state, _csv_text(record.fail_reason), record.retry_of, record.feasible]
        row += [record.params.get(p) for p in params]
        held = t.heldout
        row += [held.score, held.stderr, held.ci_low, held.ci_high, held.n, r.final.stage] if r else [None] * 6
        row += [r.stages[s].heldout.score if r and s in r.stages else None for s in stages]
        for task in tasks:
            delta = regression_delta(r, task) if r else None
            row += [delta.delta, delta.stderr, delta.ok] if delta else [None] * 3
        row += [
            r.final.worst_regression if r else None,
            last.step if last else None,
            last.score if last else None,
            record.steps_trained,
            record.steps_budget,
            r.metrics.train_runtime_s if r else None,
            record.duration_s,
            r.metrics.peak_memory_mb if r else None,
            t.cost,
            r.adapter.path if r else None,
            _csv_text(record.command),
        ]
        writer.writerow(["" if v is None else v for v in row])
    return out.getvalue()


def _csv_text(text: str | None) -> str | None:
    # A cell starting with = + - @ is a formula to spreadsheet programs; untrusted text must stay text.
    return "'" + text if text and text[0] in "=+-@" else text
