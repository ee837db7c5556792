"""Regression gate for CI: is a candidate adapter worse than the committed baseline, on the user's task or
on general ability? Exit 0: pass; 1: a regression was found; 2: cannot compare (bad input, missing files, eval
set, base model or tokenizer mismatch, adapter canary failure). The first line printed says which, and why.

    python -m harness.gate baseline --from sweeps/runs/<run> [--out reports/baseline.json]
    python -m harness.gate check --candidate sweeps/runs/<run> --baseline reports/baseline.json \
        [--out reports/gate] [--alpha 0.05] [--min-effect 0.02] [--reevaluate] [hydra overrides ...]
    python -m harness.gate evaluate --candidate <adapter dir> --out DIR [hydra overrides ...]

The candidate is an adapter directory (adapter_config.json + adapter_model.safetensors) or a run or trial
directory holding `adapter/`. Its results.json is reused when its eval set hash, base model and adapter hash
match the current ones; otherwise the adapter is evaluated here (base model, adapter, canary, held-out set,
regression benchmarks) and that evaluation is written as a results record (`candidate_results.json`). The
Hydra overrides choose the eval set and the base model as for `python -m harness`: pass the baseline's.

Everything is scored on the eval set's reporting split (eval.split=reporting is the gate's default): a baseline
or candidate scored on the selection split, which a sweep chose on, is refused.

Checks, each on the same examples as the baseline (paired: `harness.stats.compare_paired`, McNemar for 0/1
scores, paired bootstrap otherwise):
  heldout_min_score     three states on the candidate's interval: passes when its lower bound >= min_score,
                        fails when its upper bound < min_score, warns when it straddles min_score
  heldout_vs_baseline   fails when the candidate is below the baseline by more than --min-effect AND the
                        paired test rejects "no difference" at --alpha
  regression/<task>     fails when the drop exceeds the task's max_regression AND the paired test rejects "no
                        difference" at --alpha
A drop beyond its limit that the paired test cannot tell from noise is a warning: shown, not failed.

Outputs (--out, each written atomically): junit.xml (one testcase per check), summary.md (verdict line and a
table for a PR comment or $GITHUB_STEP_SUMMARY), gate.json, and candidate_results.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from harness.artifacts import REPO_ROOT, git_revision
from harness.config import RunConfig
from harness.gate_report import Check, GateReport, GateSettings, GateSide, WorseExample, write_reports
from harness.records import (
    BaselineExample,
    BaselineHeldout,
    GateBaseline,
    GatedRegression,
    HeldoutResult,
    RecordError,
    RunResults,
    StageRecord,
    read_record,
    write_record,
)
from harness.stats import compare_paired, holm

# Baselines keep each example's output when they are this small in total (characters), so that a failing gate
# can show what changed; larger eval sets keep scores only, to keep the committed file reviewable.
MAX_BASELINE_OUTPUT_CHARS = 100_000


class CannotCompareError(Exception):
    """Candidate and baseline cannot be compared (missing file, different eval set or base model, ...)."""


# ---------------------------------------------------------------------------------------------------------
# Baselines


def make_baseline(results: RunResults, created_from: str) -> GateBaseline:
    """The committed baseline record from a run's (or a gate evaluation's) results record."""
    if results.status != "complete":
        raise CannotCompareError(f"{created_from}: results status is {results.status!r}, not complete")
    _require_reporting_split(created_from, results.eval_set.split)
    stage = results.final_stage
    heldout = stage.heldout
    keep_outputs = sum(len(row.output) for row in heldout.per_example) <= MAX_BASELINE_OUTPUT_CHARS
    per_example = [BaselineExample(source=row.source, score=row.score, output=row.output if keep_outputs else None)
                   for row in heldout.per_example]
    limits = {b.task: b for b in results.run_config().eval.regression}
    regression = {}
    for task, scores in stage.regression.items():
        if task not in limits:
            raise CannotCompareError(f"{created_from}: regression task {task!r} has no limit in its config")
        regression[task] = GatedRegression(**vars(scores), max_regression=limits[task].max_regression)
    return GateBaseline(
        created_from=created_from,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        git_revision=git_revision(),
        eval_set=results.eval_set,
        model=results.model,
        tokenizer=results.tokenizer,
        adapter=results.adapter,
        min_score=results.eval_set.min_score,
        heldout=BaselineHeldout(
            score=heldout.score, stderr=heldout.stderr, ci_low=heldout.ci_low, ci_high=heldout.ci_high,
            n=heldout.n, grader_versions=heldout.grader_versions, outputs_kept=keep_outputs, per_example=per_example,
        ),
        regression=regression,
        library_versions=results.metrics.library_versions,
    )


def load_baseline(path: Path) -> GateBaseline:
    if not path.is_file():
        raise CannotCompareError(f"baseline {path} not found; write one with: "
                                 f"python -m harness.gate baseline --from <run dir> --out {path}")
    try:
        return read_record(GateBaseline, path)
    except RecordError as err:
        raise CannotCompareError(f"not a gate baseline: {err}; write one with: "
                                 "python -m harness.gate baseline --from <run dir>") from None


def read_results(path: Path) -> RunResults:
    try:
        return read_record(RunResults, path)
    except RecordError as err:
        raise CannotCompareError(str(err)) from None


def results_path_of(source: Path) -> Path:
    """A run or trial directory's results.json, or the results file itself."""
    path = source / "results.json" if source.is_dir() else source
    if not path.is_file():
        raise CannotCompareError(f"{path} not found (an unfinished run has no results.json)")
    return path


