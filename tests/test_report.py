"""harness.report: a report built from a small tiny-model sweep, its escaping, refusals and determinism.

The fixture sweep has two real trials (run_experiment on the tiny model), one pruned and one failed trial,
written as the typed records a sweep writes (harness.records), so a change to a record's shape breaks the
fixture where the change is. The tiny random model scores 0 everywhere, so the fixture then re-grades a few
outputs with the real grader (replacing them by the reference answer) and adds lm-eval-shaped regression
scores and a DPO stage, so that every part of the report has something to show.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_OVERRIDES, make_config

from harness.artifacts import REPO_ROOT
from harness.recordio import read_record, to_json, write_record
from harness.records import (
    HeldoutResult,
    IntermediateScore,
    ModelIdentity,
    RegressionScore,
    RunResults,
    SweepRecord,
    TrialRecord,
)
from harness.render import md_escape
from harness.report import SECTIONS, ReportError, build_report, load_sweep, main, rank_trials, write_report

SCRIPT = "<script>alert(1)</script>"
FAIL_REASON = "CUDA out of memory | <b>trial 3</b> `boom`"


# --- fixture: a sweep directory per the contract ------------------------------------------------------------
@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    from harness.evalset import freeze
    from harness.evaluate import load_heldout
    from harness.run import run_experiment
    from harness.sweep import best_trial

    root = tmp_path_factory.mktemp("report")
    sweep = root / "sweeps" / "rank"
    # The tiny overrides change generation settings, which are part of the eval set's identity: freeze a
    # private manifest for them instead of touching the committed one.
    overrides = TINY_OVERRIDES + [f"eval.manifest={root / 'manifest.json'}"]
    cfg = make_config(overrides)
    freeze(cfg.eval)
    examples = load_heldout(cfg.eval)

    trials = {}
    for number, rank in ((0, 4), (1, 8)):
        trial_dir = sweep / "trials" / f"{number:03d}"
        trial_cfg = make_config(overrides + [f"lora.r={rank}"])
        results = run_experiment(trial_cfg, trial_dir)
        trials[number] = (trial_dir, results, rank)

    # Trial 0: 6/8 right, breaks example 6 (which the base got right) with a script tag in its output;
    # within regression limits. Trial 1: SFT 4/8 then DPO 7/8, but over the general_mc limit.
    _regrade(trials[0][1], cfg, examples, "sft", right=range(6), replace={6: SCRIPT})
    _regrade_baselines(trials[0][1], cfg, examples)
    _regression(trials[0][1], cfg, "sft", {"harness_general_mc": 12, "harness_instruct_follow": 9})
    _regrade(trials[1][1], cfg, examples, "sft", right=range(4))
    _regrade_baselines(trials[1][1], cfg, examples)
    _regression(trials[1][1], cfg, "sft", {"harness_general_mc": 9, "harness_instruct_follow": 10})
    _add_dpo_stage(trials[1][1], trials[1][0], cfg, examples)

    records = []
    for number, (trial_dir, results, rank) in trials.items():
        write_record(trial_dir / "results.json", results)
        records.append(_trial_record(number, "COMPLETE", rank, trial_dir, results=results))

    pruned = sweep / "trials" / "002"
    intermediate = [IntermediateScore(step=1, score=0.0), IntermediateScore(step=2, score=0.125)]
    records.append(_trial_record(2, "PRUNED", 16, pruned, intermediate=intermediate))
    pruned.mkdir(parents=True)
    (pruned / "loss.jsonl").write_text(
        "".join(json.dumps({"stage": "sft", "step": s, "loss": 10.9 - 0.05 * s}) + "\n" for s in (1, 2))
    )
    records.append(_trial_record(3, "FAIL", 32, sweep / "trials" / "003", fail_reason=FAIL_REASON))
    for record in records:
        write_record(Path(record.trial_dir) / "trial.json", record)

    results = trials[0][1]
    sweep_record = SweepRecord(
        name="rank",
        question="Which LoRA rank is enough for JSON extraction?",
        command="python -m harness +sweep=rank " + " ".join(overrides),
        storage="sqlite:///sweeps/rank/study.db",
        sampler="grid",
        pruner="median",
        objective="constrained",
        n_trials=4,
        space={"lora_r": [4, 8, 16, 32]},
        eval_set=results.eval_set,
        model=ModelIdentity(id=results.model.id, hash=results.model.hash, quantized=results.model.quantized),
        price_per_gpu_hour=2.0,
        config=results.config,
        started_at="2025-01-01T00:00:00",
        finished_at="2025-01-01T00:01:00",
        wall_time_s=60.0,
    )
    write_record(sweep / "sweep.json", sweep_record)
    write_record(sweep / "best.json", best_trial(records))  # as the sweep writes it
    return sweep


def _regraded(result: HeldoutResult, cfg, examples, right, replace=None) -> HeldoutResult:
    """`result` with the outputs of `right` examples replaced by the reference answer, graded by the real
    grader (and any outputs in `replace` substituted)."""
    from harness.evaluate import grade_outputs

    outputs = [row.output for row in result.per_example]
    for index in right:
        outputs[index] = json.dumps(examples[index].reference)
    for index, text in (replace or {}).items():
        outputs[index] = text
    return grade_outputs(cfg.eval, examples, outputs)


def _regrade(results: RunResults, cfg, examples, stage, right, replace=None):
    results.stages[stage].heldout = _regraded(results.stages[stage].heldout, cfg, examples, right, replace)
    _refresh_final(results, cfg)


def _regrade_baselines(results: RunResults, cfg, examples):
    baselines = results.baselines
    baselines.zero_shot = _regraded(baselines.zero_shot, cfg, examples, right=[6])
    baselines.prompt_baseline = _regraded(baselines.prompt_baseline, cfg, examples, right=[0, 6])
    baselines.prompting_meets_min_score = baselines.prompt_baseline.score >= cfg.eval.min_score


def _regression(results: RunResults, cfg, stage, adapter_right: dict[str, int], n: int = 20):
    """lm-eval-shaped scores: the base gets 12 (mc) / 10 (follow) of 20 right."""
    base_right = {"harness_general_mc": 12, "harness_instruct_follow": 10}
    results.baselines.regression = {t: _regression_score(t, k, n) for t, k in base_right.items()}
    results.stages[stage].regression = {t: _regression_score(t, k, n) for t, k in adapter_right.items()}
    _refresh_final(results, cfg)


def _regression_score(task, right, n) -> RegressionScore:
    p = right / n
    return RegressionScore(
        task=task,
        metric="acc",
        score=p,
        stderr=math.sqrt(p * (1 - p) / (n - 1)),
        n=n,
        task_version="1",
        per_example=[1.0] * right + [0.0] * (n - right),
    )


def _add_dpo_stage(results: RunResults, trial_dir, cfg, examples):
    dpo = copy.deepcopy(results.final_stage)  # the SFT stage
    dpo.train.stage = "dpo"
    results.stages["dpo"] = dpo
    results.final.stage = "dpo"
    _regrade(results, cfg, examples, "dpo", right=range(7))
    results.metrics.tokens_per_s["dpo"] = 321.0
    with (trial_dir / "loss.jsonl").open("a") as handle:
        for step in (1, 2, 3):
            handle.write(
                json.dumps({"stage": "dpo", "step": step, "loss": math.log(2) - 0.05 * (step - 1)}) + "\n"
            )


def _refresh_final(results: RunResults, cfg):
    """Re-derive the headline after the fixture's edits, with the builder's own function."""
    from harness.run import final_scores

    results.final = final_scores(cfg, results.final.stage, results.stages, results.baselines)


def _trial_record(number, state, rank, trial_dir, results=None, intermediate=None, fail_reason=None):
    return TrialRecord(
        number=number,
        state=state,
        params={"lora_r": rank},
        command=f"python -m harness model=tiny quant=none lora.r={rank}",
        trial_dir=str(trial_dir),
        host="report-test",
        pid=1000 + number,
        started_at="2025-01-01T00:00:00",
        fail_reason=fail_reason,
        intermediate=intermediate or [],
        values=[results.final.heldout.score] if results else None,
        feasible=results.final.regression_ok if results else None,
        duration_s=15.0 + number,
        finished_at="2025-01-01T00:00:15",
    )


def _copy_sweep(sweep_dir: Path, dest: Path, name: str, eval_set_hash=None, model_hash=None) -> Path:
    """A copy of the sweep named `name`, its trials pointing at their copies; a hash given replaces the
    eval set's or base model's in every record."""
    shutil.copytree(sweep_dir, dest)
    sweep = read_record(SweepRecord, dest / "sweep.json")
    sweep.name = name
    for trial_json in sorted(dest.glob("trials/*/trial.json")):
        trial = read_record(TrialRecord, trial_json)
        trial.trial_dir = str(trial_json.parent)
        write_record(trial_json, trial)
    results_paths = sorted(dest.glob("trials/*/results.json"))
    all_results = [read_record(RunResults, path) for path in results_paths]
    for record in [sweep, *all_results]:
        record.eval_set.hash = eval_set_hash or record.eval_set.hash
        record.model.hash = model_hash or record.model.hash
    write_record(dest / "sweep.json", sweep)
    for path, results in zip(results_paths, all_results, strict=True):
        write_record(path, results)
    return dest


def _edit_record(path: Path, cls, edit) -> None:
    record = read_record(cls, path)
    edit(record)
    write_record(path, record)


# --- tests ------------------------------------------------------------------------------------------------
def test_report_has_every_section(sweep_dir, tmp_path):
    out = tmp_path / "report"
    path = write_report([sweep_dir], out)
    page = path.read_text(encoding="utf-8")
    markdown = (out / "report.md").read_text(encoding="utf-8")

    for section in SECTIONS:
        assert f">{section}</h2>" in page
        assert f"\n## {section}\n" in markdown
    # Verdict: the best feasible trial (0, not the higher-scoring trial 1 that broke a regression limit),
    # against the base and the prompt baseline, and whether prompting alone was enough.
    assert "Best on the selection split: trial #0 (lora_r=4), selection split 0.750" in page
    assert "biased upward" in page and "No reporting-split verdicts" in page
    assert "was fine-tuning needed? " in page and "Prompting alone scores 0.250 &lt; min_score 0.7" in page
    assert "1 of 2 completed trials exceeded a limit" in page
    assert "Eval set json_extract (hash " in page
    assert "best.json names" not in page  # it names trial 0 too
    # Trials: every state, DPO after SFT, regression deltas, cost.
    assert "pruned at step 2 (score 0.125)" in page
    assert "failed: CUDA out of memory" in page
    assert "OVER LIMIT" in page and "after DPO" in page and "$0.0083" in page
    # Plots: four embedded PNGs in the HTML, the same four as files beside the Markdown.
    assert page.count('<img src="data:image/png;base64,') == 4
    images = sorted(p.name for p in (out / "images").iterdir())
    assert images == [
        "loss_curves.png",
        "objective_vs_params.png",
        "regression_deltas.png",
        "score_vs_regression.png",
    ]
    for name in images:
        assert f"](images/{name})" in markdown
        assert (out / "images" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Paired comparisons and fixed/broken examples.
    assert "trial #1 (runner-up)" in page
    assert "fixed 6, broke 1, unchanged 1" in page
    # Data card (no preference rows: no DPO data in the best trial's card) and reproduce.
    assert "passed: 0 exact and 0 13-gram overlaps" in page and "⟦" in page
    assert "| training examples used | 16 |" in markdown and "| preference" not in markdown
    assert "python -m harness model=tiny quant=none lora.r=4" in page
    rows = (out / "trials.csv").read_text().splitlines()
    assert len(rows) == 5 and [r.split(",")[2] for r in rows[1:]] == [
        "COMPLETE",
        "COMPLETE",
        "PRUNED",
        "FAIL",
    ]


def test_untrusted_text_is_escaped(sweep_dir, tmp_path):
    out = tmp_path / "report"
    write_report([sweep_dir], out)
    page = (out / "report.html").read_text(encoding="utf-8")
    markdown = (out / "report.md").read_text(encoding="utf-8")

    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # the broken example's output, shown as text
    assert "<b>" not in page and "&lt;b&gt;trial 3&lt;/b&gt;" in page
    assert "<script" not in markdown.lower() and "<b>" not in markdown
    assert (
        "CUDA out of memory \\| &lt;b&gt;trial 3&lt;/b&gt; \\`boom\\`" in markdown
    )  # one cell, no code span
    assert md_escape("a|b`c<d>[x](y)") == "a\\|b\\`c&lt;d&gt;\\[x\\](y)"


def test_best_is_the_sweeps_best_json_pick(sweep_dir, tmp_path):
    """The report ranks by harness.selection.rank_key, as the sweep's best.json does: the same trial."""
    from harness.sweep import best_trial

    sweep = load_sweep(sweep_dir)
    assert [t.record.number for t in rank_trials(sweep.trials)] == [0, 1] and sweep.best_number == 0

    # Trial 0 marked infeasible by the sweep's constraints after best.json was written: no trial is within
    # its limits now, so both rules pick the higher score (trial 1), and the report says best.json is stale.
    stale = _copy_sweep(sweep_dir, tmp_path / "sweeps" / "rank", "rank")
    _edit_record(stale / "trials" / "000" / "trial.json", TrialRecord, lambda r: setattr(r, "feasible", False))
    sweep = load_sweep(stale)
    assert rank_trials(sweep.trials)[0].record.number == best_trial([t.record for t in sweep.trials]).number == 1
    page = write_report([stale], tmp_path / "report").read_text(encoding="utf-8")
    assert "Best on the selection split: trial #1 (lora_r=8)" in page
    # Its SFT and DPO stages are compared with each other (a paired row only a DPO best trial gets).
    markdown = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert "| held-out | trial \\#1 after SFT | trial \\#1 after DPO | 8 |" in markdown
    assert "Note: the sweep&#x27;s best.json names trial #0, but by the same rule the trials now in " in page


