"""What the gate decided, and how it is written for CI: the typed gate report (gate.json), a JUnit XML with one
testcase per check, and a Markdown summary for a PR comment or $GITHUB_STEP_SUMMARY. Every string from data or
model output goes through `harness.render.md_cell`, so the summary cannot carry live links, images, HTML or
mentions.

    write_reports(report, out_dir, candidate_record)    # junit.xml, summary.md, gate.json (+ candidate_results.json)
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from harness.artifacts import write_json_atomic, write_text_atomic
from harness.records import EvalSetIdentity, ModelIdentity, RunResults, to_json, write_record
from harness.render import md_cell

MAX_WORSE_EXAMPLES_SHOWN = 5
EXIT_CODES = {"pass": 0, "fail": 1, "cannot_compare": 2}


@dataclass
class GateSettings:
    """How a difference is judged (`check` options)."""

    alpha: float = 0.05  # significance level of each paired test
    min_effect: float = 0.02  # held-out drops up to this size never fail, significant or not
    seed: int = 0  # paired bootstrap seed (partial-credit scores only; McNemar is exact)

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"--alpha={self.alpha} must be in (0, 1)")
        if not 0.0 <= self.min_effect <= 1.0:
            raise ValueError(f"--min-effect={self.min_effect} must be in [0, 1]")


@dataclass
class Check:
    """One gate decision: a JUnit testcase and a row of the summary table."""

    name: str  # heldout_min_score, heldout_vs_baseline, regression/<task>
    title: str  # what is compared, for the table
    status: str  # pass | warn | fail
    message: str  # one line: the numbers and why the check passed or failed
    baseline: float
    candidate: float
    limit: str  # the rule, e.g. ">= 0.800" or "drop <= 0.050 unless noise"
    delta: float | None = None  # candidate - baseline
    ci_low: float | None = None  # interval of the delta (of the candidate's score for heldout_min_score)
    ci_high: float | None = None
    p_value: float | None = None
    test: str = ""  # mcnemar | paired_bootstrap
    n: int = 0


@dataclass
class GateSide:
    """One side of the comparison: which adapter, from where, and how its results were obtained."""

    adapter_hash: str
    path: str = ""  # the baseline file, or the candidate as given
    origin: str = ""  # baseline: the run it was made from (and when); candidate: "reused ..." / "evaluated ..."


@dataclass
class GateReport:
    """The verdict, every check, and the identities of what was compared."""

    verdict: str  # pass | fail | cannot_compare
    reason: str  # the one line printed first
    checks: list[Check] = field(default_factory=list)
    eval_set: EvalSetIdentity | None = None
    model: ModelIdentity | None = None
    baseline: GateSide | None = None
    candidate: GateSide | None = None
    settings: GateSettings | None = None
    notes: list[str] = field(default_factory=list)
    worse_examples: list[WorseExample] = field(default_factory=list)  # held-out examples the candidate got worse on

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]


@dataclass
class WorseExample:
    source: str
    baseline_score: float
    candidate_score: float
    baseline_output: str
    candidate_output: str



def write_reports(report: GateReport, out_dir: Path, candidate_record: RunResults | None = None) -> None:
    """junit.xml, summary.md, gate.json (and candidate_results.json), each written atomically."""
    if candidate_record is not None:
        write_record(out_dir / "candidate_results.json", candidate_record)
    write_text_atomic(out_dir / "junit.xml", junit_xml(report))
    write_text_atomic(out_dir / "summary.md", markdown_summary(report))
    write_json_atomic(out_dir / "gate.json", {**to_json(report), "exit_code": report.exit_code})


def junit_xml(report: GateReport) -> str:
    """One testcase per check; a failed check is a <failure>, a report that cannot compare one <error>."""
    suite = ET.Element("testsuite", name="harness.gate", timestamp=datetime.now(timezone.utc).isoformat())
    if report.verdict == "cannot_compare":
        case = ET.SubElement(suite, "testcase", classname="harness.gate", name="comparable")
        ET.SubElement(case, "error", message=report.reason, type="cannot_compare").text = report.reason
    for check_ in report.checks:
        case = ET.SubElement(suite, "testcase", classname="harness.gate", name=check_.name)
        if check_.status == "fail":
            ET.SubElement(case, "failure", message=check_.message, type="regression").text = check_.message
        else:
            ET.SubElement(case, "system-out").text = f"{check_.status}: {check_.message}"
    cases = suite.findall("testcase")
    suite.set("tests", str(len(cases)))
    suite.set("failures", str(sum(c.find("failure") is not None for c in cases)))
    suite.set("errors", str(sum(c.find("error") is not None for c in cases)))
    suite.set("skipped", "0")
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def markdown_summary(report: GateReport) -> str:
    icon = {"pass": "✅", "fail": "❌", "cannot_compare": "⚠️"}[report.verdict]
    lines = [f"## {icon} Regression gate: {md_cell(report.reason, max_chars=None)}", ""]
    if report.verdict == "cannot_compare":
        lines += ["The candidate was not compared with the baseline; nothing was judged.", ""]
        return "\n".join(lines)
    eval_set, model = report.eval_set, report.model
    lines += [
        f"Eval set {md_cell(eval_set.name)} (hash `{eval_set.hash}`, n={eval_set.n}), base {md_cell(model.id)} "
        f"(hash `{model.hash}`, {'NF4' if model.quantized else 'unquantized'}, {model.compute_dtype}).",
        f"Candidate adapter `{report.candidate.adapter_hash[:12]}`: {md_cell(report.candidate.origin)}. "
        f"Baseline adapter `{report.baseline.adapter_hash[:12]}` from {md_cell(report.baseline.origin)}.",
        "",
        "| check | baseline | candidate | delta | interval | limit | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in report.checks:
        delta = "" if c.delta is None else f"{c.delta:+.3f}"
        interval = "" if c.ci_low is None else f"[{c.ci_low:+.3f}, {c.ci_high:+.3f}]"
        if c.name == "heldout_min_score" and c.ci_low is not None:
            interval = f"[{c.ci_low:.3f}, {c.ci_high:.3f}] (score)"
        p_text = "" if c.p_value is None else f" (p={c.p_value:.2g})"
        result = {"pass": "✅ pass", "warn": "⚠️ pass, noisy drop", "fail": "❌ FAIL"}[c.status] + p_text
        lines.append(f"| {md_cell(c.title)} | {c.baseline:.3f} | {c.candidate:.3f} | {delta} | {interval} | "
                     f"{md_cell(c.limit)} | {result} |")
    lines += ["", f"Paired tests on the same examples (McNemar for 0/1 scores, paired bootstrap otherwise), "
                  f"alpha {report.settings.alpha:g} per check; a held-out drop fails only beyond "
                  f"{report.settings.min_effect:.3f} and a regression drop only beyond its limit."]
    lines += [f"- {md_cell(note)}" for note in report.notes]
    if report.worse_examples:
        shown = report.worse_examples[:MAX_WORSE_EXAMPLES_SHOWN]
        lines += ["", "<details><summary>Held-out examples the candidate got worse on: "
                      f"{len(report.worse_examples)} (first {len(shown)})</summary>", "",
                  "| example | baseline output (score) | candidate output (score) |", "|---|---|---|"]
        for row in shown:
            lines.append(f"| {md_cell(row.source)} | {md_cell(row.baseline_output)} ({row.baseline_score:g})"
                         f" | {md_cell(row.candidate_output)} ({row.candidate_score:g}) |")
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"