# ---------------------------------------------------------------------------------------------------------
# Candidates


def locate_candidate(candidate: Path) -> tuple[Path, Path | None]:
    """(adapter dir, results.json beside it or None) for an adapter, run or trial directory."""
    if not candidate.exists():
        raise CannotCompareError(f"candidate {candidate} does not exist")
    if (candidate / "adapter_model.safetensors").is_file():
        adapter_dir, results = candidate, candidate.parent / "results.json"
    elif (candidate / "adapter" / "adapter_model.safetensors").is_file():
        adapter_dir, results = candidate / "adapter", candidate / "results.json"
    else:
        raise CannotCompareError(f"candidate {candidate}: no adapter_model.safetensors in it or in "
                                 f"{candidate / 'adapter'} (not an adapter, or an unfinished run)")
    if not (adapter_dir / "adapter_config.json").is_file():
        raise CannotCompareError(f"candidate {adapter_dir}: adapter_config.json missing")
    return adapter_dir, results if results.is_file() else None


def candidate_results(cfg: RunConfig, candidate: Path, reevaluate: bool = False) -> tuple[RunResults, str]:
    """The candidate's results record and how it was obtained ("reused <path>" or "evaluated: <why>")."""
    from harness.evalset import verify_frozen
    from harness.model import adapter_hash

    adapter_dir, results_path = locate_candidate(candidate)
    eval_set_hash = verify_frozen(cfg.eval)
    why = "--reevaluate" if reevaluate else "no results.json beside the adapter"
    if results_path is not None and not reevaluate:
        results = read_results(results_path)
        mismatch = _reuse_mismatch(cfg, results, eval_set_hash, adapter_hash(adapter_dir))
        if mismatch is None:
            return results, f"reused {results_path}"
        why = f"{results_path} not reusable: {mismatch}"
    return evaluate_candidate(cfg, adapter_dir), f"evaluated ({why})"