def test_verdict_names_the_export_command_and_the_servable_rank_rule(sweep_dir, tmp_path):
    sweep = load_sweep(sweep_dir)
    best = rank_trials(sweep.trials)[0]
    markdown = (write_report([sweep_dir], tmp_path / "report").parent / "report.md").read_text(encoding="utf-8")
    verdict = markdown.split("## Verdict", 1)[1].split("\n## ", 1)[0]
    assert f"python -m harness.export {best.results.run_dir}" in verdict.replace("\\", "")
    assert "every LoRA rank was checked to be servable by vLLM" in verdict

    unrestricted = _copy_sweep(sweep_dir, tmp_path / "sweeps" / "rank", "rank")
    _edit_record(unrestricted / "sweep.json", SweepRecord, lambda r: setattr(r, "servable_ranks_only", False))
    markdown = (write_report([unrestricted], tmp_path / "r2").parent / "report.md").read_text(encoding="utf-8")
    assert "did not restrict LoRA ranks to those vLLM can serve" in markdown


def test_data_card_shows_preference_data_when_a_dpo_stage_had_some(sweep_dir, tmp_path):
    dpo = _copy_sweep(sweep_dir, tmp_path / "sweeps" / "dpo", "dpo")

    def add_preference_data(results):
        results.data.preference_file = "data/prefs.jsonl"
        results.data.preference_rows = 12
        results.data.preference_pairs = 10
        results.data.preference_duplicates_removed = 2

    _edit_record(dpo / "trials" / "000" / "results.json", RunResults, add_preference_data)
    write_report([dpo], tmp_path / "report")
    markdown = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert (
        "| preference duplicates removed | 2 |\n| preference file | data/prefs.jsonl |\n"
        "| preference pairs | 10 |\n| preference rows | 12 |\n"
    ) in markdown


