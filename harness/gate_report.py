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
# The contract (README, docs/ci-gate-example.yml): 0 pass; 1 a regression was decided (or an inconclusive check,
# under --inconclusive=fail); 2 the gate could not decide: bad or mismatched inputs, or any exception.
EXIT_CODES = {"pass": 0, "fail": 1, "cannot_compare": 2, "error": 2}
INCONCLUSIVE_POLICIES = ("pass", "fail")


@dataclass
class GateSettings:
    """How a difference is judged (`check` options)."""

    alpha: float = 0.05  # one-sided level of each test; the paired checks' family-wise false-alarm rate (Holm)
    margin: float | None = None  # vs_baseline non-inferiority margin; None: the eval set's equivalence_margin
    inconclusive: str = "pass"  # what an inconclusive check does to the exit code: pass (0) or fail (1)
    seed: int = 0  # paired bootstrap seed (partial-credit scores only; the score test is deterministic)

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 0.5:
            raise ValueError(f"--alpha={self.alpha} must be in (0, 0.5)")
        if self.margin is not None and not 0.0 <= self.margin < 1.0:
            raise ValueError(f"--margin={self.margin} must be in [0, 1)")
        if self.inconclusive not in INCONCLUSIVE_POLICIES:
            raise ValueError(f"--inconclusive={self.inconclusive!r}: expected one of {', '.join(INCONCLUSIVE_POLICIES)}")


@dataclass
class Check:
    """One gate decision: a JUnit testcase and a row of the summary table."""

    name: str  # heldout_min_score, forgetting/<task>, vs_baseline/heldout, vs_baseline/<task>
    family: str  # min_score | forgetting | vs_baseline
    title: str  # what is compared with what, for the table
    status: str  # pass | fail | inconclusive
    message: str  # one line: the numbers and why this status
    reference: float  # the base model (forgetting), the baseline adapter (vs_baseline), min_score (min_score)
    candidate: float
    limit: str  # the rule, e.g. "drop < 0.050 (non-inferiority)"
    delta: float | None = None  # candidate - reference
    ci_low: float | None = None  # interval of the delta (of the candidate's score for heldout_min_score)
    ci_high: float | None = None
    margin: float | None = None
    p_worse: float | None = None  # H0 "no worse than the margin"; small = worse
    p_worse_holm: float | None = None  # Holm-adjusted over the paired checks: what "fail" is decided on
    p_noninferior: float | None = None  # H0 "worse than the margin"; small = shown no worse: what "pass" is
    mde: float | None = None  # minimum detectable drop at this n (80% power); shown when inconclusive
    test: str = ""  # tango_score | paired_bootstrap | wilson
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

    verdict: str  # pass | fail | cannot_compare | error
    reason: str  # the one line printed first
    checks: list[Check] = field(default_factory=list)
    eval_set: EvalSetIdentity | None = None
    model: ModelIdentity | None = None
    baseline: GateSide | None = None
    candidate: GateSide | None = None
    settings: GateSettings | None = None
    correction: str = ""  # how the paired checks' p-values were adjusted
    notes: list[str] = field(default_factory=list)
    worse_examples: list[WorseExample] = field(default_factory=list)  # held-out examples the candidate got worse on
    mismatch: list[list[str]] = field(default_factory=list)  # [what, baseline, candidate] rows (cannot_compare)

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
    """junit.xml, summary.md, gate.json (and candidate_results.json), each written atomically. Also for a gate that
    could not decide: CI then shows why."""
    if candidate_record is not None:
        write_record(out_dir / "candidate_results.json", candidate_record)
    write_text_atomic(out_dir / "junit.xml", junit_xml(report))
    write_text_atomic(out_dir / "summary.md", markdown_summary(report))
    write_json_atomic(out_dir / "gate.json", {**to_json(report), "exit_code": report.exit_code})


def junit_xml(report: GateReport) -> str:
    """One testcase per check; a failed check is a <failure>, a gate that could not decide one <error>."""
    suite = ET.Element("testsuite", name="harness.gate", timestamp=datetime.now(timezone.utc).isoformat())
    if report.exit_code == 2:
        case = ET.SubElement(suite, "testcase", classname="harness.gate", name="decidable")
        ET.SubElement(case, "error", message=report.reason, type=report.verdict).text = "\n".join(
            [report.reason, *(f"{what}: baseline {b} | candidate {c}" for what, b, c in report.mismatch)])
    for check_ in report.checks:
        case = ET.SubElement(suite, "testcase", classname="harness.gate", name=check_.name)
        counted_failure = check_.status == "fail" or (
            check_.status == "inconclusive" and report.settings is not None
            and report.settings.inconclusive == "fail")
        if counted_failure:
            ET.SubElement(case, "failure", message=check_.message, type=check_.status).text = check_.message
        else:
            ET.SubElement(case, "system-out").text = f"{check_.status}: {check_.message}"
    cases = suite.findall("testcase")
    suite.set("tests", str(len(cases)))
    suite.set("failures", str(sum(c.find("failure") is not None for c in cases)))
    suite.set("errors", str(sum(c.find("error") is not None for c in cases)))
    suite.set("skipped", "0")
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