def evaluate_candidate(cfg: RunConfig, adapter_dir: Path) -> RunResults:
    """Evaluate a saved adapter as a run would; returns its results record (built by run.build_results)."""
    from harness.evalset import verify_frozen
    from harness.evaluate import check_adapter_active, evaluate_heldout, load_heldout
    from harness.model import load_adapter, load_base_model, resolve_device
    from harness.run import build_results

    started = time.perf_counter()
    # 1. The frozen eval set (raises naming what changed).
    eval_set_hash = verify_frozen(cfg.eval)
    heldout = load_heldout(cfg.eval)

    # 2. The base model for inference, the adapter on it, and the canary: an adapter that changes nothing
    #    would be scored as the base model.
    device = resolve_device(cfg.train.device)
    base = load_base_model(cfg.model, cfg.quant, device, for_training=False)
    model = load_adapter(base.model, adapter_dir)
    canary = check_adapter_active(model, base.tokenizer, heldout[: cfg.eval.canary_examples])

    # 3. Held-out task and regression benchmarks, every example kept for paired comparisons.
    heldout_result = evaluate_heldout(model, base.tokenizer, cfg.eval, heldout)
    regression = {}
    if cfg.run_regression and cfg.eval.regression:
        from harness.regression import score_regression

        regression = score_regression(model, base.tokenizer, cfg.eval)
    return build_results(
        cfg, kind="gate_evaluation", run_dir=None, base=base, eval_set_hash=eval_set_hash,
        stages={"gate": StageRecord(heldout=heldout_result, regression=regression)}, canary=canary,
        adapter_dir=adapter_dir, device=device, seconds=time.perf_counter() - started,
    )


def _reuse_mismatch(cfg: RunConfig, results: RunResults, eval_set_hash: str, adapter_sha: str) -> str | None:
    """Why a candidate's own results.json cannot stand in for a fresh evaluation (None: it can)."""
    if results.status != "complete":
        return f"status {results.status!r}"
    if results.eval_set.hash != eval_set_hash:
        return f"eval set hash {results.eval_set.hash} != current {eval_set_hash}"
    if results.adapter.hash != adapter_sha:
        return "adapter hash differs from the adapter's files (adapter changed after the run)"
    if results.model.hash != current_model_hash(cfg):
        return f"base model hash {results.model.hash} != current {current_model_hash(cfg)}"
    wanted = {b.task for b in cfg.eval.regression} if cfg.run_regression else set()
    have = set(results.final_stage.regression)
    if not wanted <= have:
        return f"no regression scores for {', '.join(sorted(wanted - have))}"
    return None


def current_model_hash(cfg: RunConfig) -> str:
    """The base model's fingerprint as load_base_model records it, without loading any weights."""
    from harness.model import base_model_hash

    return base_model_hash(cfg.model)


# ---------------------------------------------------------------------------------------------------------
# Comparison


def check(cfg: RunConfig, candidate: Path, baseline_path: Path, settings: GateSettings,
          reevaluate: bool = False) -> tuple[GateReport, RunResults]:
    """Gate `candidate` against the baseline: (report, the candidate's results record)."""
    from harness.evalset import verify_frozen

    # 1. Refuse cheap mismatches before loading any weights.
    _require_reporting_split("the gate's eval config", cfg.eval.split)
    baseline = load_baseline(baseline_path)
    locate_candidate(candidate)
    _require_same("eval set hash", baseline.eval_set.hash, verify_frozen(cfg.eval),
                  f"eval set {baseline.eval_set.name!r}; pass the overrides the baseline was made with")
    _require_same("base model hash", baseline.model.hash, current_model_hash(cfg),
                  f"baseline base model {baseline.model.id!r}")

    # 2. The candidate's results: reused when they match, else evaluated now.
    record, how = candidate_results(cfg, candidate, reevaluate)

    # 3. Every check on the same examples.
    report = compare(baseline, record, settings)
    report.baseline.path = str(baseline_path)
    report.candidate.path, report.candidate.origin = str(candidate), how
    return report, record