def test_sweeps_with_different_eval_sets_or_models_are_refused(sweep_dir, tmp_path, capsys):
    other = _copy_sweep(sweep_dir, tmp_path / "sweeps" / "other", "other", eval_set_hash="0123456789abcdef")
    out = tmp_path / "reports" / "both"
    with pytest.raises(ReportError, match="different eval set .*0123456789abcdef"):
        write_report([sweep_dir, other], out)
    assert main([str(sweep_dir), str(other), "--out", str(out)]) == 2
    assert "different eval set" in capsys.readouterr().err
    assert not out.exists()

    other_model = _copy_sweep(sweep_dir, tmp_path / "sweeps" / "m", "m", model_hash="feedfacefeedface")
    with pytest.raises(ReportError, match="different base model"):
        build_report([load_sweep(sweep_dir), load_sweep(other_model)])

    # A trial whose results disagree with its own sweep.json is refused too, naming the file.
    mixed = _copy_sweep(sweep_dir, tmp_path / "sweeps" / "mixed", "mixed")
    _edit_record(mixed / "trials" / "001" / "results.json", RunResults, lambda r: setattr(r.model, "hash", "f00d"))
    with pytest.raises(ReportError, match=r"trials/001/results.json: model hash f00d differs from the sweep's"):
        load_sweep(mixed)


