"""harness.report re-grades when only a grader changed (zero model forward passes), and refuses stale generations.

On test_report's tiny sweep, given reporting evaluations and the verdicts.json made from them: json_fields "v2"
(its version bumped, as tests/test_gate.py simulates a grader change, and its scoring changed: it also credits the
one hostile output in the sweep) re-scores what the records hold, and the report shows the new scores and verdicts
with no module of any model called. A generation setting changed since is refused, not re-graded.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
from test_report import SCRIPT, _copy_sweep, _edit_record, _refresh_final, _regraded, sweep_dir  # noqa: F401

from harness.recordio import read_record, write_record
from harness.records import RunResults, SweepVerdicts, TrialRecord
from harness.render import md_escape
from harness.report import ReportError, build_report, load_sweep, main, write_report


@pytest.fixture(scope="module")
def judged(sweep_dir, tmp_path_factory) -> Path:  # noqa: F811
    """A copy of the sweep with a reporting evaluation per trial (5/8 and 3/8 right, trial 0 keeping its hostile
    output) and verdicts.json made from them by harness.reporting, as a finished sweep leaves them."""
    from harness.evalset import verify_frozen
    from harness.evaluate import load_heldout
    from harness.reporting import decide, reporting_picks

    judged = _copy_sweep(sweep_dir, tmp_path_factory.mktemp("judged") / "rank", "rank")
    completed, reporting = [], {}
    for number, right in ((0, range(5)), (1, range(3))):
        trial_dir = judged / "trials" / f"{number:03d}"
        results = read_record(RunResults, trial_dir / "results.json")
        completed.append((read_record(TrialRecord, trial_dir / "trial.json"), results))
        cfg = results.run_config()
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, split="reporting"))
        examples = load_heldout(cfg.eval)
        record = copy.deepcopy(results)
        record.kind, record.run_dir = "reporting_evaluation", str(trial_dir / "reporting")
        record.config["eval"]["split"] = "reporting"
        record.eval_set.hash, record.eval_set.split = verify_frozen(cfg.eval), "reporting"
        for stage in record.stages.values():
            stage.heldout = _regraded(stage.heldout, cfg, examples, right)
        record.baselines.zero_shot = _regraded(record.baselines.zero_shot, cfg, examples, right=[6])
        record.baselines.prompt_baseline = _regraded(record.baselines.prompt_baseline, cfg, examples, right=[0, 6])
        _refresh_final(record, cfg)
        write_record(trial_dir / "reporting" / "results.json", record)
        reporting[number] = record
    best, runner_up, cheaper = reporting_picks(completed)
    scored = {t.number: (t, r, reporting[t.number]) for t, r in (p for p in (best, runner_up, cheaper) if p)}
    write_record(judged / "verdicts.json", decide(scored, best[0].number, runner_up and runner_up[0].number,
                                                  cheaper and cheaper[0].number, margin=0.05))
    return judged


def _json_fields_v2(monkeypatch):
    """json_fields version 2: as version 1, and it also gives credit to the output SCRIPT."""
    from harness import graders

    version_1 = graders._grade_json_fields

    def version_2(cfg, output, reference):
        grade = version_1(cfg, output, reference)
        return graders.Grade(1.0, grade.details) if output == SCRIPT else grade

    monkeypatch.setattr(graders, "_grade_json_fields", version_2)
    monkeypatch.setitem(graders.GRADER_VERSIONS, "json_fields", "2")


def _per_example(record: RunResults):
    heldouts = [stage.heldout for stage in record.stages.values()]
    heldouts += [record.baselines.zero_shot, record.baselines.prompt_baseline]
    return [row for heldout in heldouts for row in heldout.per_example]


def test_a_grader_version_bump_regrades_stored_outputs_with_zero_forward_passes(judged, tmp_path, monkeypatch,
                                                                                forward_calls):
    recorded = {path: path.read_bytes() for path in judged.rglob("*.json")}
    assert "Re-graded without regenerating" not in build_report([load_sweep(judged)]).markdown  # graders unchanged
    old_verdicts = read_record(SweepVerdicts, judged / "verdicts.json")
    old = {path: read_record(RunResults, path) for path in sorted(judged.glob("trials/*/**/results.json"))}
    assert len(old) == 4  # two trials, each with its reporting evaluation

    _json_fields_v2(monkeypatch)
    sweep = load_sweep(judged)
    report = build_report([sweep])
    write_report([judged], tmp_path / "report")
    assert forward_calls == [], f"{len(forward_calls)} module calls: a model ran"

    # Every score is the new grader's: per example, the headline, the trial's objective value.
    for trial in (t for t in sweep.trials if t.results is not None):
        before = old[trial.directory / "results.json"]
        assert trial.results.final_stage.heldout.grader_versions == {"json_fields": "2"}
        assert trial.results.eval_set.hash != before.eval_set.hash
        for row, was in zip(_per_example(trial.results), _per_example(before), strict=True):
            assert row.score == (1.0 if row.output == SCRIPT else was.score)
        assert trial.record.values == [trial.results.final.heldout.score]
    rank0 = next(t for t in sweep.trials if t.record.number == 0)
    assert rank0.results.final.heldout.score == old[rank0.directory / "results.json"].final.heldout.score + 0.125

    # The verdicts are made again from the re-graded reporting scores (trial 0 there: 5/8 -> 6/8).
    min_score = {v.question: v for v in sweep.verdicts.verdicts}["min_score"]
    old_min_score = {v.question: v for v in old_verdicts.verdicts}["min_score"]
    assert sweep.verdicts.recommended == old_verdicts.recommended == 0
    assert (old_min_score.estimate, min_score.estimate) == (0.625, 0.75)
    section = report.markdown.split("## Verdicts on the reporting split", 1)[1].split("\n## ", 1)[0]
    assert "reporting split 0.750" in section

    # It says so, prominently: which grader, recorded -> current version, how many scores changed, no model run.
    changed = sum(row.output == SCRIPT and row.score != 1.0 for record in old.values() for row in _per_example(record))
    total = sum(len(_per_example(record)) for record in old.values())
    assert changed == 2
    notice = md_escape("Re-graded without regenerating (sweep rank): the graders changed since its trials were "
                       "scored (json_fields version 1 -> 2)")
    assert notice in report.markdown
    assert report.markdown.index(notice) < report.markdown.index("## Verdict")
    assert md_escape(f"4 results records, {changed} of {total} per-example scores changed; 0 model forward "
                     "passes") in report.markdown
    assert "0 model forward passes" in (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    assert {path: path.read_bytes() for path in judged.rglob("*.json")} == recorded  # nothing recorded rewritten

    torch.nn.Linear(2, 2)(torch.zeros(2))  # the counter counts
    assert forward_calls == ["Linear"]


def _stale_copy(judged: Path, tmp_path: Path) -> Path:
    """A copy of the sweep whose eval set was re-frozen since with another max_new_tokens (in a manifest of its
    own: the fixture's is shared)."""
    from harness.evalset import freeze

    stale = _copy_sweep(judged, tmp_path / "sweeps" / "rank", "rank")
    manifest = tmp_path / "manifest.json"
    eval_cfg = read_record(RunResults, stale / "trials" / "000" / "results.json").run_config().eval
    freeze(dataclasses.replace(eval_cfg, manifest=str(manifest), generation=dataclasses.replace(
        eval_cfg.generation, max_new_tokens=eval_cfg.generation.max_new_tokens + 8)))
    for path in stale.glob("trials/*/**/results.json"):
        _edit_record(path, RunResults, lambda r: r.config["eval"].update(manifest=str(manifest)))
    return stale


def test_a_grader_change_with_a_generation_setting_change_is_refused_not_regraded(judged, tmp_path, monkeypatch,
                                                                                  capsys, forward_calls):
    stale = _stale_copy(judged, tmp_path)
    _json_fields_v2(monkeypatch)
    with pytest.raises(ReportError, match=r"trials/000/results.json: stale: .*\(generation changed; graders: "
                                          r"json_fields version 1 -> 2\)") as refused:
        load_sweep(stale)
    assert "regenerate with the trial's command (python -m harness model=tiny" in str(refused.value)
    out = tmp_path / "report"
    assert main([str(stale), "--out", str(out)]) == 2
    assert "stale" in capsys.readouterr().err
    assert not out.exists() and forward_calls == []


def test_a_generation_setting_change_alone_is_reported_as_recorded_and_called_stale(judged, tmp_path):
    stale = _stale_copy(judged, tmp_path)
    sweep = load_sweep(stale)
    assert sweep.regraded == [] and len(sweep.stale) == 4
    markdown = build_report([sweep]).markdown
    assert md_escape("Stale records (sweep rank): ") in markdown
    assert md_escape("(generation changed since); its scores are shown as recorded") in markdown
    assert "Re-graded without regenerating" not in markdown
    recorded = read_record(RunResults, stale / "trials" / "000" / "results.json")
    assert next(t for t in sweep.trials if t.record.number == 0).results.final == recorded.final
