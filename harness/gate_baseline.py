"""The gate's baseline: written once from a finished, reporting-split results record (`make_baseline`), committed,
and read back strictly (`load_baseline`): its format, every field's type, and the fields' agreement.

    baseline = make_baseline(read_record(RunResults, path), created_from=str(path))
    cfg = compose_gate_config([*baseline.overrides, *user_overrides])   # the config it was evaluated with
"""

from __future__ import annotations

import dataclasses
import json
import math
from datetime import datetime, timezone
from pathlib import Path

from harness.artifacts import REPO_ROOT, git_revision
from harness.config import RunConfig
from harness.gate_checks import CannotCompareError
from harness.records import (
    BASELINE_FORMAT,
    BaselineExample,
    BaselineHeldout,
    GateBaseline,
    GatedRegression,
    RecordError,
    RunResults,
    read_record,
)

# Baselines keep each example's output when they are this small in total (characters), so that a failing gate
# can show what changed and a grader change can be re-graded; larger eval sets keep scores only.
MAX_BASELINE_OUTPUT_CHARS = 100_000
# What a baseline's overrides rebuild: everything that decides how an adapter is evaluated, nothing of training.
EVALUATION_KEYS = ("eval.", "model.", "quant.", "run_regression")


def make_baseline(results: RunResults, created_from: str) -> GateBaseline:
    """The committed baseline record from a run's (or a gate evaluation's) results record."""
    from harness.verdicts import min_score_verdict

    if results.status != "complete":
        raise CannotCompareError(f"{created_from}: results status is {results.status!r}, not complete")
    _require_reporting_split(created_from, results.eval_set.split)
    stage = results.final_stage
    heldout = stage.heldout
    verdict = min_score_verdict(heldout.scores, results.eval_set.min_score)
    if verdict.state != "meets":
        raise CannotCompareError(
            f"{created_from}: its own min_score verdict is {verdict.state!r}, not 'meets' ({verdict.text}); a "
            "baseline must be an adapter worth shipping, or every candidate is compared with a failure")
    keep_outputs = sum(len(row.output) for row in heldout.per_example) <= MAX_BASELINE_OUTPUT_CHARS
    per_example = [BaselineExample(source=row.source, score=row.score, output=row.output if keep_outputs else None)
                   for row in heldout.per_example]
    cfg = results.run_config()
    limits = {b.task: b for b in cfg.eval.regression}
    regression = {}
    for task, scores in stage.regression.items():
        if task not in limits:
            raise CannotCompareError(f"{created_from}: regression task {task!r} has no limit in its config")
        regression[task] = GatedRegression(**vars(scores), max_regression=limits[task].max_regression)
    base_regression = dict(results.baselines.regression) if results.baselines else {}
    missing = sorted(set(regression) - set(base_regression))
    if missing:
        raise CannotCompareError(
            f"{created_from}: no base-model score for regression task {missing[0]!r}, so its forgetting check "
            "(candidate vs the base model) could not run; make the baseline from a run's or a trial's reporting "
            "results.json, which records the base model's scores")
    return GateBaseline(
        created_from=created_from,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        git_revision=git_revision(),
        overrides=baseline_overrides(cfg),
        config=results.config,
        eval_set=results.eval_set,
        max_examples=cfg.eval.max_examples,
        model=results.model,
        tokenizer=results.tokenizer,
        adapter=results.adapter,
        min_score=results.eval_set.min_score,
        min_score_verdict=verdict.state,
        heldout=BaselineHeldout(
            score=heldout.score, stderr=heldout.stderr, ci_low=heldout.ci_low, ci_high=heldout.ci_high,
            n=heldout.n, grader_versions=heldout.grader_versions, outputs_kept=keep_outputs, per_example=per_example,
        ),
        regression=regression,
        base_regression={task: base_regression[task] for task in regression},
        library_versions=results.metrics.library_versions,
    )


def baseline_overrides(cfg: RunConfig) -> list[str]:
    """The overrides that rebuild `cfg`'s evaluation settings from the default composition (verified)."""
    from harness.reproduce import config_overrides

    overrides = [o for o in config_overrides(cfg)
                 if o.startswith(EVALUATION_KEYS) and not o.startswith("eval.split=")]
    rebuilt = compose_gate_config(overrides)
    for group in ("eval", "model", "quant"):
        if dataclasses.asdict(getattr(rebuilt, group)) != dataclasses.asdict(getattr(cfg, group)):
            raise CannotCompareError(f"the overrides {overrides} would not rebuild the record's {group} config")
    return overrides


