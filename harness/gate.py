"""Regression gate for CI: is a candidate adapter worse than the committed baseline, on the user's task or on
general ability? The exit code is a contract:

  0  pass: every check passed (inconclusive ones too, under the default --inconclusive=pass)
  1  fail: at least one check decided "regression" (or, under --inconclusive=fail, was inconclusive)
  2  the gate could not decide: bad, missing or mismatched inputs (eval set, split, subset, base model, tokenizer
     or chat template differ from the baseline's; the adapter canary failed), or ANY exception (out of memory, a
     full disk, a grader that raises, a malformed baseline). A crash never looks like a regression.

The first line printed says which, and why; junit.xml, summary.md and gate.json are written in every case (with
an error state for exit 2), so CI shows the reason.

    python -m harness.gate baseline --from <run or trial reporting dir> [--out reports/baseline.json]
    python -m harness.gate check --candidate <adapter, run or trial dir> [--baseline reports/baseline.json] \
        [--out reports/gate] [--alpha 0.05] [--margin M] [--inconclusive pass|fail] [--reevaluate] [overrides ...]
    python -m harness.gate evaluate --candidate <adapter dir> --out DIR [hydra overrides ...]

The baseline is self-describing: it records the eval identity (set, split, subset, hash), the base model, the
tokenizer and chat template, and the Hydra overrides it was made with. `check` composes its config from those
overrides (the user's own on top, eval.split=reporting always): a CI job passes nothing the baseline knows.
`baseline` refuses a record whose own min_score verdict is not "meets", and one scored on the selection split.

The candidate's results.json is reused when its eval set, base model and adapter match; when only the held-out
graders changed, its stored outputs (and the baseline's) are re-graded with zero model forward passes
(`harness.regrade`); otherwise the adapter is evaluated here and written as `candidate_results.json`.

The checks (`harness.gate_checks`): forgetting/<task> (candidate vs the base model, within the benchmark's
max_regression), vs_baseline/heldout and vs_baseline/<task> (candidate vs the baseline adapter, within --margin,
default the eval set's equivalence_margin), and heldout_min_score; each pass / fail / inconclusive, the paired ones
Holm-adjusted together.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from harness.config import RunConfig
from harness.gate_baseline import compose_gate_config, load_baseline, make_baseline, regraded_baseline
from harness.gate_checks import CannotCompareError, compare
from harness.gate_report import INCONCLUSIVE_POLICIES, GateReport, GateSettings, write_reports
from harness.records import (
    GateBaseline,
    RecordError,
    RunResults,
    StageRecord,
    read_record,
    write_record,
)

__all__ = ["CannotCompareError", "GateReport", "GateSettings", "check", "compare", "load_baseline", "main",
           "make_baseline"]

# ---------------------------------------------------------------------------------------------------------
# Results records


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
    """The candidate's results record and how it was obtained: "reused <path>", "re-graded <path> ..." (the stored
    outputs graded again, no forward pass) or "evaluated: <why>"."""
    from harness.evalset import verify_frozen
    from harness.model import adapter_hash
    from harness.regrade import graders_only_changed, regrade_results

    adapter_dir, results_path = locate_candidate(candidate)
    eval_set_hash = verify_frozen(cfg.eval)
    why = "--reevaluate" if reevaluate else "no results.json beside the adapter"
    if results_path is not None and not reevaluate:
        results = read_results(results_path)
        mismatch = _reuse_mismatch(cfg, results, eval_set_hash, adapter_hash(adapter_dir))
        if mismatch is None:
            return results, f"reused {results_path}"
        if mismatch.startswith("eval set hash") and graders_only_changed(
                results.config["eval"], results.final_stage.heldout.grader_versions, results.eval_set.hash, cfg.eval):
            results = regrade_results(results, cfg, eval_set_hash)
            if _reuse_mismatch(cfg, results, eval_set_hash, adapter_hash(adapter_dir)) is None:
                return results, (f"re-graded {results_path}: only the graders changed, so its stored outputs were "
                                 "graded again (0 model forward passes)")
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


def check(candidate: Path, baseline_path: Path, settings: GateSettings, overrides: list[str] | tuple = (),
          reevaluate: bool = False) -> tuple[GateReport, RunResults]:
    """Gate `candidate` against the baseline, evaluating it with the baseline's own overrides (then `overrides`):
    (report, the candidate's results record)."""
    from harness.evalset import verify_frozen
    from harness.regrade import graders_only_changed

    # 1. The baseline says how it was evaluated; refuse cheap mismatches before loading any weights.
    baseline = load_baseline(baseline_path)
    try:
        cfg = compose_gate_config([*baseline.overrides, *overrides])
    except ValueError as err:  # a config rule (harness.config's __post_init__ checks) names the field
        raise CannotCompareError(f"config: {err}") from None
    locate_candidate(candidate)
    eval_set_hash = verify_frozen(cfg.eval)
    if baseline.eval_set.hash != eval_set_hash and graders_only_changed(
            baseline.config["eval"], baseline.heldout.grader_versions, baseline.eval_set.hash, cfg.eval):
        baseline = regraded_baseline(baseline, cfg, eval_set_hash)
        regraded = True
    else:
        regraded = False
    _require_same_setup(baseline, cfg, eval_set_hash)

    # 2. The candidate's results: reused when they match, re-graded when only graders changed, else evaluated.
    record, how = candidate_results(cfg, candidate, reevaluate)

    # 3. Every check on the same examples.
    report = compare(baseline, record, settings)
    report.baseline.path = str(baseline_path)
    report.candidate.path, report.candidate.origin = str(candidate), how
    if regraded:
        report.notes.insert(0, "The held-out graders changed since the baseline was made: its stored outputs were "
                               "re-graded with the current graders (0 model forward passes).")
    return report, record


def _require_same_setup(baseline: GateBaseline, cfg: RunConfig, eval_set_hash: str) -> None:
    """Eval identity, base model and tokenizer/chat template from the config alone (no weights loaded)."""
    from harness.run import tokenizer_identity
    from harness.validate import load_tokenizer_checked

    tokenizer = tokenizer_identity(load_tokenizer_checked(cfg))
    pairs = [
        ("eval set", baseline.eval_set.name, cfg.eval.name),
        ("eval split", baseline.eval_set.split, cfg.eval.split),
        ("eval subset (max_examples)", baseline.max_examples, cfg.eval.max_examples),
        ("eval set hash", baseline.eval_set.hash, eval_set_hash),
        ("base model hash", baseline.model.hash, current_model_hash(cfg)),
        ("tokenizer", baseline.tokenizer.name, tokenizer.name),
        ("chat template sha256", baseline.tokenizer.chat_template_sha256, tokenizer.chat_template_sha256),
    ]
    rows = [[what, str(b), str(c)] for what, b, c in pairs]
    differing = [row for row in rows if row[1] != row[2]]
    if differing:
        raise CannotCompareError(
            "the candidate's setup differs from the baseline's in " + ", ".join(row[0] for row in differing)
            + f" (baseline {differing[0][1]}, candidate {differing[0][2]}); the gate applied the baseline's own "
            f"{len(baseline.overrides)} overrides, so an override of yours, a changed eval set or another model "
            "differs", rows)


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
    gate.add_argument("--alpha", type=float, default=GateSettings.alpha,
                      help="one-sided level of each test; family-wise false-alarm rate of the paired checks")
    gate.add_argument("--margin", type=float, default=None,
                      help="vs_baseline drops smaller than this are 'no worse' (default: eval.equivalence_margin)")
    gate.add_argument("--inconclusive", choices=INCONCLUSIVE_POLICIES, default=GateSettings.inconclusive,
                      help="what an inconclusive check does to the exit code (default pass: exit 1 means a "
                           "regression was shown)")
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
    if args.command == "evaluate":
        return _evaluate_command(args)
    record = None
    try:
        settings = GateSettings(args.alpha, args.margin, args.inconclusive)
        report, record = check(args.candidate, args.baseline, settings, args.overrides, args.reevaluate)
    except Exception as err:  # noqa: BLE001 -- the contract: whatever went wrong, exit 2, never 1
        report = error_report(err)
    print(report.reason, flush=True)
    for what, b, c in report.mismatch:
        print(f"  {what:<28} baseline {b:<36} candidate {c}")
    if report.candidate:
        print(f"candidate {report.candidate.path}: {report.candidate.origin}")
    for c in report.checks:
        print(f"  {c.status.upper():<12} {c.name}: {c.message}")
    try:
        write_reports(report, args.out, record)
    except Exception as err:  # noqa: BLE001 -- a full disk here: still exit 2, with the reason on the console
        print(f"ERROR: could not write the gate reports to {args.out}: {_one_line(err)}")
        return 2
    print(f"reports: {args.out}/summary.md, junit.xml, gate.json")
    return report.exit_code


def error_report(err: BaseException) -> GateReport:
    """The report of a gate that could not decide: a mismatch or bad input, or any other exception."""
    if isinstance(err, (CannotCompareError, *_input_errors())):
        return GateReport(verdict="cannot_compare", reason=f"CANNOT COMPARE: {_one_line(err)}",
                          mismatch=getattr(err, "rows", []))
    return GateReport(verdict="error", reason=f"ERROR (the gate could not decide): {type(err).__name__}: "
                                              f"{_one_line(err)}")


def _evaluate_command(args) -> int:
    try:
        cfg = compose_gate_config(args.overrides)
        record, how = candidate_results(cfg, args.candidate, args.reevaluate)
        write_record(args.out / "candidate_results.json", record)
    except Exception as err:  # noqa: BLE001 -- as for check: anything that goes wrong is exit 2
        print(error_report(err).reason)
        return 2
    print(f"{how}: held-out {record.final.heldout.score:.3f} -> {args.out / 'candidate_results.json'}")
    return 0


def _baseline_command(source: Path, out: Path) -> int:
    try:
        results_path = results_path_of(source)
        baseline = make_baseline(read_results(results_path), str(results_path))
        write_record(out, baseline)
    except Exception as err:  # noqa: BLE001
        print(f"CANNOT WRITE BASELINE: {_one_line(err)}")
        return 2
    print(f"baseline {out}: eval set {baseline.eval_set.name} ({baseline.eval_set.hash}), "
          f"held-out {baseline.heldout.score:.3f} (n={baseline.heldout.n}, min_score {baseline.min_score}: "
          f"{baseline.min_score_verdict}), regression tasks: {', '.join(baseline.regression) or 'none'}; "
          f"overrides: {' '.join(baseline.overrides) or 'none'}")
    return 0


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _input_errors() -> tuple[type[BaseException], ...]:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from harness.data import DataError
    from harness.evaluate import AdapterInactiveError

    # Input problems (exit 2 as well, reported as "cannot compare"): config rules, eval set missing or changed,
    # the adapter canary, missing files.
    return (DataError, AdapterInactiveError, FileNotFoundError, HydraException, OmegaConfBaseException)


if __name__ == "__main__":
    sys.exit(main())
