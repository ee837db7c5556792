"""The reporting split: where a sweep's verdicts are made, on examples no selection has touched.

    verdicts = judge_on_reporting_split(sweep_dir, trial_records, cfg)   # writes verdicts.json; None: no trial

A sweep trains and ranks its trials on the eval set's selection split (`harness.selection.rank_key`). Choosing
the best of N on those examples flatters its score (winner's curse), so after the last trial the few trials the
verdicts need (`selection.reporting_candidates`: the best, the runner-up and a cheaper alternative) are scored
once on the reporting split, on one shared base model (harness.worker.WorkerBase), with the base-model baseline that "was
fine-tuning needed?" reads (the prompt baseline; zero-shot when it is disabled) on the same examples:

    trials/<NNN>/reporting/results.json    a results record (kind reporting_evaluation, eval.split=reporting)
    trials/<NNN>/reporting/samples_reporting.jsonl
    verdicts.json                          SweepVerdicts: min_score, was fine-tuning needed, best vs runner-up,
                                           the cheaper alternative, each in three states, Holm-adjusted

An sft_dpo sweep with a shared SFT (harness.shared_sft) also scores that SFT adapter (`sft/reporting/`) and every
complete DPO trial on the reporting split, and adds `SweepVerdicts.dpo`: per trial, after DPO vs after SFT
(paired, Holm-adjusted over the trials), and for the trial chosen on the selection split, "does DPO improve on
this SFT?" (yes / no / inconclusive, one test).

Regression benchmarks do not depend on the split: a candidate's regression scores are its trial's (same adapter,
same benchmark data) and the base model's are its trial's baselines', reused instead of running lm-eval again.
Resumable: a reporting evaluation whose adapter and eval set identities match is read, not recomputed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

from harness.records import (
    DpoTrialVerdict,
    DpoVerdicts,
    RecordError,
    ReportingScore,
    RunResults,
    StageRecord,
    SweepVerdicts,
    TrialRecord,
    Verdict,
    read_record,
    to_json,
    write_record,
)
from harness.selection import rank_key, reporting_candidates
from harness.stats import paired_mde
from harness.verdicts import (
    cheaper_verdict,
    finetuning_verdict,
    holm_adjust,
    min_score_verdict,
    paired_verdict,
)
from harness.worker import WorkerBase

log = logging.getLogger(__name__)
ALPHA = 0.05


def judge_on_reporting_split(sweep_dir: Path, records: list[TrialRecord], margin: float,
                             sft_dir: Path | None = None) -> SweepVerdicts | None:
    """Score the candidates on the reporting split and write verdicts.json (None when no trial completed).
    `sft_dir`: the sweep's shared SFT run, which every trial's DPO started from (adds the DPO verdicts)."""
    completed = []
    for record in records:
        results_path = Path(record.trial_dir) / "results.json"
        if record.state == "COMPLETE" and results_path.is_file():
            completed.append((record, read_record(RunResults, results_path)))
    if not completed:
        return None
    best, runner_up, cheaper = reporting_picks(completed)
    scored: dict[int, tuple[TrialRecord, RunResults, RunResults]] = {}
    # One base model for all of these evaluations (each takes its adapter off again): a load and NF4 quantization
    # saved per candidate, ~2 s for SmolLM2 with a warm page cache, minutes for a 7B on a GPU.
    bases = WorkerBase(for_training=False)
    try:
        for record, results in (c for c in (best, runner_up, cheaper) if c is not None):
            if record.number not in scored:
                scored[record.number] = (record, results, evaluate_reporting(Path(record.trial_dir), results, bases))
        verdicts = decide(scored, best[0].number, runner_up[0].number if runner_up else None,
                          cheaper[0].number if cheaper else None, margin)
        if sft_dir is not None:
            trials = sorted(completed, key=lambda pair: pair[0].number)
            verdicts = replace(verdicts, dpo=judge_dpo(sft_dir, trials, best[0].number, bases))
    finally:
        _release(bases)
    write_record(sweep_dir / "verdicts.json", verdicts)
    return verdicts


Pick = tuple[TrialRecord, RunResults]


def reporting_picks(completed: list[Pick]) -> tuple[Pick, Pick | None, Pick | None]:
    """(best, runner-up, cheaper alternative) of the completed trials and their selection-split results, by
    `selection.rank_key` (the rule behind best.json): the trials the verdicts are made on."""
    ranked = [(pair, pair[1]) for pair in sorted(completed, key=lambda pair: pair[0].number)]
    ranked.sort(key=lambda item: rank_key(item[1], item[0][0].feasible))  # stable: lowest number first on ties
    return reporting_candidates(ranked)


def decide(scored: dict[int, tuple[TrialRecord, RunResults, RunResults]], best: int, runner_up: int | None,
           cheaper: int | None, margin: float) -> SweepVerdicts:
    """The verdicts from reporting-split scores only (`scored`: number -> (trial, selection results, reporting
    results)). Several paired comparisons feed one recommendation: their p-values are Holm-adjusted together."""
    def reporting_scores(number: int) -> list[float]:
        return scored[number][2].final_stage.heldout.scores

    def name(number: int) -> str:
        return f"trial {number} {_params(scored[number][0])}"

    # (A name, A scores, B name, B scores) of each comparison between trials
    versus_cheaper = (name(cheaper), reporting_scores(cheaper), name(best), reporting_scores(best)) \
        if cheaper is not None else None
    versus_runner_up = (name(runner_up), reporting_scores(runner_up), name(best), reporting_scores(best)) \
        if runner_up is not None else None
    comparisons = {q: pair for q, pair in (("cheaper_alternative", versus_cheaper),
                                           ("best_vs_runner_up", versus_runner_up)) if pair is not None}
    # One decision (which trial to ship) rests on these comparisons between trials: Holm-adjust them together.
    raw = {q: paired_verdict(q, *pair, alpha=ALPHA).p_value for q, pair in comparisons.items()}
    adjusted = holm_adjust(raw) if len(raw) > 1 else {}

    verdicts, reasons = [], []
    choice = None
    if versus_cheaper is not None:
        a_name, a, b_name, b = versus_cheaper
        choice = cheaper_verdict(b_name, b, a_name, a, margin, ALPHA, adjusted.get("cheaper_alternative"))
        reasons.append(choice.text)
    else:
        reasons.append(f"no completed trial within its limits is cheaper than the best ({name(best)})")
    recommended = cheaper if choice is not None and choice.state == "cheaper" else best

    # min_score and "was fine-tuning needed?" concern the adapter to ship, against the base model's baselines on
    # the same reporting examples.
    reporting = scored[recommended][2]
    adapter = reporting.final_stage.heldout.scores
    verdicts.append(min_score_verdict(adapter, reporting.eval_set.min_score))
    baselines = reporting.baselines
    prompt = (baselines.prompt_baseline or baselines.zero_shot) if baselines else None
    if prompt is not None:
        verdicts.append(finetuning_verdict(prompt.scores, adapter, reporting.eval_set.min_score, ALPHA))
    if versus_runner_up is not None:
        verdicts.append(paired_verdict("best_vs_runner_up", *versus_runner_up, alpha=ALPHA,
                                       p_adjusted=adjusted.get("best_vs_runner_up")))
    if choice is not None:
        verdicts.append(choice)
    scores = []
    for number in dict.fromkeys([best, runner_up, cheaper]):
        if number is None:
            continue
        _, selection, reporting = scored[number]
        scores.append(ReportingScore(
            number=number, results=str(Path(reporting.run_dir) / "results.json"),
            selection=selection.final.heldout, reporting=reporting.final.heldout,
            optimism_gap=selection.final.heldout.score - reporting.final.heldout.score,
        ))
    return SweepVerdicts(
        best=best, recommended=recommended, reasons=reasons, scores=scores, verdicts=verdicts,
        correction=(f"Holm over the {len(adjusted)} comparisons between trials that decide which to ship "
                    f"({', '.join(adjusted)}), at alpha {ALPHA:g}; was fine-tuning needed is one comparison, "
                    "unadjusted" if adjusted else "none: at most one comparison per decision"),
        equivalence_margin=margin, alpha=ALPHA,
    )


def judge_dpo(sft_dir: Path, trials: list[tuple[TrialRecord, RunResults]], chosen: int,
              bases: WorkerBase | None = None) -> DpoVerdicts:
    """After SFT vs after DPO on the reporting split: the shared SFT adapter and every complete DPO trial."""
    sft = read_record(RunResults, sft_dir / "results.json")
    sft_reporting = evaluate_reporting(sft_dir, sft, bases)
    sft_scores = sft_reporting.final_stage.heldout.scores
    sources = [row.source for row in sft_reporting.final_stage.heldout.per_example]
    evaluated = {}
    for record, results in trials:
        started_from = results.stages["sft"].adapter_hash
        if started_from != sft.adapter.hash:
            raise ValueError(f"trial {record.number} started from SFT adapter {started_from}, not the shared SFT's "
                             f"{sft.adapter.hash} ({sft_dir}): its DPO cannot be compared with that SFT")
        reporting = evaluate_reporting(Path(record.trial_dir), results, bases)
        if [row.source for row in reporting.final_stage.heldout.per_example] != sources:
            raise ValueError(f"trial {record.number}'s reporting examples differ from the shared SFT's")
        evaluated[record.number] = (record, reporting)

    def versus(question: str, number: int, p_adjusted: float | None = None) -> Verdict:
        scores = evaluated[number][1].final_stage.heldout.scores
        return paired_verdict(question, "after SFT", sft_scores, f"after DPO (trial {number})", scores, ALPHA,
                              p_adjusted)

    # Each trial's "did DPO change anything" is one of a family: Holm over the trials. The sweep's question is one
    # test, of the trial chosen on the selection split, unadjusted.
    raw = {str(number): versus("dpo_vs_sft", number).p_value for number in evaluated}
    adjusted = holm_adjust(raw) if len(raw) > 1 else {}
    per_trial = []
    for number, (record, reporting) in evaluated.items():
        verdict = versus("dpo_vs_sft", number, adjusted.get(str(number)))
        per_trial.append(DpoTrialVerdict(
            number=number, params=record.params, results=str(Path(reporting.run_dir) / "results.json"),
            reporting=reporting.final.heldout, verdict=verdict,
            detectable=paired_mde(sft_scores, reporting.final_stage.heldout.scores, ALPHA)))
    chosen_verdict = versus("dpo_improves_sft", chosen)
    state = {"better": "yes", "worse": "no"}.get(chosen_verdict.state, "inconclusive")
    answer = {"yes": f"yes, DPO (trial {chosen}) improves on this SFT",
              "no": f"no, DPO (trial {chosen}) is worse than this SFT",
              "inconclusive": f"inconclusive, DPO (trial {chosen}) is not distinguishable from this SFT"}[state]
    chosen_verdict = replace(chosen_verdict, state=state,
                             text=f"{answer}: {chosen_verdict.text.split(': ', 1)[1]}")
    correction = (f"per trial: Holm over the {len(adjusted)} DPO trials' comparisons with the SFT, at alpha {ALPHA:g}; "
                  if adjusted else "per trial: one trial, unadjusted; ")
    correction += "the sweep's verdict is one comparison (the trial chosen on the selection split), unadjusted"
    return DpoVerdicts(sft_results=str(Path(sft_reporting.run_dir) / "results.json"), sft_adapter_hash=sft.adapter.hash,
                       sft_selection=sft.final.heldout, sft_reporting=sft_reporting.final.heldout, trials=per_trial,
                       chosen=chosen, verdict=chosen_verdict, correction=correction)


def dpo_summary_lines(dpo: DpoVerdicts) -> list[str]:
    """The sweep's console lines for the DPO verdicts."""
    sft = dpo.sft_reporting
    lines = [(f"  shared SFT: selection {dpo.sft_selection.score:.3f}, reporting {sft.score:.3f} "
              f"[{sft.ci_low:.3f}, {sft.ci_high:.3f}]")]
    for trial in dpo.trials:
        v = trial.verdict
        p = f"p={v.p_value:.3g}" + (f", Holm {v.p_adjusted:.3g}" if v.p_adjusted is not None else "")
        lines.append(f"  trial {trial.number} after DPO {trial.reporting.score:.3f} vs after SFT {sft.score:.3f}: "
                     f"{100 * v.estimate:+.1f} points [{100 * v.ci_low:+.1f}, {100 * v.ci_high:+.1f}], {p}: "
                     f"{v.state} (a true difference of {100 * trial.detectable:.1f} points is detected with 80% power here"
                     + (f"; about {v.examples_to_decide} examples would decide this one)" if v.examples_to_decide
                        else ")"))
    lines.append(f"  does DPO improve on this SFT? {dpo.verdict.text}")
    return lines


