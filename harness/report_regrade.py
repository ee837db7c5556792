"""The report re-grades a sweep whose graders changed since it was scored: zero model forward passes.

    regrade_sweep(sweep)               # in harness.report.load_sweep: re-grades in memory, sets sweep.regraded/.stale
    blocks = regrade_section(sweeps)   # says so, prominently, above the verdict

Today's graders for a results record are its recorded graders at the versions the code gives them now
(`harness.graders.grader_version`), with the grader configuration of the eval set's frozen manifest where there is
one (re-freezing is how an eval set's graders change). When they equal the recorded ones and the manifest's
generation settings are the record's, nothing is read beyond the record. Otherwise `regrade.graders_only_changed`
decides: only the graders differ -> every held-out result in the trial's results.json and in the reporting
evaluations behind verdicts.json is graded again (`regrade.regrade_results`), and the verdicts are made again from
the re-graded per-example scores with harness.reporting's own functions; anything else (generation settings, the
prompt, the data) -> ReportError (exit 2, nothing written) naming the record, what changed and the command that
regenerates it, as mismatched eval sets are refused. Generation settings changed with the graders as recorded: the
records agree with each other, so they are reported as they are, under a warning that they are stale and how to
regenerate them. Recorded files are never rewritten.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from harness.artifacts import resolve_path
from harness.graders import GraderConfig, grader_version
from harness.records import HeldoutResult, RunResults, TrialRecord
from harness.render import Para
from harness.report import ReportError, Sweep, _read

# Eval settings a manifest freezes that decide what the model generates (the manifest's key: the config's).
GENERATION_INPUTS = ("generation", "prompt_baseline", "fields")


@dataclass
class Regraded:
    """One results record the report re-graded."""

    path: Path
    changes: list[str]  # "json_fields version 1 -> 2", or the grader configuration that changed
    scores: int  # per-example scores in the record (every stage's and the baselines')
    changed: int  # of which the current graders scored differently


def regrade_sweep(sweep: Sweep) -> None:
    """Replace, in memory, the records of `sweep` that were scored by other graders with re-graded ones (trial
    results, their objective values, verdicts.json): `sweep.regraded` says which, `sweep.stale` which records were
    generated under other settings than the eval set's today."""
    done, sweep.stale = [], []
    trials = {t.record.number: t for t in sweep.trials}
    for trial in sweep.trials:
        if trial.results is None:
            continue
        regraded = _regrade_record(trial.results, trial.directory / "results.json", trial.record, sweep)
        if regraded is not None:
            trial.results, note = regraded
            done.append(note)
            if trial.record.values:  # the objective's first value is the held-out score (harness.sweep)
                values = [trial.results.final.heldout.score, *trial.record.values[1:]]
                trial.record = dataclasses.replace(trial.record, values=values)
    if done:
        sweep.meta = dataclasses.replace(sweep.meta, eval_set=dataclasses.replace(
            sweep.meta.eval_set, hash=next(t.results for t in sweep.trials if t.results).eval_set.hash))
    if sweep.verdicts is None:
        sweep.regraded = done
        return
    reporting, reporting_done = {}, []
    for score in sweep.verdicts.scores:
        trial = trials[score.number]
        path = trial.directory / "reporting" / "results.json"
        if not path.is_file() and not done:
            continue  # verdicts.json alone is reported as it is; re-made, it needs its reporting evaluations
        record = _read(RunResults, path, "verdicts.json was made from this reporting evaluation, and re-grading "
                                         "the trials needs it to make the verdicts again")
        regraded = _regrade_record(record, path, trial.record, sweep)
        reporting[score.number], note = regraded or (record, None)
        if note is not None:
            reporting_done.append(note)
    if done or reporting_done:
        sweep.verdicts = _verdicts_again(sweep, reporting)
    sweep.regraded = done + reporting_done


def regrade_section(sweeps: list[Sweep]) -> list:
    blocks = []
    for sweep in sweeps:
        if sweep.stale:
            blocks.append(Para(f"Stale records (sweep {sweep.name}): {sweep.stale[0]}"
                               + (f" (and {len(sweep.stale) - 1} more records like it)" if len(sweep.stale) > 1 else ""),
                               "verdict warn"))
        if not sweep.regraded:
            continue
        changes = ", ".join(dict.fromkeys(c for note in sweep.regraded for c in note.changes))
        scores = sum(note.scores for note in sweep.regraded)
        changed = sum(note.changed for note in sweep.regraded)
        blocks.append(Para(
            f"Re-graded without regenerating (sweep {sweep.name}): the graders changed since its trials were "
            f"scored ({changes}). Every score, interval and verdict in this report comes from the stored "
            f"per-example outputs graded again by today's graders: {len(sweep.regraded)} results records, "
            f"{changed} of {scores} per-example scores changed; 0 model forward passes. The recorded results.json "
            "and verdicts.json files are unchanged (they hold the old grades); pruned trials' intermediate scores "
            "are as recorded.", "verdict warn"))
    return blocks


