"""harness.gate on the tiny model: passes an unchanged adapter, fails a damaged one, exits 2 for anything else.

On the tiny random model every json_extract score is 0, so a score-based gate could never fail there. The
tests gate on a "golden" eval set instead: the first 8 held-out prompts with the trained tiny adapter's own
greedy outputs as references (exact match). The undamaged adapter scores 1.0 on it, and any change in its
behaviour shows up as a paired drop. The decision rules on synthetic scores: tests/test_gate_rules.py; the
example workflow: tests/test_gate_workflow.py.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY_OVERRIDES, make_config
from safetensors.torch import load_file, save_file

from harness import gate
from harness.artifacts import REPO_ROOT, resolve_path
from harness.evalset import freeze
from harness.gate import GateSettings, make_baseline
from harness.records import write_record

# Short generations and no prompt baseline: the gate needs neither, and the tests stay at seconds.
GATE_TINY = TINY_OVERRIDES + ["eval.generation.max_new_tokens=8", "eval.prompt_baseline.enabled=false"]


@pytest.fixture(scope="module")
def gate_setup(tmp_path_factory) -> SimpleNamespace:
    """One trained tiny run, a golden eval set built from its outputs, and a baseline on that set."""
    from harness.run import run_experiment

    root = tmp_path_factory.mktemp("gate")
    # 1. These overrides change generation settings: the committed manifest does not apply, freeze our own.
    # The run scores the reporting split, as a gate baseline must (a sweep's chosen trial: its reporting evaluation).
    run_overrides = GATE_TINY + ["eval.min_score=0", f"eval.manifest={root}/json_extract_manifest.json",
                                 "eval.split=reporting"]
    run_cfg = make_config(run_overrides)
    freeze(run_cfg.eval)
    run_dir = root / "run"
    results = run_experiment(run_cfg, run_dir)

    # 2. Golden eval set: the run's own held-out outputs become the references.
    lines = resolve_path(run_cfg.eval.data_file).read_text(encoding="utf-8").splitlines()
    golden_rows = []
    for row in results.stages["sft"].heldout.per_example:
        line_number = int(row.source.rsplit(":", 1)[1])
        messages = json.loads(lines[line_number - 1])["messages"]
        golden_rows.append({"messages": messages, "reference": row.output, "split": "reporting"})
    golden_rows += [{**r, "split": "selection"} for r in golden_rows]  # an eval set declares both splits
    (root / "golden.jsonl").write_text("".join(json.dumps(r) + "\n" for r in golden_rows), encoding="utf-8")
    golden_overrides = GATE_TINY + [
        "eval.name=golden", f"eval.data_file={root}/golden.jsonl",
        f"eval.manifest={root}/golden_manifest.json", "eval.graders=[{type:exact_match}]",
        "eval.min_score=0.5", "eval.split=reporting",
    ]
    golden_cfg = make_config(golden_overrides)
    freeze(golden_cfg.eval)

    # 3. The baseline: the adapter evaluated on the golden set, as `python -m harness.gate evaluate` does.
    record = gate.evaluate_candidate(golden_cfg, run_dir / "adapter")
    baseline = make_baseline(record, "golden evaluation")
    write_record(root / "golden_baseline.json", baseline)
    return SimpleNamespace(root=root, run_dir=run_dir, results=results, run_overrides=run_overrides,
                           golden_cfg=golden_cfg, golden_overrides=golden_overrides, golden_record=record,
                           golden_baseline=root / "golden_baseline.json")


def _rewrite_lora_b(adapter_dir: Path, out_dir: Path, make) -> Path:
    """A copy of the adapter with every LoRA B matrix replaced by make(tensor)."""
    tensors = load_file(adapter_dir / "adapter_model.safetensors")
    assert any("lora_B" in name for name in tensors)
    out_dir.mkdir(parents=True)
    save_file({k: make(v) if "lora_B" in k else v for k, v in tensors.items()},
              out_dir / "adapter_model.safetensors", metadata={"format": "pt"})
    shutil.copy(adapter_dir / "adapter_config.json", out_dir / "adapter_config.json")
    return out_dir


def test_golden_set_is_meaningful(gate_setup):
    # The damaged-adapter test below can only fail the gate because the undamaged adapter scores 1.0 here.
    heldout = gate_setup.golden_record.stages["gate"].heldout
    assert heldout.score == 1.0 and heldout.n == 8


def test_baseline_records_what_rebuilds_its_evaluation(gate_setup):
    baseline = gate.load_baseline(gate_setup.golden_baseline)
    assert baseline.eval_set.split == "reporting" and baseline.max_examples == 8
    assert baseline.min_score_verdict == "meets"
    assert "eval.name=golden" in baseline.overrides and "model.kind=tiny" in baseline.overrides
    assert not any(o.startswith(("train.", "eval.split=")) for o in baseline.overrides)
    rebuilt = gate.compose_gate_config(baseline.overrides)
    assert rebuilt.eval == gate_setup.golden_cfg.eval and rebuilt.model == gate_setup.golden_cfg.model


def test_same_adapter_passes_against_its_own_baseline(gate_setup):
    # No overrides: the baseline supplies them. A second, separate evaluation of the same adapter (greedy: the same
    # outputs). n=8 cannot show non-inferiority within the 0.05 margin: that check is inconclusive, not failed.
    report, record = gate.check(gate_setup.run_dir, gate_setup.golden_baseline, GateSettings(), reevaluate=True)
    assert report.verdict == "pass" and report.exit_code == 0, report.reason
    assert record is not gate_setup.golden_record and record.kind == "gate_evaluation"
    assert report.candidate.origin.startswith("evaluated")
    first = [row.output for row in gate_setup.golden_record.stages["gate"].heldout.per_example]
    assert first == [row.output for row in record.stages["gate"].heldout.per_example]
    checks = {c.name: c for c in report.checks}
    assert {name: c.status for name, c in checks.items()} == {
        "heldout_min_score": "pass", "vs_baseline/heldout": "inconclusive"}
    assert checks["vs_baseline/heldout"].margin == 0.05 and checks["vs_baseline/heldout"].mde > 0.05
    assert "minimum detectable drop" in checks["vs_baseline/heldout"].message
    assert "Held-out outputs that differ from the baseline's: 0 of 8." in report.notes
    strict, _ = gate.check(gate_setup.run_dir, gate_setup.golden_baseline, GateSettings(inconclusive="fail"))
    assert strict.exit_code == 1 and "--inconclusive=fail" in strict.reason


def test_damaged_adapter_fails_naming_the_check(gate_setup, tmp_path):
    generator = torch.Generator().manual_seed(0)
    damaged = _rewrite_lora_b(gate_setup.run_dir / "adapter", tmp_path / "damaged",
                              lambda b: torch.randn(b.shape, generator=generator) * 5)
    out = tmp_path / "report"
    code = gate.main(["check", "--candidate", str(damaged), "--baseline", str(gate_setup.golden_baseline),
                      "--out", str(out)])
    assert code == 1
    report = json.loads((out / "gate.json").read_text())
    failed = {c["name"] for c in report["checks"] if c["status"] == "fail"}
    assert failed == {"heldout_min_score", "vs_baseline/heldout"}
    assert report["reason"].startswith("FAIL: heldout_min_score") and "vs_baseline/heldout" in report["reason"]
    assert report["exit_code"] == 1 and "Holm" in report["correction"]
    assert report["worse_examples"], "the summary shows what the damaged adapter got wrong"

    # JUnit: one testcase per check, failures named; tests= counts the testcases.
    suite = ET.parse(out / "junit.xml").getroot()
    cases = suite.findall("testcase")
    assert int(suite.get("tests")) == len(cases) == len(report["checks"]) == 2
    assert int(suite.get("failures")) == 2
    assert {c.get("name") for c in cases if c.find("failure") is not None} == failed

    summary = (out / "summary.md").read_text()
    assert summary.startswith("## ❌ Regression gate: FAIL")
    assert "| vs_baseline/heldout | held-out (golden) vs the baseline adapter | 1.000 | 0.000 | -1.000 |" in summary
    candidate = json.loads((out / "candidate_results.json").read_text())
    assert candidate["adapter"]["hash"] != report["baseline"]["adapter_hash"]


def test_inactive_adapter_is_cannot_compare(gate_setup, tmp_path, capsys):
    zeros = _rewrite_lora_b(gate_setup.run_dir / "adapter", tmp_path / "zero_b", torch.zeros_like)
    out = tmp_path / "report"
    code = gate.main(["check", "--candidate", str(zeros), "--baseline", str(gate_setup.golden_baseline),
                      "--out", str(out)])
    assert code == 2
    first_line = capsys.readouterr().out.splitlines()[0]
    assert first_line.startswith("CANNOT COMPARE: adapter canary failed")
    suite = ET.parse(out / "junit.xml").getroot()
    assert suite.get("tests") == "1" and suite.get("errors") == "1"
    assert json.loads((out / "gate.json").read_text())["verdict"] == "cannot_compare"


@pytest.mark.parametrize(("override", "differs"), [("eval.max_examples=4", "eval subset (max_examples)"),
                                                   ("eval.split=selection", "eval split")])
def test_mismatched_eval_set_exits_2_side_by_side_before_loading_a_model(gate_setup, tmp_path, capsys, monkeypatch,
                                                                         override, differs):
    def no_model(*args, **kwargs):
        raise AssertionError("the gate loaded a model before refusing")

    monkeypatch.setattr("harness.model.load_base_model", no_model)  # gate.py imports it when it evaluates
    out = tmp_path / "report"
    code = gate.main(["check", "--candidate", str(gate_setup.run_dir), "--baseline", str(gate_setup.golden_baseline),
                      "--out", str(out), override])
    assert code == 2
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("CANNOT COMPARE: the candidate's setup differs from the baseline's in ")
    assert differs in lines[0] and "eval set hash" in lines[0]
    side_by_side = next(line for line in lines if line.strip().startswith(differs))
    assert "baseline" in side_by_side and "candidate" in side_by_side
    summary = (out / "summary.md").read_text()
    assert "| | baseline | candidate |" in summary and differs in summary
    assert not (out / "candidate_results.json").exists()
    assert json.loads((out / "gate.json").read_text())["exit_code"] == 2


@pytest.mark.parametrize("broken", ["baseline", "candidate", "adapter", "override", "not_a_baseline"])
def test_missing_files_and_bad_input_exit_2(gate_setup, tmp_path, capsys, broken):
    candidate, baseline, overrides = gate_setup.run_dir, gate_setup.golden_baseline, []
    if broken == "baseline":
        baseline = tmp_path / "missing.json"
    elif broken == "candidate":
        candidate = tmp_path / "no_such_run"
    elif broken == "adapter":
        candidate = tmp_path / "unfinished_run"
        candidate.mkdir()
    elif broken == "override":
        overrides.append("eval.pork=1")
    else:
        baseline = gate_setup.run_dir / "results.json"  # a results record, not a baseline
    out = tmp_path / "report"
    code = gate.main(["check", "--candidate", str(candidate), "--baseline", str(baseline), "--out", str(out),
                      *overrides])
    lines = capsys.readouterr().out.splitlines()
    assert code == 2
    assert lines[0].startswith("CANNOT COMPARE: ") and len(lines[0]) > len("CANNOT COMPARE: ") + 10
    expected = {"baseline": "missing.json", "candidate": "does not exist",
                "adapter": "no adapter_model.safetensors", "override": "pork",
                "not_a_baseline": "not a gate baseline"}[broken]
    assert expected in lines[0]
    assert {p.name for p in out.iterdir()} == {"gate.json", "junit.xml", "summary.md"}


def _edited_baseline(source: Path, out: Path, edit) -> Path:
    data = json.loads(source.read_text())
    edit(data)
    out.write_text(json.dumps(data))
    return out


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda d: d["heldout"].update(n=9), "'heldout.per_example' has 8 scores, expected n=9"),
    (lambda d: d["heldout"]["per_example"][3].update(score=2.0), "'heldout.per_example[3]' is 2.0"),
    (lambda d: d.update(min_score_verdict="inconclusive"), "'min_score_verdict'"),
    (lambda d: d.update(format="harness.gate/baseline-v3"), "written by an older harness"),
    (lambda d: d["heldout"].update(score="high"), "'heldout.score' must be a number"),
])
def test_malformed_or_old_baseline_exits_2_naming_the_field(gate_setup, tmp_path, capsys, edit, expected):
    baseline = _edited_baseline(gate_setup.golden_baseline, tmp_path / "baseline.json", edit)
    out = tmp_path / "report"
    code = gate.main(["check", "--candidate", str(gate_setup.run_dir), "--baseline", str(baseline), "--out", str(out)])
    first = capsys.readouterr().out.splitlines()[0]
    assert code == 2 and first.startswith("CANNOT COMPARE: ") and expected in first, first
    assert "baseline.json" in first and ("regenerate" in first.lower() or "write one with" in first)
    assert json.loads((out / "gate.json").read_text())["verdict"] == "cannot_compare"


@pytest.mark.parametrize(("target", "error", "reevaluate"), [
    ("harness.gate.candidate_results", MemoryError("CUDA out of memory"), False),
    ("harness.evaluate.generate", OSError(errno.ENOSPC, "No space left on device"), True),
    ("harness.evaluate.grade", RuntimeError("grader bug: list index out of range"), True),
    ("harness.gate.compare", KeyError("stages"), False),
])
def test_any_exception_exits_2_with_reports_never_1(gate_setup, tmp_path, capsys, monkeypatch, target, error,
                                                    reevaluate):
    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(target, broken)
    out = tmp_path / "report"
    code = gate.main(["check", "--candidate", str(gate_setup.run_dir), "--baseline", str(gate_setup.golden_baseline),
                      "--out", str(out), *(["--reevaluate"] if reevaluate else [])])
    first = capsys.readouterr().out.splitlines()[0]
    assert code == 2
    assert first.startswith(f"ERROR (the gate could not decide): {type(error).__name__}: "), first
    report = json.loads((out / "gate.json").read_text())
    assert report["verdict"] == "error" and report["exit_code"] == 2 and report["reason"] == first
    suite = ET.parse(out / "junit.xml").getroot()
    assert suite.get("errors") == "1" and suite.get("failures") == "0"
    assert (out / "summary.md").read_text().startswith("## ⚠️ Regression gate: ERROR")


def test_reports_that_cannot_be_written_still_exit_2(gate_setup, tmp_path, capsys, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("harness.gate.write_reports", disk_full)
    code = gate.main(["check", "--candidate", str(gate_setup.run_dir), "--baseline", str(gate_setup.golden_baseline),
                      "--out", str(tmp_path / "report")])
    lines = capsys.readouterr().out.splitlines()
    assert code == 2 and lines[0].startswith("PASS") and "could not write the gate reports" in lines[-1]


def test_baseline_from_missing_or_unfinished_run_exits_2(tmp_path, capsys):
    (tmp_path / "unfinished").mkdir()
    code = gate.main(["baseline", "--from", str(tmp_path / "unfinished"), "--out", str(tmp_path / "b.json")])
    assert code == 2
    assert capsys.readouterr().out.startswith("CANNOT WRITE BASELINE: ")
    assert not (tmp_path / "b.json").exists()


def test_cli_subprocess_baseline_then_check_reuses_the_runs_results(gate_setup, tmp_path):
    """This repository's CI runs the gate as a command, as a user's CI would: with no overrides."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    baseline = tmp_path / "baseline.json"

    def run(*args):
        return subprocess.run([sys.executable, "-m", "harness.gate", *args], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=300, check=False)

    made = run("baseline", "--from", str(gate_setup.run_dir), "--out", str(baseline))
    assert made.returncode == 0, made.stdout + made.stderr
    record = json.loads(baseline.read_text())
    assert record["adapter"]["hash"] == gate_setup.results.adapter.hash
    assert record["eval_set"]["hash"] == gate_setup.results.eval_set.hash
    assert len(record["heldout"]["per_example"]) == 8 and record["heldout"]["per_example"][0]["output"] is not None

    checked = run("check", "--candidate", str(gate_setup.run_dir), "--baseline", str(baseline),
                  "--out", str(tmp_path / "gate"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    lines = checked.stdout.splitlines()
    assert lines[0].startswith("PASS: ")
    assert f"reused {gate_setup.run_dir / 'results.json'}" in lines[1]
    suite = ET.parse(tmp_path / "gate" / "junit.xml").getroot()
    assert suite.get("tests") == "2" and suite.get("failures") == "0"


def test_only_a_grader_change_regrades_stored_outputs_without_a_forward_pass(gate_setup, tmp_path, monkeypatch,
                                                                            forward_calls):
    # A candidate whose results.json is on the golden set (as a run's would be).
    candidate = tmp_path / "candidate"
    shutil.copytree(gate_setup.run_dir / "adapter", candidate / "adapter")
    write_record(candidate / "results.json", gate_setup.golden_record)
    calls = forward_calls
    # The grader's version bumps (its scoring changed): the eval set is re-frozen, its hash changes, every input
    # to generation stays the same.
    monkeypatch.setitem(gate_report_grader_versions(), "exact_match", "2")
    manifest = tmp_path / "golden_manifest_v2.json"
    freeze(make_config([*gate_setup.golden_overrides, f"eval.manifest={manifest}"]).eval)
    report, record = gate.check(candidate, gate_setup.golden_baseline, GateSettings(), [f"eval.manifest={manifest}"])
    assert calls == [], f"{len(calls)} module calls: the model ran"
    assert report.verdict == "pass", report.reason
    assert report.candidate.origin.startswith("re-graded") and "0 model forward passes" in report.candidate.origin
    assert any("re-graded" in note for note in report.notes)
    assert record.final_stage.heldout.grader_versions == {"exact_match": "2"}
    assert record.eval_set.hash != gate_setup.golden_record.eval_set.hash

    # The counter works: when generation inputs changed (here: forced), the model runs.
    gate.check(candidate, gate_setup.golden_baseline, GateSettings(), [f"eval.manifest={manifest}"], reevaluate=True)
    assert len(calls) > 0


def gate_report_grader_versions() -> dict:
    from harness.graders import GRADER_VERSIONS

    return GRADER_VERSIONS


# ---------------------------------------------------------------------------------------------------------
# One real run of the regression checks (lm-eval on a local task).


def test_forgetting_and_vs_baseline_checks_on_a_real_lm_eval_task(gate_setup, tmp_path):
    from harness.run import run_experiment

    overrides = [*gate_setup.golden_overrides, "run_regression=true",
                 "eval.regression=[{task:harness_general_mc,limit:8,max_regression:0.05}]"]
    results = run_experiment(make_config(overrides), tmp_path / "run", progress=False)  # records the base's scores
    baseline = make_baseline(results, "regression run")
    assert len(baseline.regression["harness_general_mc"].per_example) == 8
    assert len(baseline.base_regression["harness_general_mc"].per_example) == 8
    assert any(o.startswith("eval.regression=[") for o in baseline.overrides)
    write_record(tmp_path / "baseline.json", baseline)
    report, _ = gate.check(tmp_path / "run", tmp_path / "baseline.json", GateSettings(), reevaluate=True)
    checks = {c.name: c for c in report.checks}
    assert set(checks) == {"heldout_min_score", "forgetting/harness_general_mc", "vs_baseline/heldout",
                           "vs_baseline/harness_general_mc"}
    assert checks["vs_baseline/harness_general_mc"].delta == 0.0 and checks["vs_baseline/harness_general_mc"].n == 8
    forgetting = checks["forgetting/harness_general_mc"]
    base_mean = sum(baseline.base_regression["harness_general_mc"].per_example) / 8
    assert forgetting.reference == pytest.approx(base_mean) and forgetting.margin == 0.05
    assert report.verdict == "pass", report.reason


def test_a_selection_split_record_cannot_become_a_baseline(gate_setup, tmp_path):
    # A sweep chose its best on the selection split: a baseline from those scores would inherit the winner's curse.
    from harness.run import run_experiment

    overrides = [o for o in gate_setup.run_overrides if o != "eval.split=reporting"]
    results = run_experiment(make_config(overrides), tmp_path / "selection_run", progress=False)
    assert results.eval_set.split == "selection"
    with pytest.raises(gate.CannotCompareError, match="reporting split only"):
        make_baseline(results, "selection run")