def evaluate_reporting(trial_dir: Path, results: RunResults, bases: WorkerBase | None = None) -> RunResults:
    """The trial's adapter scored on the reporting split, with the base model's baselines on it: the one the
    "was fine-tuning needed?" verdict reads (harness.baselines.verdict_baseline), computed once per sweep.
    `bases`: the base model shared by a sweep's reporting evaluations (a fresh one by default)."""
    from harness.baselines import get_baselines, verdict_baseline
    from harness.evaluate import check_adapter_active, evaluate_heldout
    from harness.model import adapter_hash, load_adapter, resolve_device
    from harness.run import build_results, prepare_inputs, seed_everything

    started = time.perf_counter()
    selection_cfg = results.run_config()
    cfg = replace(selection_cfg, eval=replace(selection_cfg.eval, split="reporting"), sweep=None)
    out_dir = trial_dir / "reporting"
    inputs = prepare_inputs(cfg)  # the frozen eval set's reporting split, leakage-checked
    adapter_dir = trial_dir / "adapter"
    reused = _reusable(out_dir / "results.json", inputs.eval_set_hash, adapter_hash(adapter_dir))
    if reused is not None:
        return reused
    own = bases is None
    bases = bases or WorkerBase(for_training=False)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.train.device)
    base = bases.base_for(cfg)
    fewshot_pool = inputs.sft.conversations if inputs.sft else []
    known = results.baselines.regression if results.baselines else None
    baselines = get_baselines(base, cfg, inputs.eval_set_hash, inputs.heldout, fewshot_pool, known_regression=known,
                              which=verdict_baseline(cfg))
    model = load_adapter(base.model, adapter_dir)
    try:
        canary = check_adapter_active(model, base.tokenizer, inputs.heldout[: cfg.eval.canary_examples])
        heldout = evaluate_heldout(model, base.tokenizer, cfg.eval, inputs.heldout)
    finally:
        model.unload()  # the base as loaded again, for the next candidate
    from harness.artifacts import write_jsonl_atomic

    write_jsonl_atomic(out_dir / "samples_reporting.jsonl", [to_json(r) for r in heldout.per_example])
    stage = StageRecord(heldout=heldout, regression=results.final_stage.regression)
    record = build_results(
        cfg, kind="reporting_evaluation", run_dir=out_dir, base=base, eval_set_hash=inputs.eval_set_hash,
        stages={results.final.stage: stage}, canary=canary, adapter_dir=adapter_dir, device=device,
        seconds=time.perf_counter() - started, data=results.data, baselines=baselines,
    )
    write_record(out_dir / "results.json", record)
    del model, base
    if own:
        _release(bases)
    return record


def _release(bases: WorkerBase) -> None:
    from harness.memory import release_trial_memory

    device = bases.key[2] if bases.key else "cpu"
    bases.close()
    release_trial_memory(device)


def _reusable(path: Path, eval_set_hash: str, adapter_sha: str) -> RunResults | None:
    if not path.is_file():
        return None
    try:
        record = read_record(RunResults, path)
    except RecordError:
        return None
    if record.eval_set.hash == eval_set_hash and record.adapter.hash == adapter_sha:
        return record
    return None


def _params(record: TrialRecord) -> str:
    return " ".join(f"{k}={v}" for k, v in record.params.items())