def _regrade_record(results: RunResults, path: Path, trial: TrialRecord,
                    sweep: Sweep) -> tuple[RunResults, Regraded] | None:
    """The record re-graded by today's graders and what changed; None when its graders are today's."""
    recorded_eval = results.config["eval"]
    manifest_path = resolve_path(recorded_eval["manifest"])
    manifest = _manifest(manifest_path)
    recorded_graders = [_grader(g, path) for g in recorded_eval["graders"]]
    graders = [_grader(g, manifest_path) for g in manifest["graders"]] if manifest else recorded_graders
    recorded_versions = results.final_stage.heldout.grader_versions
    changes = [f"{name} version {recorded_versions.get(name, 'none')} -> {grader_version(grader)}"
               for name, grader in zip(_names(graders), graders, strict=True)
               if recorded_versions.get(name) != grader_version(grader)]
    if [dataclasses.asdict(g) for g in graders] != [dataclasses.asdict(g) for g in recorded_graders]:
        changes.append(f"grader configuration {_specs(recorded_graders)} -> {_specs(graders)} "
                       f"(frozen in {manifest_path})")
    recorded_inputs = {"generation": recorded_eval["generation"], "prompt_baseline": recorded_eval["prompt_baseline"],
                       "fields": {"prompt": recorded_eval["prompt_field"], "reference": recorded_eval["reference_field"]}}
    moved = [key for key in GENERATION_INPUTS if manifest and manifest.get(key) != recorded_inputs[key]]
    regenerate = (f"regenerate with the trial's command ({trial.command}) or run the sweep again "
                  f"({sweep.meta.command})")
    if not changes:
        if moved:
            sweep.stale.append(
                f"{path} was generated under other eval settings than the eval set's frozen manifest {manifest_path} "
                f"({', '.join(moved)} changed since); its scores are shown as recorded, and are not comparable with "
                f"new runs on that eval set; {regenerate}")
        return None

    from harness.data import DataError
    from harness.evalset import eval_fingerprint
    from harness.regrade import eval_identity, graders_only_changed, regrade_results

    cfg = results.run_config()
    today = dataclasses.replace(cfg.eval, graders=graders)
    if manifest:
        today = dataclasses.replace(
            today, generation=type(today.generation)(**manifest["generation"]),
            prompt_baseline=type(today.prompt_baseline)(**manifest["prompt_baseline"]),
            prompt_field=manifest["fields"]["prompt"], reference_field=manifest["fields"]["reference"])
    try:
        if moved or not graders_only_changed(recorded_eval, recorded_versions, results.eval_set.hash, today):
            what = ", ".join(moved) or "the eval set's data or splits"
            raise ReportError(
                f"{path}: stale: its outputs were generated under other eval settings than the eval set's today "
                f"({what} changed{'; graders: ' + ', '.join(changes) if changes else ''}), so re-grading them "
                f"would mix old generations with a new eval set; {regenerate}")
        regraded = regrade_results(results, dataclasses.replace(cfg, eval=today),
                                   eval_identity(today, eval_fingerprint(today)["hash"]))
    except DataError as err:
        raise ReportError(f"{path}: the graders changed ({', '.join(changes)}) but its eval set cannot be read to "
                          f"re-grade it: {err}") from None
    old, new = _scores(results), _scores(regraded)
    return regraded, Regraded(path=path, changes=changes, scores=len(new),
                              changed=sum(a != b for a, b in zip(old, new, strict=True)))


def _verdicts_again(sweep: Sweep, reporting: dict[int, RunResults]):
    """verdicts.json's verdicts made again, by harness.reporting, from the re-graded records."""
    from harness.reporting import decide, reporting_picks

    completed = [(t.record, t.results) for t in sweep.trials if t.results is not None]
    picks = reporting_picks(completed)
    for role, pick in zip(("best", "runner-up", "cheaper alternative"), picks, strict=True):
        if pick is not None and pick[0].number not in reporting:
            raise ReportError(
                f"{sweep.directory / 'verdicts.json'}: with today's graders the {role} on the selection split is "
                f"trial {pick[0].number}, which has no reporting evaluation; the verdicts cannot be made again "
                f"without running the model: run the sweep again ({sweep.meta.command})")
    scored = {record.number: (record, results, reporting[record.number])
              for record, results in (p for p in picks if p is not None)}
    best, runner_up, cheaper = (p[0].number if p is not None else None for p in picks)
    return decide(scored, best, runner_up, cheaper, sweep.verdicts.equivalence_margin)


def _scores(results: RunResults) -> list[float]:
    heldouts: list[HeldoutResult | None] = [stage.heldout for stage in results.stages.values()]
    if results.baselines is not None:
        heldouts += [results.baselines.zero_shot, results.baselines.prompt_baseline]
    return [score for heldout in heldouts if heldout is not None for score in heldout.scores]


def _manifest(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ReportError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    missing = [key for key in ("graders", *GENERATION_INPUTS) if key not in manifest]
    if missing:
        raise ReportError(f"{path}: missing field {missing[0]!r} (not an eval set manifest)")
    return manifest


def _grader(spec: dict, path: Path) -> GraderConfig:
    try:
        return GraderConfig(**spec)
    except (TypeError, ValueError) as err:
        raise ReportError(f"{path}: grader {spec!r}: {err}") from None


def _names(graders: list[GraderConfig]) -> list[str]:
    """Each grader's name in a record, as harness.evaluate.grade_outputs gives it."""
    return [g.type if index == 0 else f"{g.type}_{index}" for index, g in enumerate(graders)]


def _specs(graders: list[GraderConfig]) -> str:
    from harness.evalset_create import grader_spec

    return "[" + ", ".join(str(grader_spec(g)) for g in graders) + "]"
