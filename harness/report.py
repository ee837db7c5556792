"""Comparison reports for people: one self-contained HTML page, a Markdown twin and a CSV of every trial.

    python -m harness.report sweeps/rank [sweeps/alpha ...] [--out reports/rank]
    path = write_report([Path("sweeps/rank")])          # what a sweep calls at its end; returns report.html

Reads only the artifacts a sweep leaves (sweep.json, best.json, trials/<NNN>/{trial,results}.json as typed
records from harness.records, and loss.jsonl): no model is loaded, and rebuilding with nothing changed gives
byte-identical files (no clock, deterministic plots). Sections, top to bottom: verdict, trials (with the pruning
budget), plots, what mattered (searches over more than one parameter: importance, parallel coordinates), paired
comparisons, fixed and broken examples, data card, reproduce.
When only the graders changed since a sweep was scored, its stored outputs are graded again (zero model forward
passes) and the report says so; a record generated under other settings than the eval set's today is stale: refused
when the graders changed too, shown under a warning otherwise (harness.report_regrade).
Several sweeps go into one report only when they share the eval set hash and the base model; otherwise
`ReportError` (exit 2) and nothing is written; so is a record with a missing or mistyped field (the message
names the file and the dotted field). Model outputs and dataset text are untrusted: every string is escaped
for HTML, and for Markdown tables. "Best" is harness.selection.rank_key, the rule behind the sweep's best.json.

This module loads the artifacts and writes the report. The pieces it is built from: harness.report_sections
(the sections, as document blocks), harness.report_search (importance, pruning budget), harness.report_plots
(matplotlib), harness.report_format (numbers, cell text and trials.csv) and harness.render (the blocks as HTML
and Markdown, and their escaping).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from harness.artifacts import replace_dir_atomic, write_text_atomic
from harness.recordio import RecordError, read_record
from harness.records import (
    BestTrial,
    ExampleResult,
    RunResults,
    ScoreSummary,
    SweepRecord,
    SweepVerdicts,
    TrialRecord,
)
from harness.render import IMAGES_DIR, Heading, Para, render_html, render_markdown
from harness.selection import rank_key

MAX_EXAMPLES_SHOWN = 5  # fixed and broken examples shown per list; the counts cover all of them
BEST_TRIALS_PLOTTED = 3  # trials in the per-benchmark delta plot
SECTIONS = (
    "Verdict",
    "Verdicts on the reporting split",
    "Trials",
    "Plots",
    "Paired comparisons",
    "Fixed and broken examples",
    "Data card",
    "Reproduce",
)


class ReportError(ValueError):
    """The sweep artifacts cannot be reported on (missing, malformed, or not comparable with each other)."""


# --- inputs -----------------------------------------------------------------------------------------------
@dataclass
class LossPoint:
    """One logged training step of loss.jsonl (a JSONL log, not a record: rows carry whatever trl logged)."""

    stage: str
    step: int | None
    loss: float | None  # None on rows that logged something else


@dataclass
class Trial:
    sweep: str  # the sweep's name
    record: TrialRecord  # trial.json
    price_per_gpu_hour: float
    results: RunResults | None  # results.json, for completed trials
    loss: list[LossPoint]  # partial for pruned and failed trials
    label: str = ""  # "#3", or "rank#3" in a report over several sweeps
    directory: Path = Path()  # trials/<NNN>

    @property
    def heldout(self) -> ScoreSummary | None:
        return self.results.final.heldout if self.results else None

    @property
    def final_per_example(self) -> list[ExampleResult]:
        return self.results.final_stage.heldout.per_example

    @property
    def feasible_final(self) -> bool:
        """Complete, within every regression limit, and not marked infeasible by the sweep."""
        return bool(self.results and self.results.final.regression_ok and self.record.feasible is not False)

    @property
    def cost(self) -> float | None:
        duration = self.record.duration_s
        return None if duration is None else duration / 3600 * self.price_per_gpu_hour


@dataclass
class Sweep:
    name: str
    directory: Path
    meta: SweepRecord  # sweep.json
    trials: list[Trial]
    best_number: int | None  # from best.json, when the sweep wrote one
    verdicts: SweepVerdicts | None = None  # verdicts.json: the reporting-split verdicts, when the sweep wrote them
    regraded: list = field(default_factory=list)  # report_regrade.Regraded: records graded again by today's graders
    stale: list[str] = field(default_factory=list)  # records generated under other settings than the eval set's today


@dataclass
class Report:
    """Everything a report consists of, built in memory before anything is written."""

    name: str
    html: str
    markdown: str
    trials_csv: str
    images: dict[str, bytes] = field(default_factory=dict)  # file name -> PNG bytes


def load_sweep(directory: Path) -> Sweep:
    directory = Path(directory)
    meta = _read(SweepRecord, directory / "sweep.json", "not a sweep directory")
    trials_dir = directory / "trials"
    trial_dirs = sorted(p for p in trials_dir.iterdir() if p.is_dir()) if trials_dir.is_dir() else []
    trials = [_load_trial(d, meta) for d in trial_dirs if (d / "trial.json").is_file()]
    trials.sort(key=lambda t: t.record.number)
    best_path = directory / "best.json"
    best_number = _read(BestTrial, best_path).number if best_path.is_file() else None
    verdicts_path = directory / "verdicts.json"
    verdicts = _read(SweepVerdicts, verdicts_path) if verdicts_path.is_file() else None
    sweep = Sweep(meta.name, directory, meta, trials, best_number, verdicts)
    # Imported here: report_regrade imports Sweep from this module.
    from harness.report_regrade import regrade_sweep

    regrade_sweep(sweep)  # only the graders changed since: re-grade, in memory
    return sweep


def _load_trial(trial_dir: Path, sweep: SweepRecord) -> Trial:
    record = _read(TrialRecord, trial_dir / "trial.json")
    results = None
    if record.state == "COMPLETE":
        results_path = trial_dir / "results.json"
        results = _read(RunResults, results_path, "the trial is marked COMPLETE but has no results record")
        if results.baselines is None or results.data is None:
            raise ReportError(f"{results_path}: no baselines or data card (a gate evaluation, not a sweep trial)")
        for what, mine, sweeps in (
            ("eval_set", results.eval_set.hash, sweep.eval_set.hash),
            ("model", results.model.hash, sweep.model.hash),
        ):
            if sweeps is not None and mine != sweeps:  # None: a sweep with no completed trial yet
                raise ReportError(
                    f"{results_path}: {what} hash {mine} differs from the sweep's {sweeps} "
                    f"({trial_dir.parent.parent / 'sweep.json'}); its scores are not comparable"
                )
    return Trial(sweep.name, record, sweep.price_per_gpu_hour, results, _read_loss(trial_dir / "loss.jsonl"),
                 directory=trial_dir)


def _read(cls, path: Path, missing_hint: str = ""):
    """`path` as a `cls` record; the record's refusal (naming the file and field) becomes a ReportError."""
    if missing_hint and not path.is_file():
        raise ReportError(f"{path}: file not found ({missing_hint})")
    try:
        return read_record(cls, path)
    except RecordError as err:
        raise ReportError(str(err)) from None