def compare(baseline: GateBaseline, candidate: RunResults, settings: GateSettings) -> GateReport:
    """Decide every check for a candidate results record against a baseline record (no model needed)."""
    _require_comparable(baseline, candidate)
    stage = candidate.final_stage
    base_rows, cand_rows = baseline.heldout.per_example, stage.heldout.per_example
    base_scores, cand_scores = [r.score for r in base_rows], [r.score for r in cand_rows]

    # One verdict rests on every paired check (held-out and each benchmark): their p-values are Holm-adjusted
    # together, so more benchmarks do not mean more chances of failing on noise.
    paired_inputs = {"heldout_vs_baseline": (f"held-out vs baseline ({baseline.eval_set.name})", base_scores,
                                             cand_scores, settings.min_effect)}
    for task, base_task in baseline.regression.items():
        paired_inputs[f"regression/{task}"] = (f"regression {task} ({base_task.metric})", base_task.per_example,
                                               stage.regression[task].per_example, base_task.max_regression)
    raw = {name: compare_paired(a, b, alpha=settings.alpha, seed=settings.seed).p_value
           for name, (_, a, b, _) in paired_inputs.items()}
    adjusted = dict(zip(raw, holm(list(raw.values())), strict=True))
    checks = [_min_score_check(baseline, cand_scores, stage.heldout)]
    for name, (title, a, b, max_drop) in paired_inputs.items():
        checks.append(_paired_check(name, title, a, b, max_drop, settings,
                                    adjusted[name] if len(adjusted) > 1 else None))

    notes = []
    if candidate.adapter.hash == baseline.adapter.hash:
        notes.append("The candidate adapter is the baseline's adapter (same hash).")
    for task in sorted(set(stage.regression) - set(baseline.regression)):
        notes.append(f"Regression task {task} is not in the baseline: scored, not gated.")
    versions = candidate.metrics.library_versions
    changed = sorted(k for k, v in baseline.library_versions.items() if versions.get(k) != v)
    if changed:
        notes.append("Library versions differ from the baseline's: " + ", ".join(
            f"{k} {baseline.library_versions[k]} -> {versions.get(k)}" for k in changed))
    worse = []
    if baseline.heldout.outputs_kept:
        changed_outputs = sum(b.output != c.output for b, c in zip(base_rows, cand_rows))
        notes.append(
            f"Held-out outputs that differ from the baseline's: {changed_outputs} of {len(base_rows)}.")
        worse = [WorseExample(source=c.source, baseline_score=b.score, candidate_score=c.score,
                              baseline_output=b.output, candidate_output=c.output)
                 for b, c in zip(base_rows, cand_rows) if c.score < b.score]

    failed = [c for c in checks if c.status == "fail"]
    warned = [c for c in checks if c.status == "warn"]
    if failed:
        verdict = "fail"
        reason = "FAIL: " + "; ".join(f"{c.name}: {c.message}" for c in failed)
    else:
        verdict = "pass"
        reason = f"PASS: {len(checks)} of {len(checks)} checks passed" + (
            f" ({len(warned)} warning{'s' if len(warned) > 1 else ''}: {', '.join(c.name for c in warned)})"
            if warned else "")
    return GateReport(
        verdict=verdict, reason=reason, checks=checks, eval_set=baseline.eval_set, model=baseline.model,
        baseline=GateSide(adapter_hash=baseline.adapter.hash,
                          origin=f"{baseline.created_from} ({baseline.created_at})"),
        candidate=GateSide(adapter_hash=candidate.adapter.hash, path=candidate.adapter.path),
        settings=settings, notes=notes, worse_examples=worse,
    )


def _min_score_check(baseline: GateBaseline, cand_scores: list[float], cand_heldout: HeldoutResult) -> Check:
    """Three states: meets (interval above min_score) passes, below (interval under it) fails, inconclusive warns."""
    from harness.verdicts import min_score_verdict

    min_score, score = baseline.min_score, cand_heldout.score
    verdict = min_score_verdict(cand_scores, min_score)
    return Check(
        name="heldout_min_score", title="held-out score vs min_score (interval)",
        status={"meets": "pass", "below": "fail", "inconclusive": "warn"}[verdict.state],
        message=f"held-out score {verdict.text}",
        baseline=baseline.heldout.score, candidate=score, limit=f"interval vs {min_score:.3f}",
        delta=score - baseline.heldout.score,
        ci_low=verdict.ci_low, ci_high=verdict.ci_high,
        n=len(cand_scores),
    )