def test_malformed_artifacts_are_refused_naming_the_file_and_field(sweep_dir, tmp_path, capsys):
    broken = _copy_sweep(sweep_dir, tmp_path / "sweeps" / "broken", "broken")
    out = tmp_path / "out"
    trial_json = broken / "trials" / "001" / "trial.json"
    good_trial = trial_json.read_text()
    trial_json.write_text('{"number": 1,\n "state": COMPLETE}\n')
    with pytest.raises(ReportError, match=r"trials/001/trial.json:2: not valid JSON"):
        write_report([broken], out)

    trial_json.write_text(good_trial)
    results_json = broken / "trials" / "001" / "results.json"
    good_results = json.loads(results_json.read_text())
    mistyped = copy.deepcopy(good_results)
    mistyped["final"]["heldout"]["score"] = "high"
    results_json.write_text(json.dumps(mistyped))
    with pytest.raises(ReportError, match=r"trials/001/results.json: field 'final.heldout.score' must be a number"):
        write_report([broken], out)
    assert main([str(broken), "--out", str(out)]) == 2  # the CLI: exit 2, naming the file and the field
    assert "results.json: field 'final.heldout.score' must be a number" in capsys.readouterr().err

    gate_evaluation = {**good_results, "kind": "gate_evaluation", "data": None, "baselines": None}
    results_json.write_text(json.dumps(gate_evaluation))
    with pytest.raises(ReportError, match=r"trials/001/results.json: no baselines or data card"):
        write_report([broken], out)

    results_json.unlink()
    with pytest.raises(
        ReportError, match=r"trials/001/results.json: file not found \(the trial is marked COMPLETE"
    ):
        write_report([broken], out)

    sweep_json = to_json(read_record(SweepRecord, broken / "sweep.json"))
    del sweep_json["price_per_gpu_hour"]
    (broken / "sweep.json").write_text(json.dumps(sweep_json))
    with pytest.raises(ReportError, match=r"broken/sweep.json: missing field 'price_per_gpu_hour'"):
        write_report([broken], out)
    assert not out.exists()