def _read_loss(path: Path) -> list[LossPoint]:
    points = []
    if path.is_file():
        for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ReportError(f"{path}:{line_number}: not valid JSON ({err.msg})") from None
                points.append(LossPoint(row.get("stage", "sft"), row.get("step"), row.get("loss")))
    return points


def check_comparable(sweeps: list[Sweep]) -> None:
    """Scores on different eval sets or base models mean different things: refuse to set them side by side."""
    first = sweeps[0]
    for other in sweeps[1:]:
        for title, a, b, a_name, b_name in (
            ("eval set", first.meta.eval_set, other.meta.eval_set, first.meta.eval_set.name,
             other.meta.eval_set.name),
            ("base model", first.meta.model, other.meta.model, first.meta.model.id, other.meta.model.id),
        ):
            # A sweep without a completed trial may not know its model hash yet: then the ids must match.
            same = a.hash == b.hash if a.hash and b.hash else a_name == b_name
            if not same:
                raise ReportError(
                    f"cannot compare sweeps {first.name!r} and {other.name!r}: different {title} "
                    f"({a_name} hash {a.hash} in {first.directory / 'sweep.json'}"
                    f" vs {b_name} hash {b.hash} in {other.directory / 'sweep.json'}); "
                    "report them separately"
                )
    names = [s.name for s in sweeps]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ReportError(
            f"two sweep directories are both named {duplicates[0]!r}: give each sweep its own name"
        )


