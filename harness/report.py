"""Comparison reports for people: one self-contained HTML page, a Markdown twin and a CSV of every trial.

    python -m harness.report sweeps/rank [sweeps/alpha ...] [--out reports/rank]
    path = write_report([Path("sweeps/rank")])          # what a sweep calls at its end; returns report.html

Reads only the artifacts a sweep leaves (sweep.json, trials/<NNN>/{trial,results}.json, loss.jsonl): no
model is loaded, and rebuilding with nothing changed gives byte-identical files (no clock, deterministic
plots). Sections, top to bottom: verdict, trials, plots, paired comparisons, fixed and broken examples,
data card, reproduce.
Several sweeps go into one report only when they share the eval set hash and the base model; otherwise
`ReportError` (exit 2) and nothing is written. Model outputs and dataset text are untrusted: every string is
escaped for HTML, and for Markdown tables.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import json
import math
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.artifacts import replace_dir_atomic, write_text_atomic
from harness.stats import PairedComparison, compare_paired

MAX_EXAMPLES_SHOWN = 5  # fixed and broken examples shown per list; the counts cover all of them
BEST_TRIALS_PLOTTED = 3  # trials in the per-benchmark delta plot
IMAGES_DIR = "images"  # beside report.md; report.html embeds the same PNGs as data URIs
SECTIONS = (
    "Verdict",
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
class Trial:
    sweep: str
    number: int
    state: str  # COMPLETE, PRUNED, FAIL, RUNNING
    params: dict
    fail_reason: str | None
    intermediate: list[dict]  # [{"step", "score"}] on the pruning subset of the eval set
    duration_s: float | None
    command: str
    feasible: bool | None
    retry_of: int | None
    price_per_gpu_hour: float
    results: dict | None  # harness.run.build_results() record, for completed trials
    loss: list[dict]  # loss.jsonl rows (partial for pruned and failed trials)
    label: str = ""  # "#3", or "rank#3" in a report over several sweeps

    @property
    def heldout(self) -> dict | None:
        return self.results["final"]["heldout"] if self.results else None

    @property
    def final_per_example(self) -> list[dict]:
        final_stage = self.results["final"]["stage"]
        return self.results["stages"][final_stage]["heldout"]["per_example"]

    @property
    def feasible_final(self) -> bool:
        """Complete, within every regression limit, and not marked infeasible by the sweep."""
        return bool(self.results and self.results["final"]["regression_ok"] and self.feasible is not False)

    @property
    def cost(self) -> float | None:
        return None if self.duration_s is None else self.duration_s / 3600 * self.price_per_gpu_hour


@dataclass
class Sweep:
    name: str
    directory: Path
    meta: dict  # sweep.json
    trials: list[Trial]
    best_number: int | None  # from best.json, when the sweep wrote one


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
    meta = _read_json(directory / "sweep.json", "not a sweep directory")
    for key in ("name", "eval_set", "model", "space", "price_per_gpu_hour", "command"):
        if key not in meta:
            raise ReportError(f"{directory / 'sweep.json'}: missing key {key!r}")
    trials_dir = directory / "trials"
    trial_dirs = sorted(p for p in trials_dir.iterdir() if p.is_dir()) if trials_dir.is_dir() else []
    trials = [_load_trial(d, meta) for d in trial_dirs if (d / "trial.json").is_file()]
    trials.sort(key=lambda t: t.number)
    best_path = directory / "best.json"
    best_number = _read_json(best_path, "")["number"] if best_path.is_file() else None
    return Sweep(str(meta["name"]), directory, meta, trials, best_number)


_RESULTS_KEYS = ("eval_set", "model", "adapter", "data", "baselines", "stages", "final", "metrics", "config")


def _load_trial(trial_dir: Path, sweep_meta: dict) -> Trial:
    record = _read_json(trial_dir / "trial.json", "")
    for key in ("number", "state", "params"):
        if key not in record:
            raise ReportError(f"{trial_dir / 'trial.json'}: missing key {key!r}")
    results = None
    if record["state"] == "COMPLETE":
        results_path = trial_dir / "results.json"
        results = _read_json(results_path, "the trial is marked COMPLETE but has no results record")
        for key in _RESULTS_KEYS:
            if key not in results:
                raise ReportError(f"{results_path}: missing key {key!r} (not a harness.run results record?)")
        for what in ("eval_set", "model"):
            mine, sweeps = results[what]["hash"], sweep_meta[what].get("hash")
            if sweeps is not None and mine != sweeps:  # None: a sweep with no completed trial yet
                raise ReportError(
                    f"{trial_dir / 'results.json'}: {what} hash {mine} differs from the sweep's {sweeps} "
                    f"({trial_dir.parent.parent / 'sweep.json'}); its scores are not comparable"
                )
    loss = []
    loss_path = trial_dir / "loss.jsonl"
    if loss_path.is_file():
        for line_number, line in enumerate(loss_path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    loss.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ReportError(f"{loss_path}:{line_number}: not valid JSON ({err.msg})") from None
    return Trial(
        sweep=str(sweep_meta["name"]),
        number=int(record["number"]),
        state=str(record["state"]),
        params=record["params"] or {},
        fail_reason=record.get("fail_reason"),
        intermediate=record.get("intermediate") or [],
        duration_s=record.get("duration_s"),
        command=record.get("command") or "",
        feasible=record.get("feasible"),
        retry_of=record.get("retry_of"),
        price_per_gpu_hour=float(sweep_meta["price_per_gpu_hour"]),
        results=results,
        loss=loss,
    )


def _read_json(path: Path, missing_hint: str) -> dict:
    if not path.is_file():
        raise ReportError(f"{path}: file not found" + (f" ({missing_hint})" if missing_hint else ""))
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ReportError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None


def check_comparable(sweeps: list[Sweep]) -> None:
    """Scores on different eval sets or base models mean different things: refuse to set them side by side."""
    first = sweeps[0]
    for other in sweeps[1:]:
        for what, title in (("eval_set", "eval set"), ("model", "base model")):
            a, b = first.meta[what], other.meta[what]
            # A sweep without a completed trial may not know its model hash yet: then the ids must match.
            same = a["hash"] == b["hash"] if a.get("hash") and b.get("hash") else a.get("id") == b.get("id")
            if not same:
                raise ReportError(
                    f"cannot compare sweeps {first.name!r} and {other.name!r}: different {title} "
                    f"({a.get('name') or a.get('id')} hash {a['hash']} in {first.directory / 'sweep.json'}"
                    f" vs {b.get('name') or b.get('id')} hash {b['hash']} in "
                    f"{other.directory / 'sweep.json'}); "
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
    if not sweeps:
        raise ReportError("no sweep directories given")
    check_comparable(sweeps)
    multi = len(sweeps) > 1
    trials = [t for s in sweeps for t in s.trials]
    for trial in trials:
        trial.label = f"{trial.sweep}#{trial.number}" if multi else f"#{trial.number}"
    ranked = rank_trials(trials)
    name = "+".join(s.name for s in sweeps)
    images: dict[str, bytes] = {}
    blocks: list = [Heading(1, f"Sweep report: {name}")]
    for sweep in sweeps:
        blocks.append(Para(_sweep_summary(sweep, multi)))
    blocks += _verdict_section(sweeps, ranked)
    blocks += _trials_section(sweeps, trials, ranked, multi)
    blocks += _plots_section(sweeps, trials, ranked, images)
    blocks += _comparisons_section(ranked)
    blocks += _examples_section(ranked)
    blocks += _data_card_section(sweeps)
    blocks += _reproduce_section(sweeps, ranked)
    return Report(
        name=name,
        html=render_html(f"Sweep report: {name}", blocks, images),
        markdown=render_markdown(blocks),
        trials_csv=trials_csv(trials),
        images=images,
    )


def rank_trials(trials: list[Trial]) -> list[Trial]:
    """Completed trials, best first: within regression limits, then held-out score, then least regression."""
    complete = [t for t in trials if t.results is not None]
    return sorted(
        complete,
        key=lambda t: (not t.feasible_final, -t.heldout["score"], t.results["final"]["worst_regression"]),
    )  # sorted is stable: ties keep sweep order, then trial number


# --- sections ---------------------------------------------------------------------------------------------
def _sweep_summary(sweep: Sweep, multi: bool) -> str:
    meta = sweep.meta
    counts = {state: sum(t.state == state for t in sweep.trials) for state in ("COMPLETE", "PRUNED", "FAIL")}
    wall = meta.get("wall_time_s")
    text = (
        f"Sweep {sweep.name}: {len(sweep.trials)} trials ({counts['COMPLETE']} complete, "
        f"{counts['PRUNED']} pruned, {counts['FAIL']} failed), objective {meta.get('objective')}, "
        f"sampler {meta.get('sampler')}, pruner {meta.get('pruner')}"
        + (f", wall time {_fmt_duration(wall)}" if wall is not None else "")
        + (f", {meta.get('started_at')} to {meta.get('finished_at')}" if meta.get("started_at") else "")
        + "."
    )
    if meta.get("question"):
        text = f"{'Question of ' + sweep.name if multi else 'Question'}: {meta['question']} " + text
    return text


def _verdict_section(sweeps: list[Sweep], ranked: list[Trial]) -> list:
    # A completed trial's record is the most complete (a sweep.json may not know n or the model hash yet).
    source = ranked[0].results if ranked else sweeps[0].meta
    eval_set, model = source["eval_set"], source["model"]
    identity = (
        f"Eval set {eval_set.get('name')} (hash {eval_set['hash']}, n={_fmt_value(eval_set.get('n'))}, "
        f"min_score {_fmt_value(eval_set.get('min_score'))}); base model {model.get('id')} "
        f"(hash {_fmt_value(model.get('hash'))}, "
        f"{'quantized NF4' if model.get('quantized') else 'not quantized'})."
    )
    blocks: list = [Heading(2, "Verdict")]
    if not ranked:
        return blocks + [
            Para("No trial completed: there is no adapter to recommend.", "warn"),
            Para(identity),
        ]
    best = ranked[0]
    results = best.results
    min_score = results["eval_set"]["min_score"]
    baselines = results["baselines"]
    zero_shot, prompt = baselines["zero_shot"], baselines.get("prompt_baseline")
    ok = results["final"]["meets_min_score"] and best.feasible_final
    headline = (
        f"Best adapter: trial {best.label} ({_fmt_params(best.params)}), "
        f"held-out {_fmt_estimate(best.heldout)}"
        f" — {'meets' if results['final']['meets_min_score'] else 'does NOT meet'} min_score {min_score:g}"
        + ("" if best.feasible_final else "; no trial stayed within every regression limit")
        + "."
    )
    blocks.append(Para(headline, "verdict ok" if ok else "verdict warn"))
    blocks.append(Para(f"Adapter: {results['adapter']['path']} (hash {results['adapter']['hash'][:16]})."))

    final_per_example = best.final_per_example
    rows = [
        ["base zero-shot", *_score_cells(zero_shot), "—"],
        [
            "base + prompt baseline",
            *_score_cells(prompt),
            _paired(zero_shot["per_example"], prompt["per_example"]).verdict() if prompt else "—",
        ],
    ]
    for stage_name, stage in results["stages"].items():
        rows.append(
            [
                f"trial {best.label} after {stage_name.upper()}",
                *_score_cells(stage["heldout"]),
                _paired(zero_shot["per_example"], stage["heldout"]["per_example"]).verdict(),
            ]
        )
    blocks.append(
        Table(
            ["model", "held-out score", "95% CI", "n", "paired test vs base zero-shot (A) of this row (B)"],
            rows,
            wrap_columns=(4,),
        )
    )

    versus_base = _paired(zero_shot["per_example"], final_per_example)
    blocks.append(
        Para(
            f"Best adapter vs base zero-shot on the same {versus_base.n} examples: "
            f"{versus_base.verdict()} (A = base, B = adapter)."
        )
    )
    blocks.append(Para("Was fine-tuning needed? " + _finetuning_needed(best, prompt, min_score)))
    blocks.append(Para("Forgetting: " + _forgetting(best, ranked)))
    if len(sweeps) == 1 and sweeps[0].best_number is not None and sweeps[0].best_number != best.number:
        blocks.append(
            Para(
                f"Note: the sweep's best.json names trial #{sweeps[0].best_number} (objective "
                f"{sweeps[0].meta.get('objective')}); this report ranks feasible trials by held-out score.",
                "note",
            )
        )
    blocks.append(Para(identity))
    return blocks


def _finetuning_needed(best: Trial, prompt: dict | None, min_score: float) -> str:
    score = best.heldout["score"]
    if prompt is None:
        return "unknown: the prompt baseline was disabled for this eval set."
    if prompt["score"] >= min_score:
        return (
            f"No. Prompting alone scores {prompt['score']:.3f} >= min_score {min_score:g}; the best adapter "
            f"scores {score:.3f}. Adapter (B) vs prompt baseline (A): "
            f"{_paired(prompt['per_example'], best.final_per_example).verdict()}."
        )
    if score >= min_score:
        return (
            f"Yes. Prompting alone scores {prompt['score']:.3f} < min_score {min_score:g}; "
            f"the best adapter scores {score:.3f} and meets it."
        )
    return (
        f"Prompting alone scores {prompt['score']:.3f} < min_score {min_score:g}, and no adapter meets it "
        f"either (best {score:.3f}): nothing here is ready to ship."
    )


def _forgetting(best: Trial, ranked: list[Trial]) -> str:
    deltas = best.results["final"]["regression_delta"]
    if not deltas:
        return "not checked: no regression benchmarks were scored (run with run_regression=true)."
    over = [
        f"{task} dropped {-d['delta']:.3f} > limit {d['max_regression']:.3f}"
        for task, d in deltas.items()
        if not d["ok"]
    ]
    others = sum(not t.results["final"]["regression_ok"] for t in ranked)
    tail = f" {others} of {len(ranked)} completed trials exceeded a limit."
    if over:
        return "YES, the best adapter exceeded a regression limit: " + "; ".join(over) + "." + tail
    worst_task = min(deltas, key=lambda task: deltas[task]["delta"])
    worst = deltas[worst_task]
    return (
        f"no regression benchmark exceeded its limit for the best adapter (largest change "
        f"{worst['delta']:+.3f} on {worst_task}, limit -{worst['max_regression']:.3f})." + tail
    )


def _trials_section(sweeps: list[Sweep], trials: list[Trial], ranked: list[Trial], multi: bool) -> list:
    params = _param_names(sweeps, trials)
    tasks = _regression_tasks(trials)
    stages = _stage_names(trials)
    header = (["sweep"] if multi else []) + ["trial"] + params + ["state", "held-out ± stderr"]
    header += [f"Δ {task} ± stderr" for task in tasks]
    header += [f"after {stage.upper()}" for stage in stages] if len(stages) > 1 else []
    header += ["train time", "tokens/s", "peak memory", "est. cost"]
    best = ranked[0] if ranked else None
    rows = []
    for trial in trials:
        results = trial.results
        row = ([trial.sweep] if multi else []) + [f"{trial.number}" + (" (best)" if trial is best else "")]
        row += [_fmt_value(trial.params.get(p)) for p in params]
        row.append(_state_text(trial))
        row.append(f"{trial.heldout['score']:.3f} ± {trial.heldout['stderr']:.3f}" if results else "—")
        for task in tasks:
            delta = _regression_delta(results, task) if results else None
            row.append(
                "—"
                if delta is None
                else f"{delta.delta:+.3f} ± {_fmt_err(delta.stderr)}" + ("" if delta.ok else " OVER LIMIT")
            )
        if len(stages) > 1:
            for stage in stages:
                held = results["stages"].get(stage, {}).get("heldout") if results else None
                row.append(f"{held['score']:.3f} ± {held['stderr']:.3f}" if held else "—")
        metrics = results["metrics"] if results else {}
        row.append(_fmt_duration(metrics["train_runtime_s"]) if results else "—")
        row.append(
            ", ".join(f"{s}: {v:,.0f}" for s, v in metrics["tokens_per_s"].items()) if results else "—"
        )
        row.append(f"{metrics['peak_memory_mb']:,.0f} MB" if results else "—")
        row.append(f"${trial.cost:.4f}" if trial.cost is not None else "—")
        rows.append(row)
    durations = [t.duration_s for t in trials if t.duration_s is not None]
    costs = [t.cost for t in trials if t.cost is not None]
    prices = sorted({f"${s.meta['price_per_gpu_hour']:g}" for s in sweeps})
    return [
        Heading(2, "Trials"),
        Table(header, rows, "trials", wrap_columns=(header.index("state"),)),
        Para(
            f"{len(trials)} trials; trial time {_fmt_duration(sum(durations))} in all; estimated cost "
            f"${sum(costs):.4f} at {', '.join(prices)} per GPU-hour (trial wall time x price, pruned and "
            "failed trials included). Held-out scores are the final stage's; Δ is adapter minus base on each "
            "regression benchmark (paired stderr)."
        ),
    ]


def _state_text(trial: Trial) -> str:
    if trial.state == "COMPLETE":
        text = "complete" if trial.feasible_final else "complete, over a regression limit"
    elif trial.state == "PRUNED":
        last = trial.intermediate[-1] if trial.intermediate else None
        text = f"pruned at step {last['step']} (score {last['score']:.3f})" if last else "pruned"
    elif trial.state == "FAIL":
        text = f"failed: {trial.fail_reason or 'no reason recorded'}"
    else:
        text = trial.state.lower()
    return text + (f" (retry of #{trial.retry_of})" if trial.retry_of is not None else "")


def _plots_section(
    sweeps: list[Sweep], trials: list[Trial], ranked: list[Trial], images: dict[str, bytes]
) -> list:
    blocks: list = [Heading(2, "Plots")]
    params = _param_names(sweeps, trials)
    sweep_names = [s.name for s in sweeps]
    if params:
        images["objective_vs_params.png"] = _plot_objective_vs_params(trials, params, sweeps)
        blocks += [
            Image("objective_vs_params.png", "held-out score vs each swept parameter"),
            Para(
                "Held-out score (the objective) against each swept parameter. Filled: completed trials; "
                "hollow: pruned trials at their last intermediate score (on the pruning subset); failed "
                "trials are not shown."
            ),
        ]
    if ranked:
        images["score_vs_regression.png"] = _plot_score_vs_regression(ranked, sweep_names)
        blocks += [
            Image("score_vs_regression.png", "held-out score vs worst regression delta, Pareto front"),
            Para(
                "Held-out score against the worst regression delta (adapter minus base, worst benchmark; "
                "0 when none was scored). The line joins the Pareto front (no other trial is better on "
                "both); red crosses exceed a regression limit."
            ),
        ]
    if any(t.loss for t in trials):
        images["loss_curves.png"] = _plot_loss_curves(trials)
        blocks += [
            Image("loss_curves.png", "training loss curves of all trials"),
            Para(
                "Training loss per step for every trial, one panel per stage (pruned and failed trials "
                "up to where they stopped)."
            ),
        ]
    tasks = _regression_tasks(trials)
    if tasks and ranked:
        best_trials = ranked[:BEST_TRIALS_PLOTTED]
        deltas = {t.label: {task: _regression_delta(t.results, task) for task in tasks} for t in best_trials}
        limits = {
            task: d["max_regression"]
            for t in best_trials
            for task, d in t.results["final"]["regression_delta"].items()
        }
        images["regression_deltas.png"] = _plot_regression_deltas(deltas, tasks, limits)
        blocks += [
            Image("regression_deltas.png", "per-benchmark regression deltas of the best trials"),
            Para(
                f"Per-benchmark score change vs the base model for the best {len(best_trials)} trials, "
                "with 95% intervals (±1.96 paired stderr); dashed: each benchmark's limit."
            ),
        ]
    else:
        blocks.append(
            Para(
                "No regression benchmarks were scored, so there are no per-benchmark deltas to plot.", "note"
            )
        )
    return blocks


def _comparisons_section(ranked: list[Trial]) -> list:
    blocks: list = [Heading(2, "Paired comparisons")]
    if not ranked:
        return blocks + [Para("No trial completed: nothing to compare.", "warn")]
    best = ranked[0]
    baselines = best.results["baselines"]
    rows = []

    def add(what: str, a_name: str, a: list, b_name: str, b: list) -> None:
        comparison = _paired(a, b)
        rows.append(
            [
                what,
                a_name,
                b_name,
                str(comparison.n),
                f"{comparison.mean_a:.3f}",
                f"{comparison.mean_b:.3f}",
                f"{100 * comparison.delta:+.1f} "
                f"[{100 * comparison.ci_low:+.1f}, {100 * comparison.ci_high:+.1f}]",
                f"{comparison.wins}/{comparison.losses}/{comparison.ties}",
                comparison.verdict(),
            ]
        )

    best_name = f"trial {best.label}"
    add(
        "held-out", "base zero-shot", baselines["zero_shot"]["per_example"], best_name, best.final_per_example
    )
    if baselines.get("prompt_baseline"):
        add(
            "held-out",
            "base + prompt baseline",
            baselines["prompt_baseline"]["per_example"],
            best_name,
            best.final_per_example,
        )
    if len(ranked) > 1:
        runner_up = ranked[1]
        add(
            "held-out",
            f"trial {runner_up.label} (runner-up)",
            runner_up.final_per_example,
            best_name,
            best.final_per_example,
        )
    stages = best.results["stages"]
    if "sft" in stages and "dpo" in stages:
        add(
            "held-out",
            f"{best_name} after SFT",
            stages["sft"]["heldout"]["per_example"],
            f"{best_name} after DPO",
            stages["dpo"]["heldout"]["per_example"],
        )
    final_regression = stages[best.results["final"]["stage"]]["regression"]
    for task, base_task in baselines.get("regression", {}).items():
        if (
            task in final_regression
            and base_task.get("per_example")
            and final_regression[task].get("per_example")
        ):
            add(task, "base", base_task["per_example"], best_name, final_regression[task]["per_example"])
    blocks.append(
        Table(
            [
                "eval",
                "A",
                "B",
                "n",
                "mean A",
                "mean B",
                "B - A, points [95% CI]",
                "B wins/losses/ties",
                "verdict",
            ],
            rows,
            wrap_columns=(8,),
        )
    )
    blocks.append(
        Para(
            "Each row compares two models on the same examples: McNemar's test for 0/1 scores, else a "
            "paired bootstrap (harness.stats.compare_paired). 'Not distinguishable' means the test's p-value "
            "is at least 0.05; with few examples the interval shown can exclude 0 while the exact test "
            "does not reject."
        )
    )
    return blocks


def _examples_section(ranked: list[Trial]) -> list:
    blocks: list = [Heading(2, "Fixed and broken examples")]
    if not ranked:
        return blocks + [Para("No trial completed: no outputs to compare.", "warn")]
    best = ranked[0]
    base_rows = best.results["baselines"]["zero_shot"]["per_example"]
    adapter_rows = best.final_per_example
    _check_aligned(base_rows, adapter_rows, "base zero-shot", f"trial {best.label}")
    fixed = [(b, a) for b, a in zip(base_rows, adapter_rows, strict=True) if a["score"] > b["score"]]
    broken = [(b, a) for b, a in zip(base_rows, adapter_rows, strict=True) if a["score"] < b["score"]]
    blocks.append(
        Para(
            f"Trial {best.label} vs the base model zero-shot on {len(adapter_rows)} held-out examples: "
            f"fixed {len(fixed)}, broke {len(broken)}, "
            f"unchanged {len(adapter_rows) - len(fixed) - len(broken)}. "
            f"Up to {MAX_EXAMPLES_SHOWN} of each are shown, in eval set order."
        )
    )
    header = ["example", "prompt", "reference", "base output (score)", "adapter output (score)"]
    for title, pairs in (
        ("Fixed (base wrong, adapter right)", fixed),
        ("Broken (base right, adapter wrong)", broken),
    ):
        blocks.append(Heading(3, f"{title}: {len(pairs)}"))
        if pairs:
            blocks.append(
                Table(
                    header,
                    [
                        [
                            a["source"],
                            a["prompt"],
                            _fmt_reference(a["reference"]),
                            _fmt_output(b),
                            _fmt_output(a),
                        ]
                        for b, a in pairs[:MAX_EXAMPLES_SHOWN]
                    ],
                    "examples",
                )
            )
    return blocks


def _data_card_section(sweeps: list[Sweep]) -> list:
    blocks: list = [Heading(2, "Data card")]
    cards = []
    for sweep in sweeps:
        complete = rank_trials(sweep.trials)
        cards.append((sweep, complete[0].results if complete else None))
    known = ("sft_file", "sft_rows", "sft_examples", "sft_truncated", "duplicates_removed")
    extra_keys = sorted(
        {
            k
            for _, r in cards
            if r
            for k in r["data"]
            if k not in known and k not in ("leakage", "chat_template_sample")
        }
    )
    labels = {
        "sft_file": "training file",
        "sft_rows": "training rows read",
        "sft_examples": "training examples used",
        "sft_truncated": "training examples truncated",
        "duplicates_removed": "duplicates removed",
    }
    rows = []
    for key in (*known, *extra_keys):
        rows.append(
            [labels.get(key, key.replace("_", " "))]
            + [_fmt_value(r["data"].get(key)) if r else "—" for _, r in cards]
        )
    rows.append(["held-out examples"] + [str(r["eval_set"]["n"]) if r else "—" for _, r in cards])
    tasks = list(dict.fromkeys(t for _, r in cards if r for t in r["baselines"].get("regression", {})))
    for task in tasks:
        docs = [r["baselines"]["regression"].get(task, {}).get("n") if r else None for _, r in cards]
        rows.append([f"regression docs: {task}", *map(_fmt_value, docs)])
    rows.append(["leakage check"] + [_leakage_text(r["data"]["leakage"]) if r else "—" for _, r in cards])
    blocks.append(
        Table(["", *[s.name for s, _ in cards]], rows, wrap_columns=tuple(range(1, len(cards) + 1)))
    )
    for sweep, results in cards:
        leakage = results["data"]["leakage"] if results else {}
        if leakage.get("examples"):
            blocks.append(
                Pre(
                    "\n".join(_fmt_reference(e) for e in leakage["examples"]),
                    summary=f"Overlapping examples found by the leakage check ({sweep.name})",
                )
            )
    samples = {}
    for sweep, results in cards:
        if results and results["data"].get("chat_template_sample"):
            samples.setdefault(results["data"]["chat_template_sample"], []).append(sweep.name)
    for sample, names in samples.items():
        blocks.append(
            Heading(3, "Decoded chat-template sample" + (f" ({', '.join(names)})" if len(cards) > 1 else ""))
        )
        blocks.append(Para("One training example as the model sees it; the loss is on the ⟦…⟧ spans only."))
        blocks.append(Pre(sample))
    return blocks


def _leakage_text(leakage: dict) -> str:
    overlaps = leakage.get("exact_overlaps", 0) + leakage.get("ngram_overlaps", 0)
    return (
        f"{'passed' if overlaps == 0 else 'OVERLAP FOUND'}: {leakage.get('exact_overlaps', 0)} exact and "
        f"{leakage.get('ngram_overlaps', 0)} {leakage.get('ngram')}-gram overlaps between "
        f"{leakage.get('n_train')} training and {leakage.get('n_heldout')} held-out prompts "
        f"(fraction {leakage.get('overlap_fraction', 0.0):.3f})"
    )


def _reproduce_section(sweeps: list[Sweep], ranked: list[Trial]) -> list:
    import yaml

    blocks: list = [Heading(2, "Reproduce")]
    if ranked:
        best = ranked[0]
        metrics = best.results["metrics"]
        blocks += [
            Para(f"Re-run the best trial ({best.label}) alone:"),
            Pre(best.command or "(no command recorded)"),
            Pre(
                yaml.safe_dump(best.results["config"], sort_keys=False, allow_unicode=True).rstrip(),
                summary=f"Its resolved config (git revision {metrics.get('git_revision')}, device "
                f"{metrics.get('device')}, seed {metrics.get('seed')})",
            ),
            Para(
                "Library versions: "
                + ", ".join(f"{k} {v}" for k, v in metrics.get("library_versions", {}).items())
                + "."
            ),
        ]
    for sweep in sweeps:
        blocks += [Para(f"Re-run sweep {sweep.name}:"), Pre(sweep.meta["command"])]
    dirs = " ".join(f"{Path(s.directory).parent.name}/{Path(s.directory).name}" for s in sweeps)
    blocks += [
        Para("Rebuild this report (reads artifacts only, loads no model):"),
        Pre(f"python -m harness.report {dirs}"),
    ]
    return blocks


# --- numbers ----------------------------------------------------------------------------------------------
def _paired(a_rows: list, b_rows: list) -> PairedComparison:
    """Paired test on held-out rows ({"source", "score", ...}) or on lm-eval per-doc scores (floats)."""
    _check_aligned(a_rows, b_rows, "A", "B")
    return compare_paired([_row_score(r) for r in a_rows], [_row_score(r) for r in b_rows])


def _row_score(row) -> float:
    return float(row["score"]) if isinstance(row, dict) else float(row)


def _check_aligned(a_rows: list, b_rows: list, a_name: str, b_name: str) -> None:
    a_sources = [r["source"] if isinstance(r, dict) else i for i, r in enumerate(a_rows)]
    b_sources = [r["source"] if isinstance(r, dict) else i for i, r in enumerate(b_rows)]
    if a_sources != b_sources:
        raise ReportError(
            f"{a_name} and {b_name} were not scored on the same examples in the same order: "
            "a paired comparison is impossible (are the results records from one eval set?)"
        )


@dataclass
class RegressionDelta:
    """A trial's final score on one regression benchmark minus the base model's."""

    delta: float
    stderr: float  # of the paired per-doc differences; from the two stderrs when per-doc scores are missing
    ok: bool  # the drop stays within the benchmark's max_regression

    @property
    def half_width(self) -> float:  # of the normal 95% interval
        return 1.96 * self.stderr


def _regression_delta(results: dict, task: str) -> RegressionDelta | None:
    limit_check = results["final"]["regression_delta"].get(task)
    base = results["baselines"].get("regression", {}).get(task)
    adapter = results["stages"][results["final"]["stage"]]["regression"].get(task)
    if base is None or adapter is None or limit_check is None:
        return None
    a, b = base.get("per_example") or [], adapter.get("per_example") or []
    if len(a) == len(b) >= 2:
        stderr = float(np.std(np.asarray(b, float) - np.asarray(a, float), ddof=1) / math.sqrt(len(a)))
    else:
        stderr = math.sqrt(_nan_to_zero(base.get("stderr")) ** 2 + _nan_to_zero(adapter.get("stderr")) ** 2)
    return RegressionDelta(adapter["score"] - base["score"], stderr, limit_check["ok"])


def _nan_to_zero(value) -> float:
    return 0.0 if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _param_names(sweeps: list[Sweep], trials: list[Trial]) -> list[str]:
    names = [p for s in sweeps for p in s.meta.get("space", {})]
    names += [p for t in trials for p in t.params]
    return list(dict.fromkeys(names))


def _regression_tasks(trials: list[Trial]) -> list[str]:
    tasks = [task for t in trials if t.results for task in t.results["final"]["regression_delta"]]
    return list(dict.fromkeys(tasks))


def _stage_names(trials: list[Trial]) -> list[str]:
    return list(dict.fromkeys(stage for t in trials if t.results for stage in t.results["stages"]))


# --- formatting -------------------------------------------------------------------------------------------
def _fmt_value(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _fmt_params(params: dict) -> str:
    return ", ".join(f"{k}={_fmt_value(v)}" for k, v in params.items()) or "no swept parameters"


def _fmt_estimate(result: dict) -> str:
    return f"{result['score']:.3f} [95% CI {result['ci_low']:.3f}, {result['ci_high']:.3f}], n={result['n']}"


def _score_cells(result: dict | None) -> list[str]:
    if not result:
        return ["—", "—", "—"]
    return [
        f"{result['score']:.3f} ± {result['stderr']:.3f}",
        f"[{result['ci_low']:.3f}, {result['ci_high']:.3f}]",
        str(result["n"]),
    ]


def _fmt_err(value: float) -> str:
    return "?" if math.isnan(value) else f"{value:.3f}"


def _fmt_duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _fmt_output(row: dict) -> str:
    return f"{row['output'] or '(empty output)'}\n(score {row['score']:.2f})"


def _fmt_reference(reference) -> str:
    return reference if isinstance(reference, str) else json.dumps(reference, ensure_ascii=False)


# --- plots ------------------------------------------------------------------------------------------------
# Deterministic PNGs: matplotlib's defaults (not the user's matplotlibrc), the bundled DejaVu fonts, and no
# "Software" metadata, so the same artifacts give the same bytes. Figures are made without pyplot (no global
# backend or figure registry is touched).
_RC = {
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "svg.hashsalt": "harness-report",
    "figure.dpi": 100,
    "savefig.dpi": 100,
}


def _figure(width: float, height: float, nrows: int = 1, ncols: int = 1):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    axes = figure.subplots(nrows, ncols, squeeze=False)
    return figure, [ax for row in axes for ax in row]


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _plotting(draw):
    """Run `draw` under fixed rcParams; returns its PNG bytes."""
    import matplotlib

    with matplotlib.rc_context():
        matplotlib.rcdefaults()
        matplotlib.rcParams.update(_RC)
        return _png(draw())


def _colors(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _reference_lines(ax, ranked: list[Trial]) -> None:
    """min_score, base zero-shot and prompt baseline as horizontal lines: the bars an adapter has to clear."""
    if not ranked:
        return
    results = ranked[0].results
    baselines = results["baselines"]
    lines = [
        (results["eval_set"]["min_score"], "min_score", "#cf222e", "--"),
        (baselines["zero_shot"]["score"], "base zero-shot", "#57606a", ":"),
    ]
    if baselines.get("prompt_baseline"):
        lines.append((baselines["prompt_baseline"]["score"], "prompt baseline", "#8250df", "-."))
    for value, label, color, style in lines:
        ax.axhline(value, color=color, linestyle=style, linewidth=1.1, label=f"{label} {value:.2f}", zorder=1)


def _plot_objective_vs_params(trials: list[Trial], params: list[str], sweeps: list[Sweep]) -> bytes:
    ranked = rank_trials(trials)
    sweep_index = {s.name: i for i, s in enumerate(sweeps)}
    colors = _colors(len(sweeps))
    space = {}
    for sweep in sweeps:
        for name, choices in sweep.meta.get("space", {}).items():
            space.setdefault(name, choices)

    def draw():
        ncols = min(len(params), 3)
        nrows = math.ceil(len(params) / ncols)
        figure, axes = _figure(4.4 * ncols + 1.6, 3.3 * nrows, nrows, ncols)
        for ax in axes[len(params) :]:
            ax.set_visible(False)
        for ax, param in zip(axes, params, strict=False):  # spare axes are hidden
            points = []  # (value, score, trial, hollow)
            for trial in trials:
                value = trial.params.get(param)
                if value is None:
                    continue
                if trial.results:
                    points.append((value, trial.heldout["score"], trial, False))
                elif trial.state == "PRUNED" and trial.intermediate:
                    points.append((value, trial.intermediate[-1]["score"], trial, True))
            values = [p[0] for p in points]
            choices = space.get(param) if isinstance(space.get(param), list) else None
            numeric = values and all(_is_number(v) for v in values)
            categorical = not numeric or choices is None or all(v in choices for v in values)
            if categorical:
                order = sorted(
                    {*values, *(choices or [])},
                    key=lambda v: (not _is_number(v), v if _is_number(v) else str(v)),
                )
                position = {_fmt_value(v): i for i, v in enumerate(order)}
                xs = [position[_fmt_value(v)] for v in values]
                ax.set_xticks(range(len(order)), [_fmt_value(v) for v in order])
                ax.set_xlim(-0.5, len(order) - 0.5)
            else:
                xs = [float(v) for v in values]
                if min(xs) > 0 and max(xs) / min(xs) >= 20:
                    ax.set_xscale("log")
            for x, (_, score, trial, hollow) in zip(xs, points, strict=True):
                color = colors[sweep_index[trial.sweep]]
                ax.scatter(
                    [x],
                    [score],
                    s=42,
                    zorder=3,
                    marker="o",
                    linewidths=1.4,
                    facecolors="none" if hollow else [color],
                    edgecolors=[color],
                )
            _label_points(
                ax, [(x, score, trial.label) for x, (_, score, trial, _) in zip(xs, points, strict=True)]
            )
            _reference_lines(ax, ranked)
            ax.set_xlabel(param)
            ax.set_ylabel("held-out score")
            ax.set_ylim(-0.05, 1.05)
        _sweep_legend(
            figure,
            axes[0],
            sweeps,
            colors,
            pruned=any(t.state == "PRUNED" and t.intermediate for t in trials),
        )
        figure.suptitle("Objective (held-out score) vs each swept parameter")
        return figure

    return _plotting(draw)


def _label_points(ax, points: list[tuple[float, float, str]]) -> None:
    """One label per position, listing every trial there (trials with equal scores would overprint)."""
    labels: dict[tuple[float, float], list[str]] = {}
    for x, y, label in points:
        labels.setdefault((x, y), []).append(label)
    for (x, y), names in labels.items():
        ax.annotate(", ".join(names), (x, y), xytext=(5, 3), textcoords="offset points", fontsize=7)


def _sweep_legend(figure, ax, sweeps: list[Sweep], colors: list, pruned: bool) -> None:
    from matplotlib.lines import Line2D

    handles, _ = ax.get_legend_handles_labels()  # the reference lines
    handles += [
        Line2D([], [], marker="o", linestyle="", color=colors[i], label=f"{s.name}: complete")
        for i, s in enumerate(sweeps)
    ]
    if pruned:
        handles.append(
            Line2D(
                [],
                [],
                marker="o",
                linestyle="",
                markerfacecolor="none",
                color="gray",
                label="pruned (last intermediate)",
            )
        )
    figure.legend(handles=handles, fontsize=7, loc="outside right center")


def _pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (both maximised)."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            qx >= x and qy >= y and (qx > x or qy > y) for j, (qx, qy) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return front


def _plot_score_vs_regression(ranked: list[Trial], sweep_names: list[str]) -> bytes:
    colors = _colors(len(sweep_names))
    points = [(-t.results["final"]["worst_regression"], t.heldout["score"]) for t in ranked]
    front = _pareto_front(points)

    def draw():
        figure, (ax,) = _figure(8.5, 4.6)
        for (x, y), trial in zip(points, ranked, strict=True):
            held = trial.heldout
            color = colors[sweep_names.index(trial.sweep)]
            ax.errorbar(
                [x],
                [y],
                yerr=[[y - held["ci_low"]], [held["ci_high"] - y]],
                fmt="none",
                ecolor=color,
                alpha=0.5,
                capsize=3,
                zorder=2,
            )
            if trial.feasible_final:
                ax.scatter([x], [y], s=46, color=[color], zorder=3)
            else:
                ax.scatter([x], [y], s=60, marker="x", color="#cf222e", zorder=3)
        _label_points(ax, [(x, y, t.label) for (x, y), t in zip(points, ranked, strict=True)])
        front_points = sorted(points[i] for i in front)
        ax.plot(
            [p[0] for p in front_points],
            [p[1] for p in front_points],
            color="black",
            linewidth=1.2,
            linestyle="--",
            marker="o",
            markersize=11,
            markerfacecolor="none",
            zorder=1,
            label="Pareto front",
        )
        ax.axvline(0.0, color="gray", linewidth=0.8, linestyle=":")
        _reference_lines(ax, ranked)
        xs = [p[0] for p in points]
        span = max(max(xs) - min(xs), 0.02)
        ax.set_xlim(min(xs) - 0.25 * span, max(xs) + 0.25 * span)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("worst regression delta (adapter - base; higher is better)")
        ax.set_ylabel("held-out score (95% CI)")
        scored = any(t.results["final"]["regression_delta"] for t in ranked)
        ax.set_title("Held-out score vs forgetting" + ("" if scored else " (no regression benchmark scored)"))
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
        return figure

    return _plotting(draw)


def _plot_loss_curves(trials: list[Trial]) -> bytes:
    from matplotlib.ticker import MaxNLocator

    stages = list(dict.fromkeys(row.get("stage", "sft") for t in trials for row in t.loss))
    colors = _colors(len(trials))

    def draw():
        figure, axes = _figure(6.2 * len(stages), 3.8, 1, len(stages))
        for ax, stage in zip(axes, stages, strict=True):
            for color, trial in zip(colors, trials, strict=True):
                rows = [r for r in trial.loss if r.get("stage", "sft") == stage and r.get("loss") is not None]
                if not rows:
                    continue
                style = "-" if trial.state == "COMPLETE" else "--"
                ax.plot(
                    [r["step"] for r in rows],
                    [r["loss"] for r in rows],
                    style,
                    color=color,
                    linewidth=1.3,
                    marker="." if len(rows) < 30 else None,
                    label=f"{trial.label} ({trial.state.lower()})",
                )
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("step")
            ax.set_ylabel("training loss")
            ax.set_title(f"{stage.upper()} loss")
            if len(trials) <= 12:
                ax.legend(fontsize=7, loc="best")
        return figure

    return _plotting(draw)


def _plot_regression_deltas(deltas: dict[str, dict], tasks: list[str], limits: dict[str, float]) -> bytes:
    labels = list(deltas)
    colors = _colors(len(labels))

    def draw():
        figure, (ax,) = _figure(max(6.0, 1.8 * len(tasks) + 3), 4.0)
        width = 0.8 / len(labels)
        for i, (label, color) in enumerate(zip(labels, colors, strict=True)):
            xs, ys, errs = [], [], []
            for j, task in enumerate(tasks):
                delta = deltas[label][task]
                if delta is None:
                    continue
                xs.append(j - 0.4 + width * (i + 0.5))
                ys.append(delta.delta)
                errs.append(0.0 if math.isnan(delta.half_width) else delta.half_width)
            ax.bar(xs, ys, width=width * 0.92, color=color, yerr=errs, capsize=3, label=f"trial {label}")
        for j, task in enumerate(tasks):
            if task in limits:
                ax.hlines(-limits[task], j - 0.45, j + 0.45, colors="#cf222e", linestyles="--", linewidth=1.2)
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(tasks)), tasks)
        ax.set_ylabel("score delta vs base (95% CI)")
        ax.set_title("Regression benchmarks: change vs base model (dashed: limit)")
        ax.legend(fontsize=8, loc="best")
        return figure

    return _plotting(draw)


# --- CSV --------------------------------------------------------------------------------------------------
def trials_csv(trials: list[Trial]) -> str:
    """Every trial of every sweep, one row each, numbers unrounded (for pandas or a spreadsheet)."""
    params = list(dict.fromkeys(p for t in trials for p in t.params))
    tasks = _regression_tasks(trials)
    stages = _stage_names(trials)
    header = ["sweep", "number", "state", "fail_reason", "retry_of", "feasible"] + [
        f"param_{p}" for p in params
    ]
    header += [
        "heldout_score",
        "heldout_stderr",
        "heldout_ci_low",
        "heldout_ci_high",
        "heldout_n",
        "final_stage",
    ]
    header += [f"heldout_{s}" for s in stages]
    header += [c for task in tasks for c in (f"delta_{task}", f"delta_{task}_stderr", f"delta_{task}_ok")]
    header += [
        "worst_regression",
        "last_intermediate_step",
        "last_intermediate_score",
        "train_runtime_s",
        "duration_s",
        "peak_memory_mb",
        "cost_usd",
        "adapter",
        "command",
    ]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for t in trials:
        r = t.results
        last = t.intermediate[-1] if t.intermediate else {}
        row = [t.sweep, t.number, t.state, _csv_text(t.fail_reason), t.retry_of, t.feasible]
        row += [t.params.get(p) for p in params]
        row += (
            [t.heldout[k] for k in ("score", "stderr", "ci_low", "ci_high", "n")] + [r["final"]["stage"]]
            if r
            else [None] * 6
        )
        row += [r["stages"][s]["heldout"]["score"] if r and s in r["stages"] else None for s in stages]
        for task in tasks:
            delta = _regression_delta(r, task) if r else None
            row += [delta.delta, delta.stderr, delta.ok] if delta else [None] * 3
        row += [
            r["final"]["worst_regression"] if r else None,
            last.get("step"),
            last.get("score"),
            r["metrics"]["train_runtime_s"] if r else None,
            t.duration_s,
            r["metrics"]["peak_memory_mb"] if r else None,
            t.cost,
            r["adapter"]["path"] if r else None,
            _csv_text(t.command),
        ]
        writer.writerow(["" if v is None else v for v in row])
    return out.getvalue()


def _csv_text(text: str | None) -> str | None:
    # A cell starting with = + - @ is a formula to spreadsheet programs; untrusted text must stay text.
    return "'" + text if text and text[0] in "=+-@" else text


# --- document model and renderers ----------------------------------------------------------------------
# The report is a list of blocks rendered twice, so the HTML page and the Markdown twin say the same thing and
# escaping happens in exactly one place per format. Block text is always plain, untrusted-safe text.
@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Para:
    text: str
    css_class: str = ""  # verdict ok / verdict warn / warn / note


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    css_class: str = ""  # "examples": monospace cells that keep line breaks; "trials": compact
    wrap_columns: tuple[int, ...] = ()  # columns of long prose that may wrap; other cells stay on one line


@dataclass
class Image:
    filename: str
    alt: str


@dataclass
class Pre:
    text: str
    summary: str = ""  # when set, the block is folded under this line (HTML <details>, also on GitHub)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:2rem auto;
max-width:1320px;padding:0 1.5rem;color:#1f2328;line-height:1.45;font-size:15px}
h1{font-size:1.7rem;border-bottom:2px solid #d0d7de;padding-bottom:.3rem}
h2{font-size:1.35rem;margin-top:2.2rem;border-bottom:1px solid #d0d7de;padding-bottom:.2rem}
h3{font-size:1.08rem;margin-top:1.4rem}
.table-wrap{overflow-x:auto;margin:.6rem 0}
table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top;white-space:nowrap}
th{white-space:normal;min-width:3rem}
td.wrap{white-space:normal;min-width:10rem;max-width:30rem}
table.trials{font-size:12px}
table.trials td,table.trials th{padding:3px 6px}
th{background:#f6f8fa}
details{margin:.6rem 0}
summary{cursor:pointer;color:#0969da}
tr:nth-child(even) td{background:#fbfcfd}
table.examples td{white-space:pre-wrap;font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:12px;
max-width:360px;word-break:break-word}
pre{background:#f6f8fa;border:1px solid #d0d7de;border-radius:6px;padding:.7rem;overflow-x:auto;
font-size:12px;white-space:pre-wrap;word-break:break-word}
p.verdict{font-size:1.12rem;font-weight:600;padding:.7rem 1rem;border-radius:6px}
p.verdict.ok{background:#dafbe1;border-left:5px solid #1a7f37}
p.verdict.warn{background:#fff8c5;border-left:5px solid #9a6700}
p.warn{color:#9a6700;font-weight:600}
p.note{color:#57606a;font-style:italic}
figure{margin:.8rem 0}
img{max-width:100%;height:auto;border:1px solid #d0d7de}
""".strip()


