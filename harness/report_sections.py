"""The report's sections, as document blocks (harness.render) built from loaded sweeps (harness.report).

    blocks = [Heading(1, title), Para(sweep_summary(sweep, multi)), *verdict_section(sweeps, ranked), ...]

harness.report.build_report puts them in order: verdict, trials, plots, paired comparisons, fixed and broken
examples, data card, reproduce. Each section returns a list of blocks; `plots_section` also fills `images`
(file name -> PNG bytes). Block text is plain, untrusted text: the renderers escape it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from harness.records import HeldoutResult, RunResults
from harness.render import Heading, Image, Para, Pre, Table
from harness.report import BEST_TRIALS_PLOTTED, MAX_EXAMPLES_SHOWN, Sweep, Trial, rank_trials
from harness.report_format import (
    check_aligned,
    fmt_duration,
    fmt_err,
    fmt_estimate,
    fmt_output,
    fmt_params,
    fmt_reference,
    fmt_value,
    leakage_text,
    paired,
    param_names,
    regression_delta,
    regression_tasks,
    score_cells,
    stage_names,
    state_text,
)
from harness.report_plots import (
    plot_loss_curves,
    plot_objective_vs_params,
    plot_regression_deltas,
    plot_score_vs_regression,
)
from harness.serving import export_command


def sweep_summary(sweep: Sweep, multi: bool) -> str:
    meta = sweep.meta
    complete, pruned, failed = (sum(t.record.state == s for t in sweep.trials) for s in ("COMPLETE", "PRUNED", "FAIL"))
    text = (
        f"Sweep {sweep.name}: {len(sweep.trials)} trials ({complete} complete, {pruned} pruned, {failed} failed), "
        f"objective {meta.objective}, sampler {meta.sampler}, pruner {meta.pruner}"
        + (f", wall time {fmt_duration(meta.wall_time_s)}" if meta.wall_time_s is not None else "")
        + (f", {meta.started_at} to {meta.finished_at}" if meta.started_at else "")
        + "."
    )
    if meta.question:
        text = f"{'Question of ' + sweep.name if multi else 'Question'}: {meta.question} " + text
    return text


def verdict_section(sweeps: list[Sweep], ranked: list[Trial]) -> list:
    # A completed trial's record is the most complete (a sweep.json may not know n or the model hash yet).
    source = ranked[0].results if ranked else sweeps[0].meta
    eval_set, model = source.eval_set, source.model
    identity = (
        f"Eval set {eval_set.name} (hash {eval_set.hash}, n={fmt_value(eval_set.n)}, "
        f"min_score {fmt_value(eval_set.min_score)}); base model {model.id} (hash {fmt_value(model.hash)}, "
        f"{'quantized NF4' if model.quantized else 'not quantized'})."
    )
    blocks: list = [Heading(2, "Verdict")]
    if not ranked:
        return blocks + [
            Para("No trial completed: there is no adapter to recommend.", "warn"),
            Para(identity),
        ]
    best = ranked[0]
    results = best.results
    min_score = results.eval_set.min_score
    zero_shot, prompt = results.baselines.zero_shot, results.baselines.prompt_baseline
    meets = results.final.meets_min_score
    headline = (
        f"Best on the selection split: trial {best.label} ({fmt_params(best.record.params)}), "
        f"selection split {fmt_estimate(best.heldout)}"
        + ("" if best.feasible_final else "; no trial stayed within every regression limit")
        + ". That is the split it was chosen on, so the score is biased upward: the verdicts (min_score, "
        "fine-tuning, best vs runner-up, the cheaper alternative) are made on the reporting split, in the next "
        "section."
    )
    blocks.append(Para(headline, "verdict ok" if meets and best.feasible_final else "verdict warn"))
    blocks.append(Para(f"Adapter: {results.adapter.path} (hash {results.adapter.hash[:16]})."))
    if results.run_dir:
        blocks.append(Para(
            f"Ship it: {export_command(Path(results.run_dir))} writes the adapter with the vLLM command that "
            "serves it, and a merged model, each proven to reproduce this trial's recorded outputs."))
    servable = {s.name: s.meta.servable_ranks_only for s in sweeps}
    if all(servable.values()):
        blocks.append(Para("Search space: every LoRA rank was checked to be servable by vLLM "
                           "(sweep.servable_ranks_only=true)."))
    else:
        off = ", ".join(name for name, on in servable.items() if not on)
        blocks.append(Para(f"Search space: sweep {off} did not restrict LoRA ranks to those vLLM can serve "
                           "(sweep.servable_ranks_only=false); check the serving card before shipping.", "warn"))

    final_per_example = best.final_per_example
    rows = [
        ["base zero-shot", *score_cells(zero_shot), "—"],
        [
            "base + prompt baseline",
            *score_cells(prompt),
            paired(zero_shot.per_example, prompt.per_example).verdict() if prompt else "—",
        ],
    ]
    for stage_name, stage in results.stages.items():
        rows.append(
            [
                f"trial {best.label} after {stage_name.upper()}",
                *score_cells(stage.heldout),
                paired(zero_shot.per_example, stage.heldout.per_example).verdict(),
            ]
        )
    blocks.append(
        Table(
            ["model", "held-out score", "95% CI", "n", "paired test vs base zero-shot (A) of this row (B)"],
            rows,
            wrap_columns=(4,),
        )
    )

    versus_base = paired(zero_shot.per_example, final_per_example)
    blocks.append(
        Para(
            f"Best adapter vs base zero-shot on the same {versus_base.n} examples: "
            f"{versus_base.verdict()} (A = base, B = adapter)."
        )
    )
    blocks.append(Para("On the selection split (for orientation; decided on the reporting split below): was "
                       "fine-tuning needed? " + _finetuning_needed(best, prompt, min_score)))
    blocks.append(Para("Forgetting: " + _forgetting(best, ranked)))
    # best.json and this ranking are one rule (selection.rank_key), but best.json is written when a sweep process
    # finishes, from the trials that process could see: a sweep stopped before its last summary, or trials run
    # by workers on other machines and copied into trials/ afterwards, leave it naming another trial.
    if len(sweeps) == 1 and sweeps[0].best_number not in (None, best.record.number):
        blocks.append(
            Para(
                f"Note: the sweep's best.json names trial #{sweeps[0].best_number}, but by the same rule the "
                f"trials now in trials/ put trial {best.label} first: best.json was written before some of them "
                "finished, or by a worker that saw only its own machine's trials.",
                "note",
            )
        )
    blocks.append(Para(identity))
    return blocks


def _finetuning_needed(best: Trial, prompt: HeldoutResult | None, min_score: float) -> str:
    score = best.heldout.score
    if prompt is None:
        return ("not scored on this split: the prompt baseline is disabled for this eval set, or (a sweep) it is "
                "scored on the reporting split only, where the verdict below is made.")
    if prompt.score >= min_score:
        return (
            f"No. Prompting alone scores {prompt.score:.3f} >= min_score {min_score:g}; the best adapter "
            f"scores {score:.3f}. Adapter (B) vs prompt baseline (A): "
            f"{paired(prompt.per_example, best.final_per_example).verdict()}."
        )
    if score >= min_score:
        return (
            f"Yes. Prompting alone scores {prompt.score:.3f} < min_score {min_score:g}; "
            f"the best adapter scores {score:.3f} and meets it."
        )
    return (
        f"Prompting alone scores {prompt.score:.3f} < min_score {min_score:g}, and no adapter meets it "
        f"either (best {score:.3f}): nothing here is ready to ship."
    )


def _forgetting(best: Trial, ranked: list[Trial]) -> str:
    deltas = best.results.final.regression_delta
    if not deltas:
        return "not checked: no regression benchmarks were scored (run with run_regression=true)."
    over = [f"{task} dropped {-d.delta:.3f} > limit {d.max_regression:.3f}" for task, d in deltas.items() if not d.ok]
    others = sum(not t.results.final.regression_ok for t in ranked)
    tail = f" {others} of {len(ranked)} completed trials exceeded a limit."
    if over:
        return "YES, the best adapter exceeded a regression limit: " + "; ".join(over) + "." + tail
    worst_task = min(deltas, key=lambda task: deltas[task].delta)
    worst = deltas[worst_task]
    return (
        f"no regression benchmark exceeded its limit for the best adapter (largest change "
        f"{worst.delta:+.3f} on {worst_task}, limit -{worst.max_regression:.3f})." + tail
    )


def trials_section(sweeps: list[Sweep], trials: list[Trial], ranked: list[Trial], multi: bool) -> list:
    params = param_names(sweeps, trials)
    tasks = regression_tasks(trials)
    stages = stage_names(trials)
    header = [*(("sweep", "trial") if multi else ("trial",)), *params, "state", "held-out ± stderr"]
    header += [f"Δ {task} ± stderr" for task in tasks]
    header += [f"after {stage.upper()}" for stage in stages] if len(stages) > 1 else []
    header += ["train time", "tokens/s", "peak memory", "est. cost"]
    best = ranked[0] if ranked else None
    rows = []
    for trial in trials:
        results = trial.results
        row = ([trial.sweep] if multi else []) + [f"{trial.record.number}" + (" (best)" if trial is best else "")]
        row += [fmt_value(trial.record.params.get(p)) for p in params]
        row.append(state_text(trial))
        row.append(f"{trial.heldout.score:.3f} ± {trial.heldout.stderr:.3f}" if results else "—")
        for task in tasks:
            delta = regression_delta(results, task) if results else None
            row.append(
                "—"
                if delta is None
                else f"{delta.delta:+.3f} ± {fmt_err(delta.stderr)}" + ("" if delta.ok else " OVER LIMIT")
            )
        if len(stages) > 1:
            for stage in stages:
                held = results.stages[stage].heldout if results and stage in results.stages else None
                row.append(f"{held.score:.3f} ± {held.stderr:.3f}" if held else "—")
        metrics = results.metrics if results else None
        row.append(fmt_duration(metrics.train_runtime_s) if metrics else "—")
        row.append(", ".join(f"{s}: {v:,.0f}" for s, v in metrics.tokens_per_s.items()) if metrics else "—")
        row.append(f"{metrics.peak_memory_mb:,.0f} MB" if metrics else "—")
        row.append(f"${trial.cost:.4f}" if trial.cost is not None else "—")
        rows.append(row)
    durations = [t.record.duration_s for t in trials if t.record.duration_s is not None]
    costs = [t.cost for t in trials if t.cost is not None]
    prices = sorted({f"${s.meta.price_per_gpu_hour:g}" for s in sweeps})
    return [
        Heading(2, "Trials"),
        Table(header, rows, "trials", wrap_columns=(header.index("state"),)),
        Para(
            f"{len(trials)} trials; trial time {fmt_duration(sum(durations))} in all; estimated cost "
            f"${sum(costs):.4f} at {', '.join(prices)} per GPU-hour (trial wall time x price, pruned and "
            "failed trials included). Held-out scores are the final stage's; Δ is adapter minus base on each "
            "regression benchmark (paired stderr)."
        ),
    ]


def plots_section(
    sweeps: list[Sweep], trials: list[Trial], ranked: list[Trial], images: dict[str, bytes]
) -> list:
    blocks: list = [Heading(2, "Plots")]
    params = param_names(sweeps, trials)
    sweep_names = [s.name for s in sweeps]
    if params:
        images["objective_vs_params.png"] = plot_objective_vs_params(trials, params, sweeps)
        blocks += [
            Image("objective_vs_params.png", "held-out score vs each swept parameter"),
            Para(
                "Held-out score (the objective) against each swept parameter. Filled: completed trials; "
                "hollow: pruned trials at their last intermediate score (on the pruning subset); failed "
                "trials are not shown."
            ),
        ]
    if ranked:
        images["score_vs_regression.png"] = plot_score_vs_regression(ranked, sweep_names)
        blocks += [
            Image("score_vs_regression.png", "held-out score vs worst regression delta, Pareto front"),
            Para(
                "Held-out score against the worst regression delta (adapter minus base, worst benchmark; "
                "0 when none was scored). The line joins the Pareto front (no other trial is better on "
                "both); red crosses exceed a regression limit."
            ),
        ]
    if any(t.loss for t in trials):
        images["loss_curves.png"] = plot_loss_curves(trials)
        blocks += [
            Image("loss_curves.png", "training loss curves of all trials"),
            Para(
                "Training loss per step for every trial, one panel per stage (pruned and failed trials "
                "up to where they stopped)."
            ),
        ]
    tasks = regression_tasks(trials)
    if tasks and ranked:
        best_trials = ranked[:BEST_TRIALS_PLOTTED]
        deltas = {t.label: {task: regression_delta(t.results, task) for task in tasks} for t in best_trials}
        limits = {task: d.max_regression for t in best_trials for task, d in t.results.final.regression_delta.items()}
        images["regression_deltas.png"] = plot_regression_deltas(deltas, tasks, limits)
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


def comparisons_section(ranked: list[Trial]) -> list:
    blocks: list = [Heading(2, "Paired comparisons")]
    if not ranked:
        return blocks + [Para("No trial completed: nothing to compare.", "warn")]
    best = ranked[0]
    baselines = best.results.baselines
    rows = []

    def add(what: str, a_name: str, a: list, b_name: str, b: list) -> None:
        comparison = paired(a, b)
        rows.append(
            [
                what,
                a_name,
                b_name,
                str(comparison.n),
                f"{comparison.mean_a:.3f}",
                f"{comparison.mean_b:.3f}",
                f"{100 * comparison.delta:+.1f} [{100 * comparison.ci_low:+.1f}, {100 * comparison.ci_high:+.1f}]",
                f"{comparison.wins}/{comparison.losses}/{comparison.ties}",
                comparison.verdict(),
            ]
        )

    best_name = f"trial {best.label}"
    add("held-out", "base zero-shot", baselines.zero_shot.per_example, best_name, best.final_per_example)
    if baselines.prompt_baseline:
        prompt_rows = baselines.prompt_baseline.per_example
        add("held-out", "base + prompt baseline", prompt_rows, best_name, best.final_per_example)
    if len(ranked) > 1:
        runner_up = ranked[1]
        add(
            "held-out",
            f"trial {runner_up.label} (runner-up)",
            runner_up.final_per_example,
            best_name,
            best.final_per_example,
        )
    sft, dpo = best.results.stages.get("sft"), best.results.stages.get("dpo")
    if sft and dpo:
        add(
            "held-out",
            f"{best_name} after SFT",
            sft.heldout.per_example,
            f"{best_name} after DPO",
            dpo.heldout.per_example,
        )
    final_regression = best.results.final_stage.regression
    for task, base_task in baselines.regression.items():
        if task in final_regression and base_task.per_example and final_regression[task].per_example:
            add(task, "base", base_task.per_example, best_name, final_regression[task].per_example)
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


def examples_section(ranked: list[Trial]) -> list:
    blocks: list = [Heading(2, "Fixed and broken examples")]
    if not ranked:
        return blocks + [Para("No trial completed: no outputs to compare.", "warn")]
    best = ranked[0]
    base_rows = best.results.baselines.zero_shot.per_example
    adapter_rows = best.final_per_example
    check_aligned(base_rows, adapter_rows, "base zero-shot", f"trial {best.label}")
    fixed = [(b, a) for b, a in zip(base_rows, adapter_rows, strict=True) if a.score > b.score]
    broken = [(b, a) for b, a in zip(base_rows, adapter_rows, strict=True) if a.score < b.score]
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
                        [a.source, a.prompt, fmt_reference(a.reference), fmt_output(b), fmt_output(a)]
                        for b, a in pairs[:MAX_EXAMPLES_SHOWN]
                    ],
                    "examples",
                )
            )
    return blocks


def data_card_section(sweeps: list[Sweep]) -> list:
    blocks: list = [Heading(2, "Data card")]
    cards = []  # (sweep, its best trial's results)
    for sweep in sweeps:
        complete = rank_trials(sweep.trials)
        cards.append((sweep, complete[0].results if complete else None))

    def row(label: str, value: Callable[[RunResults], object]) -> list[str]:
        return [label] + [fmt_value(value(r)) if r else "—" for _, r in cards]

    rows = [
        row("training file", lambda r: r.data.sft_file),
        row("training rows read", lambda r: r.data.sft_rows),
        row("training examples used", lambda r: r.data.sft_examples),
        row("training examples truncated", lambda r: r.data.sft_truncated),
        row("duplicates removed", lambda r: r.data.duplicates_removed),
    ]
    if any(r and r.data.preference_file is not None for _, r in cards):  # a DPO stage ran
        rows += [
            row("preference duplicates removed", lambda r: r.data.preference_duplicates_removed),
            row("preference file", lambda r: r.data.preference_file),
            row("preference pairs", lambda r: r.data.preference_pairs),
            row("preference rows", lambda r: r.data.preference_rows),
        ]
    rows.append(["held-out examples"] + [str(r.eval_set.n) if r else "—" for _, r in cards])
    for task in dict.fromkeys(t for _, r in cards if r for t in r.baselines.regression):
        docs = [r.baselines.regression[task].n if r and task in r.baselines.regression else None for _, r in cards]
        rows.append([f"regression docs: {task}", *map(fmt_value, docs)])
    rows.append(["leakage check"] + [leakage_text(r.data.leakage) if r else "—" for _, r in cards])
    blocks.append(Table(["", *[s.name for s, _ in cards]], rows, wrap_columns=tuple(range(1, len(cards) + 1))))
    for sweep, results in cards:
        if results and results.data.leakage.examples:
            blocks.append(
                Pre(
                    "\n".join(fmt_reference(e) for e in results.data.leakage.examples),
                    summary=f"Overlapping examples found by the leakage check ({sweep.name})",
                )
            )
    samples = {}
    for sweep, results in cards:
        if results and results.data.chat_template_sample:
            samples.setdefault(results.data.chat_template_sample, []).append(sweep.name)
    for sample, names in samples.items():
        blocks.append(
            Heading(3, "Decoded chat-template sample" + (f" ({', '.join(names)})" if len(cards) > 1 else ""))
        )
        blocks.append(Para("One training example as the model sees it; the loss is on the ⟦…⟧ spans only."))
        blocks.append(Pre(sample))
    return blocks


def reproduce_section(sweeps: list[Sweep], ranked: list[Trial]) -> list:
    import yaml

    blocks: list = [Heading(2, "Reproduce")]
    if ranked:
        best = ranked[0]
        metrics = best.results.metrics
        blocks += [
            Para(f"Re-run the best trial ({best.label}) alone:"),
            Pre(best.record.command or "(no command recorded)"),
            Pre(
                yaml.safe_dump(best.results.config, sort_keys=False, allow_unicode=True).rstrip(),
                summary=f"Its resolved config (git revision {metrics.git_revision}, device "
                f"{metrics.device}, seed {metrics.seed})",
            ),
            Para("Library versions: " + ", ".join(f"{k} {v}" for k, v in metrics.library_versions.items()) + "."),
        ]
    for sweep in sweeps:
        blocks += [Para(f"Re-run sweep {sweep.name}:"), Pre(sweep.meta.command)]
    dirs = " ".join(f"{Path(s.directory).parent.name}/{Path(s.directory).name}" for s in sweeps)
    blocks += [
        Para("Rebuild this report (reads artifacts only, loads no model):"),
        Pre(f"python -m harness.report {dirs}"),
    ]
    return blocks