# --- entry points ---------------------------------------------------------------------------------------
def write_report(sweep_dirs: list[Path], out_dir: Path | None = None) -> Path:
    """Build the report of sweeps, write it to `out_dir`, return report.html's path.

    `out_dir` defaults to reports/<name> beside the sweeps folder: <root>/sweeps/rank -> <root>/reports/rank
    (<name> joins the sweep names with "+"). Everything is built in memory first, so a refused or malformed
    input leaves no partial output.
    """
    sweep_dirs = [Path(d) for d in sweep_dirs]
    report = build_report([load_sweep(d) for d in sweep_dirs])
    if out_dir is None:
        out_dir = sweep_dirs[0].resolve().parent.parent / "reports" / report.name
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".{IMAGES_DIR}."))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the images from whoever serves the report
    for name, png in report.images.items():
        (staging / name).write_bytes(png)
    replace_dir_atomic(staging, out_dir / IMAGES_DIR)
    write_text_atomic(out_dir / "trials.csv", report.trials_csv)
    write_text_atomic(out_dir / "report.md", report.markdown)
    write_text_atomic(out_dir / "report.html", report.html)  # last: its presence means the report is whole
    return out_dir / "report.html"


def build_report(sweeps: list[Sweep]) -> Report:
    # Imported here, not at the top: these modules import Trial, Sweep and rank_trials from this one.
    from harness.report_evidence import evidence_section
    from harness.report_format import trials_csv
    from harness.report_regrade import regrade_section
    from harness.report_search import pruning_budget, search_section
    from harness.report_sections import (
        comparisons_section,
        data_card_section,
        examples_section,
        plots_section,
        reproduce_section,
        sweep_summary,
        trials_section,
        verdict_section,
    )

    if not sweeps:
        raise ReportError("no sweep directories given")
    check_comparable(sweeps)
    multi = len(sweeps) > 1
    trials = [t for s in sweeps for t in s.trials]
    for trial in trials:
        trial.label = f"{trial.sweep}#{trial.record.number}" if multi else f"#{trial.record.number}"
    ranked = rank_trials(trials)
    name = "+".join(s.name for s in sweeps)
    images: dict[str, bytes] = {}
    blocks: list = [Heading(1, f"Sweep report: {name}")]
    for sweep in sweeps:
        blocks.append(Para(sweep_summary(sweep, multi)))
    blocks += regrade_section(sweeps)
    blocks += verdict_section(sweeps, ranked)
    blocks += evidence_section(sweeps)
    blocks += trials_section(sweeps, trials, ranked, multi)
    blocks += [Para(line) for sweep in sweeps if (line := pruning_budget(sweep))]
    blocks += plots_section(sweeps, trials, ranked, images)
    blocks += search_section(sweeps, images)
    blocks += comparisons_section(ranked)
    blocks += examples_section(ranked)
    blocks += data_card_section(sweeps)
    blocks += reproduce_section(sweeps, ranked)
    return Report(
        name=name,
        html=render_html(f"Sweep report: {name}", blocks, images),
        markdown=render_markdown(blocks),
        trials_csv=trials_csv(trials),
        images=images,
    )


def rank_trials(trials: list[Trial]) -> list[Trial]:
    """Completed trials, best first, by harness.selection.rank_key: the sweep's best.json rule, so the same pick."""
    complete = [t for t in trials if t.results is not None]
    # sorted is stable: ties keep sweep order, then trial number (as best.json keeps the lowest number)
    return sorted(complete, key=lambda t: rank_key(t.results, t.record.feasible))


# --- CLI --------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.report",
        description="Write reports/<name>/report.html, report.md and trials.csv from sweep directories.",
    )
    parser.add_argument(
        "sweep_dirs", nargs="+", type=Path, help="sweeps/<name> directories (same eval set and model)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="output directory (default: reports/<name> beside sweeps/)"
    )
    args = parser.parse_args(argv)
    try:
        path = write_report(args.sweep_dirs, args.out)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(os.fspath(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
