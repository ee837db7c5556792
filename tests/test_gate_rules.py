"""The gate's decision rules and outputs on synthetic per-example scores: no model, milliseconds per test.

Two families of paired checks (forgetting vs the base model, vs_baseline vs the baseline adapter), three outcomes
each, Holm over the family, the inconclusive setting, the exit-code contract of error reports, and a summary that
stays inert whatever the data or the model wrote.
"""

from __future__ import annotations

import html
import xml.etree.ElementTree as ET

import pytest
from conftest import TINY_OVERRIDES, make_config
from omegaconf import OmegaConf

from harness import gate, gate_report
from harness.gate import CannotCompareError, GateReport, GateSettings, compare, make_baseline
from harness.records import RESULTS_FORMAT, RunResults, from_json
from harness.stats import noninferiority


def _record(heldout: list[float], regression: dict[str, list[float]], task_version: str = "1.0",
            outputs: list[str] | None = None, base: dict[str, list[float]] | None = None,
            min_score: float = 0.5) -> RunResults:
    """A complete results record with the given per-example scores, as run.build_results would write it; `base`:
    the base model's regression scores (default: the same as the adapter's)."""
    def summary(scores):
        return {"score": sum(scores) / len(scores), "stderr": 0.0, "ci_low": 0.0, "ci_high": 1.0,
                "n": len(scores)}

    def task_scores(t, s):
        return {"task": t, "metric": "acc", "score": sum(s) / len(s), "stderr": 0.0, "n": len(s),
                "task_version": task_version, "per_example": s}

    outputs = outputs or [""] * len(heldout)
    per_example = [{"source": f"heldout.jsonl:{i + 1}", "prompt": "p", "output": outputs[i], "reference": "r",
                    "score": s, "grades": {}} for i, s in enumerate(heldout)]
    regression_scores = {t: task_scores(t, s) for t, s in regression.items()}
    cfg = OmegaConf.to_container(OmegaConf.structured(make_config(TINY_OVERRIDES)))
    cfg["eval"]["regression"] = [{"task": t, "max_regression": 0.05, "limit": None} for t in regression]
    cfg["eval"]["split"], cfg["eval"]["min_score"] = "reporting", min_score
    zero_shot = {**summary(heldout), "metrics": {}, "per_example": []}
    record = {
        "format": RESULTS_FORMAT, "status": "complete", "kind": "run", "run_dir": None, "config": cfg,
        "eval_set": {"name": "synthetic", "hash": "abc", "n": len(heldout), "min_score": min_score,
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
        "baselines": {"key": "k", "cached": False, "zero_shot": zero_shot, "prompt_baseline": None,
                      "prompting_meets_min_score": False,
                      "regression": {t: task_scores(t, s) for t, s in (base or regression).items()}},
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


def _statuses(report) -> dict[str, str]:
    return {c.name: c.status for c in report.checks}


@pytest.mark.parametrize(("candidate_general", "status"), [
    (GENERAL, "pass"),  # same as the base on 200 docs: shown within the 0.05 limit
    (_drop(GENERAL, 8), "inconclusive"),  # -0.04: not shown within 0.05 nor beyond it at n=200
    (_drop(GENERAL, 30), "fail"),  # -0.15, 30 losses / 0 wins: shown beyond the limit
])
def test_forgetting_is_judged_against_the_base_model_not_the_baseline_adapter(candidate_general, status):
    # The baseline adapter is itself 0.03 below the base: a candidate equal to the baseline adapter has forgotten
    # 0.03 of the base's 0.75, within the 0.05 limit; the rule is the sweep's (drop vs base <= max_regression).
    base = {"general": GENERAL}
    baseline = make_baseline(_record(HELDOUT, {"general": GENERAL}, base=base), "synthetic")
    report = compare(baseline, _record(HELDOUT, {"general": candidate_general}), GateSettings())
    check = {c.name: c for c in report.checks}["forgetting/general"]
    assert check.status == status, check.message
    assert check.reference == pytest.approx(0.75) and check.margin == 0.05 and check.test == "tango_score"
    assert check.ci_low <= check.delta <= check.ci_high
    assert report.verdict == ("fail" if status == "fail" else "pass")


def test_forgetting_uses_the_base_scores_even_when_the_baseline_adapter_already_dropped():
    base = {"general": GENERAL}
    adapter_general = _drop(GENERAL, 8)  # the shipped adapter: -0.04 vs the base
    baseline = make_baseline(_record(HELDOUT, {"general": adapter_general}, base=base), "synthetic")
    # The candidate loses 4 more docs: vs the baseline adapter -0.02 (< margin), vs the base -0.06 (> 0.05).
    candidate = _record(HELDOUT, {"general": _drop(GENERAL, 12)})
    checks = {c.name: c for c in compare(baseline, candidate, GateSettings()).checks}
    assert checks["forgetting/general"].delta == pytest.approx(-0.06)
    assert checks["vs_baseline/general"].delta == pytest.approx(-0.02)


def test_vs_baseline_is_a_non_inferiority_test_with_the_eval_sets_margin():
    baseline = make_baseline(_record(HELDOUT, {}), "synthetic")
    equal = compare(baseline, _record(HELDOUT, {}), GateSettings())
    check = {c.name: c for c in equal.checks}["vs_baseline/heldout"]
    margin = make_config(TINY_OVERRIDES).eval.equivalence_margin
    assert check.margin == margin and check.status == "pass"  # identical on 100: shown within the margin
    assert check.p_noninferior < 0.05 and check.ci_low > -margin
    worse = compare(baseline, _record(_drop(HELDOUT, 12), {}), GateSettings())  # -0.12, 12 losses of 100
    assert _statuses(worse)["vs_baseline/heldout"] == "fail"
    assert compare(baseline, _record(_drop(HELDOUT, 12), {}), GateSettings(margin=0.3)).verdict == "pass"


def test_inconclusive_reports_the_minimum_detectable_drop_and_the_setting_decides_the_exit_code():
    small = [1.0] * 16 + [0.0] * 4
    baseline = make_baseline(_record(small, {}), "synthetic")
    candidate = _record(_drop(small, 2), {})  # -0.10 on 20 examples: neither shown within 0.05 nor beyond
    lenient = compare(baseline, candidate, GateSettings())
    check = {c.name: c for c in lenient.checks}["vs_baseline/heldout"]
    assert check.status == "inconclusive" and check.mde > check.margin
    assert f"{check.mde:.3f}" in check.message and "n=20" in check.message
    assert lenient.verdict == "pass" and lenient.exit_code == 0
    assert "inconclusive (counted as pass, --inconclusive=pass): " in lenient.reason
    strict = compare(baseline, candidate, GateSettings(inconclusive="fail"))
    assert strict.verdict == "fail" and strict.exit_code == 1 and "--inconclusive=fail" in strict.reason
    failures = ET.fromstring(gate_report.junit_xml(strict).split("\n", 1)[1]).get("failures")
    assert int(failures) >= 1
    assert "MDE" in gate_report.markdown_summary(lenient)


def test_partial_credit_scores_use_the_paired_bootstrap():
    heldout = [0.2 + 0.6 * (i % 5) / 4 for i in range(100)]
    baseline = make_baseline(_record(heldout, {}, min_score=0.3), "synthetic")
    candidate = _record([s - 0.2 for s in heldout], {}, min_score=0.3)
    check = {c.name: c for c in compare(baseline, candidate, GateSettings()).checks}
    assert check["vs_baseline/heldout"].test == "paired_bootstrap" and check["vs_baseline/heldout"].status == "fail"


def test_paired_checks_are_holm_adjusted_together():
    # One benchmark 12 docs worse in 100 (-0.12): alone (with the held-out check: 3 paired checks) it fails; with
    # four more benchmarks equally worse, Holm multiplies the smallest p-value by 11 and the same drops
    # stop being "shown worse": more benchmarks are not more chances to fail on noise.
    base = [1.0] * 80 + [0.0] * 20
    dropped = _drop(base, 12)
    alone = compare(make_baseline(_record(HELDOUT, {"a": base}), "s"), _record(HELDOUT, {"a": dropped}),
                    GateSettings())
    check = {c.name: c for c in alone.checks}["vs_baseline/a"]
    assert check.status == "fail" and check.p_worse_holm == pytest.approx(3 * check.p_worse, rel=1e-6)
    tasks = "abcde"
    many = compare(make_baseline(_record(HELDOUT, {t: base for t in tasks}), "s"),
                   _record(HELDOUT, {t: dropped for t in tasks}), GateSettings())
    assert all(_statuses(many)[f"vs_baseline/{t}"] != "fail" for t in tasks)
    assert "Holm over the 11 paired checks" in many.correction


def test_noninferiority_interval_and_p_values_agree():
    # The score test inverted: "shown within the margin" exactly when the interval's lower bound is above -margin.
    for losses in range(20):
        reference = [1.0] * 100
        candidate = [0.0] * losses + [1.0] * (100 - losses)
        test = noninferiority(reference, candidate, 0.05)
        assert (test.p_noninferior < 0.05) == (test.ci_low > -0.05)
        assert (test.p_worse < 0.05) == (test.ci_high < -0.05)


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
    with pytest.raises(CannotCompareError) as refused:
        compare(baseline, candidate, GateSettings())
    if mismatch == "tokenizer":
        assert ["chat template sha256", "t", "another template"] in refused.value.rows


@pytest.mark.parametrize(("scores", "state"), [([1.0] * 8 + [0.0] * 2, "inconclusive"), ([0.0] * 10, "below")])
def test_gate_baseline_refuses_a_record_that_does_not_meet_min_score(scores, state):
    with pytest.raises(CannotCompareError, match=f"min_score verdict is '{state}', not 'meets'"):
        make_baseline(_record(scores, {}, min_score=0.5), "synthetic")


def test_a_baseline_without_base_model_scores_is_refused():
    record = _record(HELDOUT, {"general": GENERAL})
    record.baselines = None  # a gate evaluation: no base-model scores to judge forgetting against
    with pytest.raises(CannotCompareError, match="no base-model score for regression task 'general'"):
        make_baseline(record, "gate evaluation")


def test_error_reports_write_an_error_state():
    report = gate.error_report(MemoryError("out of memory"))
    assert report.exit_code == 2 and report.verdict == "error"
    suite = ET.fromstring(gate_report.junit_xml(report).split("\n", 1)[1])
    assert suite.get("errors") == "1" and suite.find("testcase/error").get("type") == "error"
    mismatch = gate.error_report(CannotCompareError("differs", [["eval set hash", "a-reporting", "b-reporting"]]))
    assert mismatch.exit_code == 2 and "| eval set hash | a-reporting | b-reporting |" in \
        gate_report.markdown_summary(mismatch)


HOSTILE = ("[click](http://evil) ![img](http://x/y.png) <script>alert(1)</script> <img src=x onerror=alert(1)> "
           "@someone `rm -rf` a|b\nnext")


def _hostile_summaries() -> tuple[str, str]:
    """The summary of a failing comparison whose eval set, model id, task, worse output and source are HOSTILE, and
    of an error report whose reason (the heading) and side-by-side rows are HOSTILE."""
    outputs = [HOSTILE] + ["ok"] * 99
    baseline = make_baseline(_record(HELDOUT, {}, outputs=["ok"] * 100), "synthetic")
    candidate = _record(_drop(HELDOUT, 12), {}, outputs=outputs)
    for record in (baseline, candidate):
        record.eval_set.name = HOSTILE
        record.model.id = HOSTILE
    candidate.stages["sft"].heldout.per_example[0].source = HOSTILE
    compared = compare(baseline, candidate, GateSettings())
    compared.notes.append(HOSTILE)
    refused = GateReport(verdict="cannot_compare", reason=HOSTILE, mismatch=[[HOSTILE, HOSTILE, HOSTILE]])
    return gate_report.markdown_summary(compared), gate_report.markdown_summary(refused)


def test_summary_renders_hostile_strings_inert():
    summary, refused = _hostile_summaries()
    hostile_lines = [line for text in (summary, refused) for line in text.splitlines() if "click" in line]
    assert len(hostile_lines) >= 6  # heading, identities, table row, note, worse example, side-by-side row
    for line in hostile_lines:
        assert "[click" not in line and "](" not in line and "![" not in line  # no link or image syntax
        assert "<script" not in line and "<img" not in line and "`" not in line  # no HTML tag, no code span
        assert "@someone" not in line and "http://" not in line  # no @-mention, no bare-URL autolink
        assert "⏎" in line  # the string's newline did not end the line
        # Still shown, as text: only escapes and zero-width spaces were added.
        assert HOSTILE.replace("\n", " ⏎ ")[:60] in html.unescape(line).replace("\u200b", "")
    for line in summary.splitlines() + refused.splitlines():
        if line.startswith("|") and "click" in line:
            assert line.count("|") in (4, 10), line  # a hostile pipe is never a cell break


def test_summary_with_hostile_text_renders_to_html_without_links_images_or_scripts():
    markdown_it = pytest.importorskip("markdown_it")
    renderer = markdown_it.MarkdownIt("commonmark").enable("table")
    for summary in _hostile_summaries():
        page = renderer.render(summary)
        assert "<a " not in page and "<img" not in page and "<script" not in page
        assert "<code>rm -rf" not in page and "[click](http:\u200b//evil)" in page  # shown as text
