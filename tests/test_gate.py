"""harness.gate: passes an unchanged adapter, fails a damaged one, refuses what it cannot compare.

On the tiny random model every json_extract score is 0, so a score-based gate could never fail there. The
tests gate on a "golden" eval set instead: the first 8 held-out prompts with the trained tiny adapter's own
greedy outputs as references (exact match). The undamaged adapter scores 1.0 on it, and any change in its
behaviour shows up as a paired drop; the regression checks' decision rule is tested on synthetic scores.
"""

from __future__ import annotations

import html
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
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from harness import gate, gate_report
from harness.artifacts import REPO_ROOT, resolve_path
from harness.evalset import freeze
from harness.gate import CannotCompareError, GateReport, GateSettings, compare, make_baseline
from harness.records import RESULTS_FORMAT, RunResults, from_json, write_record

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


def test_same_adapter_passes_against_its_own_baseline(gate_setup, tmp_path):
    # A second, separate evaluation of the same adapter (greedy decoding: bit-for-bit the same outputs).
    report, record = gate.check(gate_setup.golden_cfg, gate_setup.run_dir, gate_setup.golden_baseline,
                                GateSettings(), reevaluate=True)
    assert report.verdict == "pass" and report.exit_code == 0, report.reason
    assert record is not gate_setup.golden_record and record.kind == "gate_evaluation"
    assert report.candidate.origin.startswith("evaluated")
    first = [row.output for row in gate_setup.golden_record.stages["gate"].heldout.per_example]
    second = [row.output for row in record.stages["gate"].heldout.per_example]
    assert first == second
    statuses = {c.name: c.status for c in report.checks}
    assert statuses == {"heldout_min_score": "pass", "heldout_vs_baseline": "pass"}
    assert "Held-out outputs that differ from the baseline's: 0 of 8." in report.notes


def test_damaged_adapter_fails_naming_the_check(gate_setup, tmp_path):
    generator = torch.Generator().manual_seed(0)
    damaged = _rewrite_lora_b(gate_setup.run_dir / "adapter", tmp_path / "damaged",
                              lambda b: torch.randn(b.shape, generator=generator) * 5)
    out = tmp_path / "report"
    code = gate.main(["check", "--candidate", str(damaged), "--baseline", str(gate_setup.golden_baseline),
                      "--out", str(out), *gate_setup.golden_overrides])
    assert code == 1
    report = json.loads((out / "gate.json").read_text())
    failed = {c["name"] for c in report["checks"] if c["status"] == "fail"}
    assert failed == {"heldout_min_score", "heldout_vs_baseline"}
    assert report["reason"].startswith("FAIL: heldout_min_score")
    assert "heldout_vs_baseline" in report["reason"]
    assert report["worse_examples"], "the summary shows what the damaged adapter got wrong"

    # JUnit: one testcase per check, failures named; tests= counts the testcases.
    suite = ET.parse(out / "junit.xml").getroot()
    cases = suite.findall("testcase")
    assert int(suite.get("tests")) == len(cases) == len(report["checks"]) == 2
    assert int(suite.get("failures")) == 2
    assert {c.get("name") for c in cases if c.find("failure") is not None} == failed

    summary = (out / "summary.md").read_text()
    assert summary.startswith("## ❌ Regression gate: FAIL")
    assert "| held-out vs baseline (golden) | 1.000 | 0.000 | -1.000 |" in summary
    candidate = json.loads((out / "candidate_results.json").read_text())
    assert candidate["adapter"]["hash"] != report["baseline"]["adapter_hash"]


def test_inactive_adapter_is_cannot_compare(gate_setup, tmp_path, capsys):
    zeros = _rewrite_lora_b(gate_setup.run_dir / "adapter", tmp_path / "zero_b", torch.zeros_like)
    out = tmp_path / "report"
    code = gate.main(["check", "--candidate", str(zeros), "--baseline", str(gate_setup.golden_baseline),
                      "--out", str(out), *gate_setup.golden_overrides])
    assert code == 2
    first_line = capsys.readouterr().out.splitlines()[0]
    assert first_line.startswith("CANNOT COMPARE: adapter canary failed")
    suite = ET.parse(out / "junit.xml").getroot()
    assert suite.get("tests") == "1" and suite.get("errors") == "1"
    assert json.loads((out / "gate.json").read_text())["verdict"] == "cannot_compare"