_RESULT = {"pass": "✅ pass", "fail": "❌ FAIL", "inconclusive": "❔ inconclusive"}


def markdown_summary(report: GateReport) -> str:
    """The PR comment. Every string that comes from a record, the data or the model goes through md_cell."""
    icon = {"pass": "✅", "fail": "❌", "cannot_compare": "⚠️", "error": "⚠️"}[report.verdict]
    lines = [f"## {icon} Regression gate: {md_cell(report.reason, max_chars=None)}", ""]
    if report.exit_code == 2:
        lines += [f"The gate could not decide (exit {report.exit_code}); nothing was judged.", ""]
        if report.mismatch:
            lines += ["| | baseline | candidate |", "|---|---|---|"]
            lines += [f"| {md_cell(what)} | {md_cell(b)} | {md_cell(c)} |" for what, b, c in report.mismatch]
            lines.append("")
        return "\n".join(lines)
    eval_set, model = report.eval_set, report.model
    lines += [
        (f"Eval set {md_cell(eval_set.name)} ({md_cell(eval_set.split)} split, hash {md_cell(eval_set.hash)}, "
         f"n={eval_set.n}), base {md_cell(model.id)} (hash {md_cell(str(model.hash))}, "
         f"{'NF4' if model.quantized else 'unquantized'}, {md_cell(str(model.compute_dtype))})."),
        (f"Candidate adapter {md_cell(report.candidate.adapter_hash[:12])}: {md_cell(report.candidate.origin)}. "
         f"Baseline adapter {md_cell(report.baseline.adapter_hash[:12])} from {md_cell(report.baseline.origin)}."),
        "",
        "| check | compares | reference | candidate | delta | interval | rule | p (Holm) | result |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in report.checks:
        delta = "" if c.delta is None else f"{c.delta:+.3f}"
        if c.family == "min_score":
            interval = f"[{c.ci_low:.3f}, {c.ci_high:.3f}] (score)"
        else:
            interval = f"[{c.ci_low:+.3f}, {c.ci_high:+.3f}]"
        p_text = "" if c.p_worse_holm is None else f"{c.p_worse_holm:.2g}"
        result = _RESULT[c.status] + (f" (MDE {c.mde:.3f})" if c.status == "inconclusive" and c.mde else "")
        lines.append(f"| {md_cell(c.name)} | {md_cell(c.title)} | {c.reference:.3f} | {c.candidate:.3f} | {delta} | "
                     f"{interval} | {md_cell(c.limit)} | {p_text} | {result} |")
    settings = report.settings
    lines += ["", md_cell(
        f"forgetting/<task>: candidate vs the base model, drop within the benchmark's max_regression. "
        f"vs_baseline/<check>: candidate vs the baseline adapter, drop within the margin. Each is a pair of "
        f"one-sided tests at alpha {settings.alpha:g}: pass = shown no worse than its limit, fail = shown worse "
        f"({report.correction}), inconclusive = neither at this n (MDE: the smallest drop it would detect with 80% "
        f"power). Inconclusive checks count as {settings.inconclusive} (--inconclusive={settings.inconclusive}).",
        max_chars=None)]
    lines += [f"- {md_cell(note, max_chars=None)}" for note in report.notes]
    if report.worse_examples:
        shown = report.worse_examples[:MAX_WORSE_EXAMPLES_SHOWN]
        lines += ["", ("<details><summary>Held-out examples the candidate got worse on: "
                       f"{len(report.worse_examples)} (first {len(shown)})</summary>"), "",
                  "| example | baseline output (score) | candidate output (score) |", "|---|---|---|"]
        for row in shown:
            lines.append(f"| {md_cell(row.source)} | {md_cell(row.baseline_output)} ({row.baseline_score:g})"
                         f" | {md_cell(row.candidate_output)} ({row.candidate_score:g}) |")
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"