def render_html(title: str, blocks: list, images: dict[str, bytes]) -> str:
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title>",
        f"<style>\n{_CSS}\n</style>",
        "</head>",
        "<body>",
    ]
    for block in blocks:
        if isinstance(block, Heading):
            anchor = re.sub(r"[^a-z0-9]+", "-", block.text.lower()).strip("-")
            parts.append(f'<h{block.level} id="{esc(anchor)}">{esc(block.text)}</h{block.level}>')
        elif isinstance(block, Para):
            css = f' class="{esc(block.css_class)}"' if block.css_class else ""
            parts.append(f"<p{css}>{esc(block.text)}</p>")
        elif isinstance(block, Table):
            css = f' class="{esc(block.css_class)}"' if block.css_class else ""
            head = "".join(f"<th>{esc(h)}</th>" for h in block.header)
            cells = [
                '<td class="wrap">' if i in block.wrap_columns else "<td>" for i in range(len(block.header))
            ]
            body = "\n".join(
                "<tr>" + "".join(f"{cells[i]}{esc(c)}</td>" for i, c in enumerate(row)) + "</tr>"
                for row in block.rows
            )
            parts.append(
                f'<div class="table-wrap"><table{css}>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n'
                "</tbody></table></div>"
            )
        elif isinstance(block, Image):
            data = base64.b64encode(images[block.filename]).decode("ascii")
            parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{esc(block.alt)}"></figure>')
        elif isinstance(block, Pre):
            pre = f"<pre>{esc(block.text)}</pre>"
            parts.append(
                f"<details><summary>{esc(block.summary)}</summary>\n{pre}\n</details>"
                if block.summary
                else pre
            )
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def render_markdown(blocks: list) -> str:
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"{'#' * block.level} {md_escape(block.text)}")
        elif isinstance(block, Para):
            text = md_escape(block.text)
            parts.append(f"**{text}**" if block.css_class.startswith("verdict") else text)
        elif isinstance(block, Table):
            lines = [
                "| " + " | ".join(md_escape(h) for h in block.header) + " |",
                "|" + "---|" * len(block.header),
            ]
            lines += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in block.rows]
            parts.append("\n".join(lines))
        elif isinstance(block, Image):
            parts.append(f"![{md_escape(block.alt)}]({IMAGES_DIR}/{block.filename})")
        elif isinstance(block, Pre):
            # A fence longer than any backtick run inside, so untrusted text cannot close it.
            longest = max((len(run) for run in re.findall(r"`+", block.text)), default=0)
            fence = "`" * max(3, longest + 1)
            code = f"{fence}text\n{block.text}\n{fence}"
            parts.append(
                f"<details><summary>{html.escape(block.summary)}</summary>\n\n{code}\n\n</details>"
                if block.summary
                else code
            )
    return "\n\n".join(parts) + "\n"


_MD_SPECIAL = re.compile(r"([\\`*_\[\]|#~])")


def md_escape(text: str) -> str:
    """Plain text for a Markdown paragraph or table cell: no HTML, no formatting, no cell breaks, no links."""
    text = html.escape(text, quote=False)  # & < > as entities: raw HTML in Markdown would be rendered
    text = _MD_SPECIAL.sub(r"\\\1", text)
    return text.replace("\r", "").replace("\n", "<br>")


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