def test_sweeps_on_the_same_eval_set_share_one_table(sweep_dir, tmp_path):
    alpha = _copy_sweep(sweep_dir, tmp_path / "sweeps" / "alpha", "alpha")
    out = tmp_path / "both"
    page = write_report([sweep_dir, alpha], out).read_text(encoding="utf-8")
    assert "<th>sweep</th>" in page and "Sweep report: rank+alpha" in page
    assert "Best on the selection split: trial rank#0" in page  # ties keep the order the sweeps were given in
    assert "best.json names" not in page  # each sweep's best.json is about that sweep alone
    rows = (out / "trials.csv").read_text().splitlines()[1:]
    assert sorted({r.split(",")[0] for r in rows}) == ["alpha", "rank"] and len(rows) == 8


def test_rebuild_is_byte_identical_and_loads_no_model(sweep_dir, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    write_report([sweep_dir], first)
    write_report([sweep_dir], second)
    write_report([sweep_dir], second)  # over an existing report
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert len(files) == 7
    for name in files:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name

    # Default output: reports/<name> beside the sweeps folder.
    default = write_report([sweep_dir])
    assert default == sweep_dir.parent.parent / "reports" / "rank" / "report.html"
    assert default.read_bytes() == (first / "report.html").read_bytes()

    # The CLI, in a fresh interpreter (in this one other tests have imported torch): same bytes, and neither
    # harness.model nor torch (so no model) is ever imported.
    third = tmp_path / "third"
    code = (
        "import sys; from harness.report import main; rc = main(sys.argv[1:]); "
        "assert 'harness.model' not in sys.modules, 'harness.model imported'; "
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(sweep_dir), "--out", str(third)], check=True, cwd=REPO_ROOT
    )
    assert (third / "report.html").read_bytes() == (first / "report.html").read_bytes()


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed with apt-get when missing (as tests/postgres/ installs PostgreSQL).

    Skips only where installing is impossible (not root, or no apt-get); a failed install fails the test.
    """
    import report_screenshot

    if path := report_screenshot.find_chromium():
        return path
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium is not installed and cannot be: installing it needs root and apt-get "
                    "(apt-get install -y chromium)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
        if result.returncode != 0:
            pytest.fail(f"{' '.join(command)} failed ({result.returncode}):\n{(result.stdout + result.stderr)[-3000:]}")
    path = report_screenshot.find_chromium()
    assert path, "apt-get installed chromium, but no chromium executable is on PATH"
    return path


def test_report_renders_in_headless_chromium(sweep_dir, tmp_path, chromium):
    import report_screenshot

    path = write_report([sweep_dir], tmp_path / "report")
    checks = report_screenshot.check_report(path, tmp_path / "screenshot.png")
    assert checks["verdict_on_page"] and checks["images_on_page"] == 4 and checks["screenshot_not_blank"]


def test_reporting_split_verdicts_are_shown_beside_selection_scores(sweep_dir, tmp_path):
    from harness.records import SweepVerdicts
    from harness.reporting import decide

    judged = tmp_path / "rank"
    shutil.copytree(sweep_dir, judged)
    scored = {}
    for number in (0, 1):
        trial = read_record(TrialRecord, judged / "trials" / f"{number:03d}" / "trial.json")
        results = read_record(RunResults, judged / "trials" / f"{number:03d}" / "results.json")
        # A stand-in reporting evaluation: the same adapter's record with one more example wrong.
        reporting = copy.deepcopy(results)
        reporting.final.heldout.score -= 0.125
        scored[number] = (trial, results, reporting)
    write_record(judged / "verdicts.json", decide(scored, best=0, runner_up=1, cheaper=None, margin=0.05))
    verdicts = read_record(SweepVerdicts, judged / "verdicts.json")
    assert verdicts.scores[0].optimism_gap == pytest.approx(0.125)
    report = build_report([load_sweep(judged)])
    assert "Recommended adapter: trial #0" in report.html
    section = report.markdown.split("## Verdicts on the reporting split", 1)[1].split("\n## ", 1)[0]
    assert "optimism gap" in section and "+0.125" in section
    for verdict in verdicts.verdicts:
        assert verdict.state.upper() in section
    assert "Wilson score interval" in section and "exact conditional" in section
    # Without verdicts.json the report says its scores are the biased selection ones.
    plain = build_report([load_sweep(sweep_dir)]).markdown
    assert "No reporting-split verdicts" in plain.split("## Verdicts on the reporting split", 1)[1]