def _paired_check(name: str, title: str, base_scores: list[float], cand_scores: list[float], max_drop: float,
                  settings: GateSettings, p_adjusted: float | None = None) -> Check:
    """Fail only when the drop is beyond `max_drop` and the paired test (Holm-adjusted over the gate's paired
    checks when there are several) says it is not noise."""
    comparison = compare_paired(base_scores, cand_scores, alpha=settings.alpha, seed=settings.seed)
    p_value = comparison.p_value if p_adjusted is None else p_adjusted
    beyond_limit = comparison.delta < -max_drop
    if beyond_limit and p_value < settings.alpha:
        status, why = "fail", f"drop beyond the {max_drop:.3f} limit and significant"
    elif beyond_limit:
        status, why = "warn", f"drop beyond the {max_drop:.3f} limit but not distinguishable from noise"
    else:
        status, why = "pass", f"within the {max_drop:.3f} limit"
    p_text = "p<0.001" if comparison.p_value < 0.001 else f"p={comparison.p_value:.2g}"
    if p_adjusted is not None:
        p_text += f", Holm-adjusted {p_adjusted:.2g}"
    return Check(
        name=name, title=title, status=status,
        message=(f"{comparison.mean_a:.3f} -> {comparison.mean_b:.3f} (delta {comparison.delta:+.3f}, "
                 f"{100 * (1 - settings.alpha):g}% {comparison.interval_method} CI "
                 f"[{comparison.ci_low:+.3f}, {comparison.ci_high:+.3f}], "
                 f"{comparison.method} {p_text}, {comparison.losses} worse / {comparison.wins} better of "
                 f"{comparison.n}): {why}"),
        baseline=comparison.mean_a, candidate=comparison.mean_b,
        limit=f"drop <= {max_drop:.3f} unless noise (alpha {settings.alpha:g})",
        delta=comparison.delta, ci_low=comparison.ci_low, ci_high=comparison.ci_high,
        p_value=comparison.p_value,
        test=comparison.method, n=comparison.n,
    )


def _require_comparable(baseline: GateBaseline, candidate: RunResults) -> None:
    """Raise CannotCompareError unless both records score the same examples of one eval set on one base."""
    if candidate.status != "complete":
        raise CannotCompareError(f"candidate results status is {candidate.status!r}, not complete")
    _require_same("eval set hash", baseline.eval_set.hash, candidate.eval_set.hash,
                  f"eval set {baseline.eval_set.name!r}")
    for key in ("hash", "quantized", "compute_dtype"):
        _require_same(f"base model {key}", getattr(baseline.model, key), getattr(candidate.model, key),
                      f"baseline model {baseline.model.id!r}")
    for key in ("name", "vocab_size", "chat_template_sha256"):
        _require_same(f"tokenizer {key}", getattr(baseline.tokenizer, key), getattr(candidate.tokenizer, key), "")
    stage = candidate.final_stage
    _require_same("held-out example count", len(baseline.heldout.per_example), len(stage.heldout.per_example), "")
    for task, base_task in baseline.regression.items():
        if task not in stage.regression:
            raise CannotCompareError(
                f"the baseline gates regression task {task!r} but the candidate has no score for it "
                "(run_regression=false, or the task is missing from eval.regression?)")
        cand_task = stage.regression[task]
        _require_same(f"regression {task} example count", len(base_task.per_example),
                      len(cand_task.per_example), "check the task's limit")
        _require_same(f"regression {task} task_version", base_task.task_version, cand_task.task_version, "")
        _require_same(f"regression {task} metric", base_task.metric, cand_task.metric, "")


def _require_reporting_split(what: str, split: str) -> None:
    if split != "reporting":
        raise CannotCompareError(
            f"{what} is scored on the {split!r} split: the gate compares on the reporting split only (a sweep chose "
            "its best on the selection split, so scores there are biased upward); use the trial's reporting "
            "evaluation (sweeps/<name>/trials/<NNN>/reporting) or eval.split=reporting")


def _require_same(what: str, baseline_value, candidate_value, hint: str) -> None:
    if baseline_value != candidate_value:
        raise CannotCompareError(f"{what} differs: baseline {baseline_value}, candidate {candidate_value}"
                                 + (f" ({hint})" if hint else ""))