def test_mismatched_eval_hash_exits_2_before_loading_a_model(gate_setup, tmp_path, capsys, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the gate loaded a model before refusing")

    monkeypatch.setattr("harness.model.load_base_model", no_model)  # gate.py imports it when it evaluates
    # The json_extract run's eval set against the golden baseline: different eval sets, nothing to compare.
    code = gate.main(["check", "--candidate", str(gate_setup.run_dir),
                      "--baseline", str(gate_setup.golden_baseline),
                      "--out", str(tmp_path / "report"), *gate_setup.run_overrides])
    assert code == 2
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("CANNOT COMPARE: eval set hash differs: baseline ")
    assert not (tmp_path / "report" / "candidate_results.json").exists()


def test_different_subset_of_the_same_eval_set_is_a_different_eval_hash(gate_setup, tmp_path, capsys):
    overrides = [o for o in gate_setup.golden_overrides if not o.startswith("eval.max_examples")]
    code = gate.main(["check", "--candidate", str(gate_setup.run_dir),
                      "--baseline", str(gate_setup.golden_baseline),
                      "--out", str(tmp_path / "report"), *overrides, "eval.max_examples=4"])
    assert code == 2
    assert "-first4" in capsys.readouterr().out.splitlines()[0]


@pytest.mark.parametrize("broken", ["baseline", "candidate", "adapter", "override", "not_a_baseline"])
def test_missing_files_and_bad_input_exit_2(gate_setup, tmp_path, capsys, broken):
    candidate, baseline = gate_setup.run_dir, gate_setup.golden_baseline
    overrides = list(gate_setup.golden_overrides)
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
    code = gate.main(["check", "--candidate", str(candidate), "--baseline", str(baseline),
                      "--out", str(tmp_path / "report"), *overrides])
    out = capsys.readouterr().out.splitlines()
    assert code == 2
    assert out[0].startswith("CANNOT COMPARE: ") and len(out[0]) > len("CANNOT COMPARE: ") + 10
    expected = {"baseline": "missing.json", "candidate": "does not exist",
                "adapter": "no adapter_model.safetensors", "override": "pork",
                "not_a_baseline": "not a gate baseline"}[broken]
    assert expected in out[0]


def test_baseline_from_missing_or_unfinished_run_exits_2(tmp_path, capsys):
    (tmp_path / "unfinished").mkdir()
    code = gate.main(["baseline", "--from", str(tmp_path / "unfinished"), "--out", str(tmp_path / "b.json")])
    assert code == 2
    assert capsys.readouterr().out.startswith("CANNOT WRITE BASELINE: ")
    assert not (tmp_path / "b.json").exists()


def test_cli_subprocess_baseline_then_check_reuses_the_runs_results(gate_setup, tmp_path):
    """This repository's CI runs the gate as a command, as a user's CI would."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    baseline = tmp_path / "baseline.json"

    def run(*args):
        return subprocess.run([sys.executable, "-m", "harness.gate", *args], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=300)

    made = run("baseline", "--from", str(gate_setup.run_dir), "--out", str(baseline))
    assert made.returncode == 0, made.stdout + made.stderr
    record = json.loads(baseline.read_text())
    assert record["adapter"]["hash"] == gate_setup.results.adapter.hash
    assert record["eval_set"]["hash"] == gate_setup.results.eval_set.hash
    assert len(record["heldout"]["per_example"]) == 8 and record["heldout"]["per_example"][0]["output"] is not None

    checked = run("check", "--candidate", str(gate_setup.run_dir), "--baseline", str(baseline),
                  "--out", str(tmp_path / "gate"), *gate_setup.run_overrides)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    lines = checked.stdout.splitlines()
    assert lines[0] == "PASS: 2 of 2 checks passed"
    assert f"reused {gate_setup.run_dir / 'results.json'}" in lines[1]
    suite = ET.parse(tmp_path / "gate" / "junit.xml").getroot()
    assert suite.get("tests") == "2" and suite.get("failures") == "0"


# ---------------------------------------------------------------------------------------------------------
# The decision rules on synthetic per-example scores (no model).


def _record(heldout: list[float], regression: dict[str, list[float]], task_version: str = "1.0",
            outputs: list[str] | None = None) -> RunResults:
    """A complete results record with the given per-example scores, as run.build_results would write it."""
    def summary(scores):
        return {"score": sum(scores) / len(scores), "stderr": 0.0, "ci_low": 0.0, "ci_high": 1.0,
                "n": len(scores)}

    outputs = outputs or [""] * len(heldout)
    per_example = [{"source": f"heldout.jsonl:{i + 1}", "prompt": "p", "output": outputs[i], "reference": "r",
                    "score": s, "grades": {}} for i, s in enumerate(heldout)]
    regression_scores = {t: {"task": t, "metric": "acc", "score": sum(s) / len(s), "stderr": 0.0, "n": len(s),
                             "task_version": task_version, "per_example": s} for t, s in regression.items()}
    cfg = OmegaConf.to_container(OmegaConf.structured(make_config(TINY_OVERRIDES)))
    cfg["eval"]["regression"] = [{"task": t, "max_regression": 0.05, "limit": None} for t in regression]
    record = {
        "format": RESULTS_FORMAT, "status": "complete", "kind": "run", "run_dir": None, "config": cfg,
        "eval_set": {"name": "synthetic", "hash": "abc", "n": len(heldout), "min_score": 0.5,
                     "split": "reporting"},
        "model": {"id": "m", "hash": "mh", "quantized": False, "compute_dtype": "torch.float32"},
        "tokenizer": {"name": "T", "vocab_size": 10, "chat_template_sha256": "t"},
        "adapter": {"path": "adapter", "hash": "ah", "r": 4, "alpha": 8.0, "target_modules": ["q_proj"]},
        "stages": {"sft": {"heldout": {**summary(heldout), "metrics": {}, "per_example": per_example},
                           "regression": regression_scores}},
        "final": {"stage": "sft", "heldout": summary(heldout), "meets_min_score": True,
                  "regression": {t: {k: v for k, v in r.items() if k != "per_example"}
                                 for t, r in regression_scores.items()},
                  "regression_delta": {}, "worst_regression": 0.0, "regression_ok": True},
        "canary": {"max_logit_diff": 1.0, "outputs_changed": 1, "n": 1},
        "metrics": {"device": "cpu", "compute_dtype": "torch.float32", "library_versions": {"torch": "2.0"},
                    "seed": 0, "git_revision": "g", "wall_time_s": 1.0},
    }
    return from_json(RunResults, record)


def _drop(scores: list[float], count: int) -> list[float]:
    """`count` of the correct examples become wrong."""
    out, dropped = list(scores), 0
    for i, s in enumerate(out):
        if s == 1.0 and dropped < count:
            out[i], dropped = 0.0, dropped + 1
    return out


GENERAL = [1.0] * 150 + [0.0] * 50  # acc 0.75 on 200 docs
HELDOUT = [1.0] * 90 + [0.0] * 10


@pytest.mark.parametrize(
    ("candidate_general", "status"),
    [
        (GENERAL, "pass"),
        (_drop(GENERAL, 6), "pass"),  # -0.03: within the 0.05 limit, though significant
        (_drop(GENERAL, 30), "fail"),  # -0.15, 30 losses / 0 wins: beyond the limit and significant
    ],
)
def test_regression_check_limit_and_significance(candidate_general, status):
    baseline = make_baseline(_record(HELDOUT, {"general": GENERAL}), "synthetic")
    report = compare(baseline, _record(HELDOUT, {"general": candidate_general}), GateSettings())
    check = {c.name: c for c in report.checks}["regression/general"]
    assert check.status == status, check.message
    assert report.verdict == ("fail" if status == "fail" else "pass")
    # The exact conditional interval ends at -losses/n when nothing was won: equal to delta up to rounding.
    assert check.test == "mcnemar" and check.ci_low - 1e-12 <= check.delta <= check.ci_high + 1e-12


def test_regression_drop_beyond_limit_on_few_docs_is_a_warning_not_a_failure():
    small = [1.0] * 12 + [0.0] * 8
    baseline = make_baseline(_record(HELDOUT, {"general": small}), "synthetic")
    report = compare(baseline, _record(HELDOUT, {"general": _drop(small, 2)}), GateSettings())  # -0.10, p=0.5
    check = {c.name: c for c in report.checks}["regression/general"]
    assert check.status == "warn" and check.delta == pytest.approx(-0.10)
    assert report.verdict == "pass" and "1 warning: regression/general" in report.reason


def test_partial_credit_scores_use_the_paired_bootstrap():
    general = [0.2 + 0.6 * (i % 5) / 4 for i in range(100)]
    baseline = make_baseline(_record(HELDOUT, {"general": general}), "synthetic")
    report = compare(baseline, _record(HELDOUT, {"general": [s - 0.2 for s in general]}), GateSettings())
    check = {c.name: c for c in report.checks}["regression/general"]
    assert check.test == "paired_bootstrap" and check.status == "fail"


def test_heldout_min_effect_and_alpha_are_configurable():
    baseline = make_baseline(_record(HELDOUT, {}), "synthetic")
    candidate = _record(_drop(HELDOUT, 8), {})  # 0.90 -> 0.82, 8 losses / 0 wins (p=0.008)
    assert compare(baseline, candidate, GateSettings()).verdict == "fail"
    assert compare(baseline, candidate, GateSettings(min_effect=0.10)).verdict == "pass"
    assert compare(baseline, candidate, GateSettings(alpha=0.001)).verdict == "pass"


@pytest.mark.parametrize("mismatch", ["regression_missing", "task_version", "tokenizer", "n"])
def test_records_that_cannot_be_compared_are_refused(mismatch):
    baseline = make_baseline(_record(HELDOUT, {"general": GENERAL}), "synthetic")
    candidate = {
        "regression_missing": _record(HELDOUT, {}),
        "task_version": _record(HELDOUT, {"general": GENERAL}, task_version="2.0"),
        "tokenizer": _record(HELDOUT, {"general": GENERAL}),
        "n": _record(HELDOUT, {"general": GENERAL[:100]}),
    }[mismatch]
    if mismatch == "tokenizer":
        candidate.tokenizer.chat_template_sha256 = "another template"
    with pytest.raises(CannotCompareError):
        compare(baseline, candidate, GateSettings())


def test_summary_keeps_model_outputs_inert():
    outputs = ["</td><script>alert(1)</script> | `x`\nnext"] + ["ok"] * 99
    baseline = make_baseline(_record(HELDOUT, {}, outputs=["ok"] * 100), "synthetic")
    report = compare(baseline, _record(_drop(HELDOUT, 1), {}, outputs=outputs), GateSettings())
    summary = gate_report.markdown_summary(report)
    assert "<script>" not in summary and "&lt;script&gt;" in summary
    row = next(line for line in summary.splitlines() if "alert" in line)
    assert row.count("|") == 4 and "`" not in row  # the output's pipe and backticks cannot break the table


HOSTILE = "[click](http://evil) ![img](http://x/y.png) <script>alert(1)</script> @someone `rm -rf` a|b\nnext"


def _hostile_summaries() -> tuple[str, str]:
    """The summary of a failing comparison whose worse example's output is HOSTILE, and of a cannot-compare
    report whose reason is HOSTILE (the reason is the heading)."""
    outputs = [HOSTILE] + ["ok"] * 99
    baseline = make_baseline(_record(HELDOUT, {}, outputs=["ok"] * 100), "synthetic")
    compared = compare(baseline, _record(_drop(HELDOUT, 1), {}, outputs=outputs), GateSettings())
    refused = GateReport(verdict="cannot_compare", reason=HOSTILE)
    return gate_report.markdown_summary(compared), gate_report.markdown_summary(refused)


def test_summary_renders_hostile_model_output_and_reason_inert():
    summary, refused = _hostile_summaries()
    row = next(line for line in summary.splitlines() if "click" in line)
    heading = refused.splitlines()[0]
    assert heading.startswith("## ⚠️ Regression gate: ")
    for line in (row, heading):
        assert "[" not in line and "](" not in line and "![" not in line  # no link or image syntax
        assert "<" not in line and "`" not in line  # no HTML tag, no code span
        assert "@someone" not in line and "http://" not in line  # no @-mention, no bare-URL autolink
        assert "⏎" in line  # the output's newline did not end the line
        # Still shown in full, as text: only escapes and zero-width spaces were added.
        assert HOSTILE.replace("\n", " ⏎ ") in html.unescape(line).replace("\u200b", "")
    assert row.count("|") == 4  # the output's pipe is not a cell break
    assert "<script" not in summary and "<script" not in refused


def test_summary_with_hostile_text_renders_to_html_without_links_images_or_scripts():
    markdown_it = pytest.importorskip("markdown_it")
    renderer = markdown_it.MarkdownIt("commonmark").enable("table")
    for summary in _hostile_summaries():
        page = renderer.render(summary)
        assert "<a " not in page and "<img" not in page and "<script" not in page
        assert "<code>rm -rf" not in page and "[click](http:\u200b//evil)" in page  # shown as text


# ---------------------------------------------------------------------------------------------------------
# One real run of the regression checks (lm-eval on a local task).


def test_regression_checks_on_a_real_lm_eval_task(gate_setup, tmp_path):
    overrides = gate_setup.golden_overrides + [
        "run_regression=true", "eval.regression=[{task:harness_general_mc,limit:8,max_regression:0.05}]"]
    cfg = make_config(overrides)
    record = gate.evaluate_candidate(cfg, gate_setup.run_dir / "adapter")
    baseline = make_baseline(record, "regression evaluation")
    assert len(baseline.regression["harness_general_mc"].per_example) == 8
    write_record(tmp_path / "baseline.json", baseline)
    report, _ = gate.check(cfg, gate_setup.run_dir, tmp_path / "baseline.json", GateSettings(),
                           reevaluate=True)
    check = {c.name: c for c in report.checks}["regression/harness_general_mc"]
    assert report.verdict == "pass" and check.delta == 0.0 and check.n == 8


def test_a_selection_split_record_cannot_become_a_baseline(gate_setup, tmp_path):
    # A sweep chose its best on the selection split: a baseline from those scores would inherit the winner's curse.
    from harness.run import run_experiment

    overrides = [o for o in gate_setup.run_overrides if o != "eval.split=reporting"]
    results = run_experiment(make_config(overrides), tmp_path / "selection_run", progress=False)
    assert results.eval_set.split == "selection"
    with pytest.raises(gate.CannotCompareError, match="reporting split only"):
        make_baseline(results, "selection run")
    with pytest.raises(gate.CannotCompareError, match="reporting split only"):
        gate.check(make_config(overrides), tmp_path / "selection_run", gate_setup.golden_baseline, GateSettings())


def test_paired_checks_are_holm_adjusted_across_benchmarks():
    # A benchmark with 9 losses and 1 win of 100 (-0.08, beyond the 0.05 limit): exact p = 2 * 11/1024 = 0.0215.
    # Beside the held-out check (Holm x2: 0.043) it fails; with a second equally noisy benchmark Holm multiplies
    # the smallest p by 3 (0.064): the gate warns instead of failing on noise spread over more benchmarks.
    base = [1.0] * 80 + [0.0] * 20
    dropped = _drop(base, 9)
    dropped[80] = 1.0
    alone = compare(make_baseline(_record(HELDOUT, {"a": base}), "s"), _record(HELDOUT, {"a": dropped}),
                    GateSettings())
    assert {c.name: c.status for c in alone.checks}["regression/a"] == "fail"
    both = compare(make_baseline(_record(HELDOUT, {"a": base, "b": base}), "s"),
                   _record(HELDOUT, {"a": dropped, "b": dropped}), GateSettings())
    statuses = {c.name: c.status for c in both.checks}
    assert statuses["regression/a"] == statuses["regression/b"] == "warn" and both.verdict == "pass"
    assert "Holm-adjusted 0.064" in {c.name: c for c in both.checks}["regression/a"].message