def load_baseline(path: Path) -> GateBaseline:
    """The baseline record, checked for its format, every field's type and the fields' agreement."""
    regenerate = f"python -m harness.gate baseline --from <run or trial reporting dir> --out {path}"
    if not path.is_file():
        raise CannotCompareError(f"baseline {path} not found; write one with: {regenerate}")
    try:
        data_format = json.loads(path.read_text(encoding="utf-8")).get("format")
    except (ValueError, AttributeError):
        data_format = None
    if isinstance(data_format, str) and data_format.startswith("harness.gate/baseline") and \
            data_format != BASELINE_FORMAT:
        raise CannotCompareError(
            f"baseline {path} is format {data_format!r}, written by an older harness; this gate reads "
            f"{BASELINE_FORMAT!r} (it records the overrides, eval identity and base-model scores it needs). "
            f"Regenerate it: {regenerate}")
    try:
        baseline = read_record(GateBaseline, path)
    except RecordError as err:
        raise CannotCompareError(f"not a gate baseline: {err}; write one with: {regenerate}") from None
    _check_baseline_fields(baseline, path)
    return baseline


def _check_baseline_fields(baseline: GateBaseline, path: Path) -> None:
    """Well-typed is not enough: counts must agree and scores and limits be in range (else exit 2, naming it)."""
    def bad(field: str, why: str) -> CannotCompareError:
        return CannotCompareError(f"{path}: field {field!r} {why}; regenerate the baseline")

    def check_scores(field: str, scores: list[float], n: int) -> None:
        if len(scores) != n or n == 0:
            raise bad(field, f"has {len(scores)} scores, expected n={n} (> 0)")
        for i, score in enumerate(scores):
            if not (math.isfinite(score) and 0.0 <= score <= 1.0):
                raise bad(f"{field}[{i}]", f"is {score}, not a score in [0, 1]")

    if baseline.min_score_verdict != "meets":
        raise bad("min_score_verdict", f"is {baseline.min_score_verdict!r}, not 'meets'")
    if not 0.0 <= baseline.min_score <= 1.0:
        raise bad("min_score", f"is {baseline.min_score}, not in [0, 1]")
    check_scores("heldout.per_example", [row.score for row in baseline.heldout.per_example], baseline.heldout.n)
    for task, scores in baseline.regression.items():
        check_scores(f"regression.{task}.per_example", scores.per_example, scores.n)
        if not 0.0 <= scores.max_regression < 1.0:
            raise bad(f"regression.{task}.max_regression", f"is {scores.max_regression}, not in [0, 1)")
        if task not in baseline.base_regression:
            raise bad("base_regression", f"has no entry for the gated task {task!r}")
        check_scores(f"base_regression.{task}.per_example", baseline.base_regression[task].per_example, scores.n)
    if not isinstance(baseline.config.get("eval"), dict) or "equivalence_margin" not in baseline.config["eval"]:
        raise bad("config.eval.equivalence_margin", "is missing")


def regraded_baseline(baseline: GateBaseline, cfg: RunConfig, eval_set_hash: str) -> GateBaseline:
    """The baseline's kept outputs graded by the current graders (only the graders changed since it was made)."""
    from harness.regrade import regrade_heldout

    if not baseline.heldout.outputs_kept:
        raise CannotCompareError(
            "the held-out graders changed since the baseline was made and the baseline kept no outputs to re-grade "
            "(its outputs were too large to keep); regenerate it with: python -m harness.gate baseline --from "
            "<run or trial reporting dir>")
    heldout = regrade_heldout(cfg.eval, [(row.source, row.output) for row in baseline.heldout.per_example])
    per_example = [BaselineExample(source=row.source, score=row.score, output=row.output)
                   for row in heldout.per_example]
    config = {**baseline.config, "eval": {**baseline.config["eval"],
                                          "graders": [dataclasses.asdict(g) for g in cfg.eval.graders]}}
    return dataclasses.replace(
        baseline, config=config, eval_set=dataclasses.replace(baseline.eval_set, hash=eval_set_hash),
        heldout=BaselineHeldout(score=heldout.score, stderr=heldout.stderr, ci_low=heldout.ci_low,
                                ci_high=heldout.ci_high, n=heldout.n, grader_versions=heldout.grader_versions,
                                outputs_kept=True, per_example=per_example))


def _require_reporting_split(what: str, split: str) -> None:
    if split != "reporting":
        raise CannotCompareError(
            f"{what} is scored on the {split!r} split: the gate compares on the reporting split only (a sweep chose "
            "its best on the selection split, so scores there are biased upward); use the trial's reporting "
            "evaluation (sweeps/<name>/trials/<NNN>/reporting) or eval.split=reporting")


def compose_gate_config(overrides: list[str] | tuple) -> RunConfig:
    from hydra import compose, initialize_config_dir

    from harness.config import register_configs, to_run_config

    register_configs()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base=None):
        # The gate judges on the reporting split, which no sweep selected on.
        return to_run_config(compose("config", overrides=["eval.split=reporting", *overrides]))