# ---------------------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.gate", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("baseline", help="write the committed baseline from a finished run's results")
    make.add_argument("--from", dest="source", required=True, type=Path, help="run/trial dir or results.json")
    make.add_argument("--out", type=Path, default=Path("reports/baseline.json"))
    gate = commands.add_parser("check", help="gate a candidate adapter against the baseline (exit 0/1/2)")
    gate.add_argument("--baseline", type=Path, default=Path("reports/baseline.json"))
    gate.add_argument("--alpha", type=float, default=GateSettings.alpha, help="significance level per check")
    gate.add_argument("--min-effect", type=float, default=GateSettings.min_effect,
                      help="held-out drops up to this size never fail (absolute, 0..1)")
    evaluate = commands.add_parser("evaluate", help="evaluate an adapter and write its results record")
    for sub, default_out in ((gate, "reports/gate"), (evaluate, None)):
        sub.add_argument("--candidate", required=True, type=Path, help="adapter dir, or a run/trial dir")
        sub.add_argument("--out", type=Path, default=Path(default_out) if default_out else None,
                         required=default_out is None, help="output directory")
        sub.add_argument("--reevaluate", action="store_true", help="evaluate even if results.json matches")
        sub.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=tiny eval.max_examples=8")
    args = parser.parse_args(argv)

    if args.command == "baseline":
        return _baseline_command(args.source, args.out)
    try:
        settings = GateSettings(args.alpha, args.min_effect) if args.command == "check" else None
        cfg = _compose(args.overrides)
        if args.command == "evaluate":
            record, how = candidate_results(cfg, args.candidate, args.reevaluate)
            write_record(args.out / "candidate_results.json", record)
            print(f"{how}: held-out {record.final.heldout.score:.3f} "
                  f"-> {args.out / 'candidate_results.json'}")
            return 0
        report, record = check(cfg, args.candidate, args.baseline, settings, args.reevaluate)
    except _input_errors() as err:
        report = GateReport(verdict="cannot_compare", reason=f"CANNOT COMPARE: {_one_line(err)}")
        record = None
        if args.command == "evaluate":
            print(report.reason)
            return 2
    print(report.reason)
    if report.candidate:
        print(f"candidate {report.candidate.path}: {report.candidate.origin}")
    for c in report.checks:
        print(f"  {c.status.upper():<5} {c.name}: {c.message}")
    write_reports(report, args.out, record)
    print(f"reports: {args.out}/summary.md, junit.xml, gate.json")
    return report.exit_code


def _baseline_command(source: Path, out: Path) -> int:
    try:
        results_path = results_path_of(source)
        baseline = make_baseline(read_results(results_path), str(results_path))
    except CannotCompareError as err:
        print(f"CANNOT WRITE BASELINE: {_one_line(err)}")
        return 2
    write_record(out, baseline)
    print(f"baseline {out}: eval set {baseline.eval_set.name} ({baseline.eval_set.hash}), "
          f"held-out {baseline.heldout.score:.3f} (n={baseline.heldout.n}), min_score "
          f"{baseline.min_score}, regression tasks: {', '.join(baseline.regression) or 'none'}")
    return 0


def _compose(overrides: list[str]) -> RunConfig:
    from hydra import compose, initialize_config_dir

    from harness.config import register_configs, to_run_config

    register_configs()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base=None):
        # The gate judges on the reporting split, which no sweep selected on.
        return to_run_config(compose("config", overrides=["eval.split=reporting", *overrides]))


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _input_errors() -> tuple[type[BaseException], ...]:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from harness.data import DataError
    from harness.evaluate import AdapterInactiveError

    # ValueError: config rules (__post_init__, validate), GateSettings; DataError: eval set missing/changed.
    return (CannotCompareError, DataError, AdapterInactiveError, FileNotFoundError, ValueError,
            HydraException, OmegaConfBaseException)


if __name__ == "__main__":
    sys.exit(main())
