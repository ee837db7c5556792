"""One run end to end: eval set -> data checks -> base model -> baselines -> SFT [-> DPO] -> scores -> artifacts.

    results = run_experiment(cfg, run_dir)

Every input is validated before anything is written to `run_dir` (bad data raises `DataError` naming the file
and line). The run directory then holds: `config.yaml` (resolved), `chat_template_sample.txt`, `loss.jsonl`,
`adapter/` (PEFT safetensors), `adapter_sft/` (SFT then DPO: the SFT adapter, DPO's reference),
`samples_<stage>.jsonl`, `metrics.json` and, written last, `results.json`. A directory without `results.json` is an
unfinished run.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from omegaconf import OmegaConf
from peft import LoraConfig

from harness import validate
from harness.artifacts import (
    git_revision,
    library_versions,
    replace_dir_atomic,
    write_json_atomic,
    write_jsonl_atomic,
    write_text_atomic,
)
from harness.baselines import HELDOUT_BASELINES, get_baselines
from harness.config import RunConfig
from harness.data import (
    Message,
    PreferenceData,
    SFTData,
    TokenizedExample,
    check_chat_template,
    load_preference_data,
    load_sft_data,
    render_loss_sample,
    tokenize_sft,
)
from harness.dpo import start_from_adapter, train_dpo
from harness.evalset import verify_frozen
from harness.evaluate import (
    HeldoutExample,
    check_adapter_active,
    evaluate_heldout,
    load_eval_splits,
    load_heldout,
)
from harness.leakage import LeakageReport, check_leakage
from harness.model import (
    BaseModel,
    adapter_hash,
    load_base_model,
    lora_adapter,
    resolve_device,
)
from harness.records import (
    AdapterIdentity,
    BaselineScores,
    CanaryResult,
    DataCard,
    DpoReference,
    EvalSetIdentity,
    FinalScores,
    ModelIdentity,
    RegressionDelta,
    RegressionScore,
    RunMetrics,
    RunResults,
    StageRecord,
    TokenizerIdentity,
    TrainingStats,
    to_json,
    write_record,
)
from harness.sft import train_sft
from harness.trainer import StageResult, peak_memory_mb
from harness.validate import load_tokenizer_checked

log = logging.getLogger(__name__)


@dataclass
class PreparedInputs:
    """Everything validated before the first byte is written or the first weight is loaded."""

    eval_set_hash: str
    heldout: list[HeldoutExample]
    sft: SFTData | None
    sft_examples: list[TokenizedExample]
    leakage: LeakageReport
    chat_template_sample: str
    tokenizer: object
    preference: PreferenceData | None = None  # DPO's validated preference pairs
    card: DataCard | None = None  # harness.validate.data_card, printed before any weight loads


def prepare_inputs(cfg: RunConfig, show_card: bool = True) -> PreparedInputs:
    """Steps 1-3 of a run: frozen eval set, training data, chat template and leakage checks."""
    # 1. Eval set first: nothing trains without a frozen, non-empty eval set.
    eval_set_hash = verify_frozen(cfg.eval)
    heldout = load_heldout(cfg.eval)

    # 2. Training data, validated row by row (errors name file:line).
    sft = load_sft_data(cfg.data) if "sft" in cfg.train.stages else None
    # data.preference_source=mined: DPO's pairs are mined after SFT (harness.onpolicy); the pool is checked below
    mined = cfg.data.preference_source == "mined"
    preference = load_preference_data(cfg.data) if "dpo" in cfg.train.stages and not mined else None
    tokenizer = load_tokenizer_checked(cfg)  # a missing model path or hub id: a ValueError naming the key

    # 3. Chat template and leakage checks, before any model weight is loaded.
    conversations = sft.conversations if sft else []
    check_chat_template(tokenizer, conversations)
    if preference:
        check_chat_template(tokenizer, preference.conversations())
    sft_examples = tokenize_sft(tokenizer, conversations, cfg.train.sft.max_length) if sft else []
    sample = render_loss_sample(tokenizer, sft_examples[0]) if sft_examples else ""
    train_prompts = [(c.source, _prompt_text(c.messages)) for c in conversations]
    train_prompts += [(p.source, _prompt_text(p.prompt_messages)) for p in (preference.pairs if preference else [])]
    # Leakage is checked against every split, not only the one this run scores.
    every_split = [e for rows in load_eval_splits(cfg.eval).values() for e in rows]
    heldout_prompts = [(e.source, _prompt_text(e.messages)) for e in every_split]
    leakage = check_leakage(train_prompts, heldout_prompts, cfg.eval.leakage)
    if mined:
        from harness.onpolicy import check_pool

        check_pool(cfg)
    card = validate.data_card(cfg, sft, sft_examples, preference, leakage, sample, tokenizer)
    if show_card:
        print(validate.format_data_card(card), flush=True)
    return PreparedInputs(eval_set_hash, heldout, sft, sft_examples, leakage, sample, tokenizer, preference, card)


def run_experiment(
    cfg: RunConfig, run_dir: Path, inputs: PreparedInputs | None = None, callbacks=None, progress: bool = True,
    base: BaseModel | None = None, shared_sft=None, baselines: tuple[str, ...] = HELDOUT_BASELINES,
) -> RunResults:
    """Train and score one configuration; `progress=False` silences per-step output (sweeps print one line).

    `base`: a base model already loaded for `cfg` (`load_run_base`; a sweep worker shares one across its trials,
    harness.worker). The run puts a fresh adapter on it and takes it off again at the end, however the run ends.
    `shared_sft`: an SFT trained once for a whole sweep (harness.shared_sft.SftStart): the run starts from its
    adapter and records its SFT stage instead of training one, and DPO's reference is that adapter.
    `baselines`: the held-out baselines to score (harness.baselines.get_baselines); a sweep's trials, on the
    selection split where no verdict reads one, ask for zero-shot only (the prompt baseline is scored once, on the
    reporting split: harness.reporting).
    """
    started = time.perf_counter()
    seed_everything(cfg.seed)
    inputs = inputs or prepare_inputs(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    if inputs.chat_template_sample:
        write_text_atomic(run_dir / "chat_template_sample.txt", inputs.chat_template_sample + "\n")
        log.info("Decoded training example (loss on ⟦…⟧ spans only):\n%s", inputs.chat_template_sample)

    # 4. Base model (NF4 where configured), then baselines, cached per (model, eval set hash).
    device = resolve_device(cfg.train.device)
    gradient_checkpointing = gradient_checkpointing_for(cfg, device)
    base = base or load_run_base(cfg)
    fewshot_pool = inputs.sft.conversations if inputs.sft else []
    baselines = get_baselines(base, cfg, inputs.eval_set_hash, inputs.heldout, fewshot_pool, which=baselines)

    # 5. Attach a fresh LoRA adapter and train each stage, scoring after each. Seeded right here: whatever ran
    # before (baselines computed or read from the cache, lm-eval's reseeding, earlier trials) must not decide the
    # initial adapter. The trainers seed again from the same seed (dropout, data order).
    seed_everything(cfg.seed)
    with lora_adapter(base.model, cfg.lora) as model:
        stages: dict[str, StageRecord] = {}
        loss_log: list[dict] = []
        if "sft" in cfg.train.stages and shared_sft is not None:
            start_from_adapter(model, shared_sft.adapter)
            stages["sft"] = shared_sft.stage
        elif "sft" in cfg.train.stages:
            sft_result = train_sft(
                model, base.tokenizer, inputs.sft_examples, cfg.train.sft, run_dir,
                seed=cfg.seed, device=device, compute_dtype=base.compute_dtype,
                gradient_checkpointing=gradient_checkpointing, callbacks=callbacks, progress=progress,
            )
            loss_log += sft_result.loss_log
            stages[sft_result.stage] = _score_stage(model, base, cfg, inputs.heldout, sft_result, run_dir)
        if "dpo" in cfg.train.stages:
            # The reference is the policy DPO starts from: after SFT the SFT adapter (saved, and loaded again frozen),
            # otherwise the base model.
            reference_adapter = None
            if shared_sft is not None:
                reference_adapter = shared_sft.adapter
            elif "sft" in cfg.train.stages:
                reference_adapter = _save_adapter(model, run_dir, "adapter_sft")
            if inputs.preference is None:  # data.preference_source=mined: pairs from this SFT policy's errors
                from harness.onpolicy import mine_for_run

                inputs = mine_for_run(cfg, inputs, model, base.tokenizer, reference_adapter, run_dir / "pairs")
            dpo_result = train_dpo(
                model, base.tokenizer, inputs.preference.pairs, cfg.train.dpo, run_dir,
                seed=cfg.seed, device=device, compute_dtype=base.compute_dtype,
                gradient_checkpointing=gradient_checkpointing, reference_adapter=reference_adapter,
                previous_loss_log=loss_log, callbacks=callbacks, progress=progress,
            )
            loss_log += dpo_result.loss_log
            stages[dpo_result.stage] = dpo_stage = _score_stage(model, base, cfg, inputs.heldout, dpo_result, run_dir)
            dpo_stage.reference = DpoReference(
                policy="sft" if reference_adapter else "base",
                adapter=str(reference_adapter) if reference_adapter else None,
                adapter_hash=adapter_hash(reference_adapter) if reference_adapter else None,
            )

        # 6. Prove the adapter is active, save it, write the results record last.
        canary = check_adapter_active(model, base.tokenizer, inputs.heldout[: cfg.eval.canary_examples])
        adapter_dir = _save_adapter(model, run_dir)
        results = build_results(
            cfg, kind="run", run_dir=run_dir, base=base, eval_set_hash=inputs.eval_set_hash, stages=stages,
            canary=canary, adapter_dir=adapter_dir, device=device, seconds=time.perf_counter() - started,
            data=data_card(inputs), baselines=baselines,
        )
    write_json_atomic(run_dir / "metrics.json", to_json(results.metrics))
    write_record(run_dir / "results.json", results)
    return results


def load_run_base(cfg: RunConfig) -> BaseModel:
    """The frozen base model a run of `cfg` trains on (NF4 where configured), ready for a LoRA adapter."""
    device = resolve_device(cfg.train.device)
    return load_base_model(cfg.model, cfg.quant, device, gradient_checkpointing_for(cfg, device))


def gradient_checkpointing_for(cfg: RunConfig, device: str) -> bool:
    """train.gradient_checkpointing, or by default on for GPU (memory) and off for CPU (speed)."""
    if cfg.train.gradient_checkpointing is None:
        return device == "cuda"
    return cfg.train.gradient_checkpointing


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (every device) from the run's seed."""
    from transformers import set_seed

    set_seed(seed)


def reproducibility_note(device: str, seed: int) -> str:
    """What a rerun of the same command reproduces, as the results record states it."""
    import torch

    if device == "cpu":
        return (f"bit-identical on cpu: the same command with seed {seed} and {torch.get_num_threads()} torch threads "
                "gives the same adapter tensors and per-example outputs, cold or warm cache, alone or after other "
                "trials; another thread count may change float rounding")
    return (f"not bit-identical on {device}: seed {seed} fixes the initial adapter, dropout and data order, but GPU "
            "kernels (cuBLAS reductions, attention and backward atomics) are not deterministic, so weights and "
            "scores agree only up to rounding noise")


def _score_stage(model, base: BaseModel, cfg: RunConfig, heldout, stage_result: StageResult, run_dir: Path) -> StageRecord:
    heldout_result = evaluate_heldout(model, base.tokenizer, cfg.eval, heldout)
    write_jsonl_atomic(run_dir / f"samples_{stage_result.stage}.jsonl", [to_json(r) for r in heldout_result.per_example])
    regression = {}
    if cfg.run_regression and cfg.eval.regression:
        from harness.regression import score_regression

        regression = score_regression(model, base.tokenizer, cfg.eval)
    log.info(
        "after %s: held-out %.3f [%.3f, %.3f] (n=%d)",
        stage_result.stage, heldout_result.score, heldout_result.ci_low, heldout_result.ci_high, heldout_result.n,
    )
    return StageRecord(heldout=heldout_result, regression=regression, train=training_stats(stage_result))


def training_stats(stage_result: StageResult) -> TrainingStats:
    return TrainingStats(**{f.name: getattr(stage_result, f.name) for f in fields(TrainingStats)})


def _save_adapter(model, run_dir: Path, name: str = "adapter") -> Path:
    """PEFT format (adapter_config.json + adapter_model.safetensors), loadable by PeftModel and vLLM."""
    final = run_dir / name
    staging = run_dir / f".{name}.tmp"
    model.save_pretrained(staging, safe_serialization=True)
    replace_dir_atomic(staging, final)
    return final


def build_results(
    cfg: RunConfig, *, kind: str, run_dir: Path | None, base: BaseModel, eval_set_hash: str,
    stages: dict[str, StageRecord], canary: CanaryResult, adapter_dir: Path, device: str, seconds: float,
    data: DataCard | None = None, baselines: BaselineScores | None = None,
) -> RunResults:
    """The results record of an evaluated adapter: the one builder for runs, sweep trials and gate evaluations."""
    final = final_scores(cfg, list(stages)[-1], stages, baselines)
    trained = {name: stage.train for name, stage in stages.items() if stage.train is not None}
    adapter_config = LoraConfig.from_pretrained(str(adapter_dir))
    return RunResults(
        status="complete",
        kind=kind,
        run_dir=str(run_dir) if run_dir is not None else None,
        config=OmegaConf.to_container(OmegaConf.structured(cfg)),
        eval_set=EvalSetIdentity(name=cfg.eval.name, hash=eval_set_hash, n=final.heldout.n,
                                 min_score=cfg.eval.min_score, split=cfg.eval.split),
        model=ModelIdentity(id=base.model_id, hash=base.model_hash, quantized=base.quantized,
                            compute_dtype=str(base.compute_dtype), attn_implementation=base.attn_implementation),
        tokenizer=tokenizer_identity(base.tokenizer),
        adapter=AdapterIdentity(path=str(adapter_dir), hash=adapter_hash(adapter_dir), r=adapter_config.r,
                                alpha=float(adapter_config.lora_alpha),
                                target_modules=_target_modules(adapter_config.target_modules)),
        data=data,
        baselines=baselines,
        stages=stages,
        final=final,
        canary=canary,
        metrics=RunMetrics(
            train_runtime_s=sum(m.train_runtime_s for m in trained.values()),
            tokens_per_s={name: m.tokens_per_s for name, m in trained.items()},
            peak_memory_mb=peak_memory_mb(device),
            device=device,
            compute_dtype=str(base.compute_dtype),
            library_versions=library_versions(),
            seed=cfg.seed,
            torch_threads=torch.get_num_threads(),
            reproducibility=reproducibility_note(device, cfg.seed),
            git_revision=git_revision(),
            wall_time_s=seconds,
            stages=trained,
        ),
    )


def final_scores(cfg: RunConfig, stage: str, stages: dict[str, StageRecord],
                 baselines: BaselineScores | None) -> FinalScores:
    """The headline of a run: stage `stage`'s scores, and its verdicts against min_score and the base model."""
    final = stages[stage]
    deltas = regression_deltas(baselines.regression if baselines else {}, final.regression, cfg)
    return FinalScores(
        stage=stage,
        heldout=final.heldout.summary(),
        meets_min_score=final.heldout.score >= cfg.eval.min_score,
        regression={task: r.summary() for task, r in final.regression.items()},
        regression_delta=deltas,
        worst_regression=max((-d.delta for d in deltas.values()), default=0.0),
        regression_ok=all(d.ok for d in deltas.values()),
    )


def data_card(inputs: PreparedInputs) -> DataCard:
    if inputs.card is not None:
        return inputs.card
    preference = inputs.preference
    return DataCard(
        sft_file=inputs.sft.path if inputs.sft else None,
        sft_rows=inputs.sft.rows_read if inputs.sft else 0,
        sft_examples=len(inputs.sft_examples),
        sft_truncated=sum(e.truncated for e in inputs.sft_examples),
        duplicates_removed=inputs.sft.duplicates_removed if inputs.sft else 0,
        leakage=inputs.leakage,
        chat_template_sample=inputs.chat_template_sample,
        preference_file=preference.path if preference else None,
        preference_rows=preference.rows_read if preference else None,
        preference_pairs=len(preference.pairs) if preference else None,
        preference_duplicates_removed=preference.duplicates_removed if preference else None,
    )


def tokenizer_identity(tokenizer) -> TokenizerIdentity:
    template = tokenizer.chat_template or ""
    return TokenizerIdentity(name=type(tokenizer).__name__, vocab_size=len(tokenizer),
                             chat_template_sha256=hashlib.sha256(template.encode()).hexdigest()[:16])


def _target_modules(targets) -> list[str] | str:
    # PEFT holds target_modules as a set (saved as a list in arbitrary order), or as one string ("all-linear").
    return targets if isinstance(targets, str) else sorted(targets)


def regression_deltas(base_scores: dict[str, RegressionScore], adapter_scores: dict[str, RegressionScore],
                      cfg: RunConfig) -> dict[str, RegressionDelta]:
    """Per benchmark: adapter - base, and whether the drop stays within its max_regression."""
    limits = {b.task: b.max_regression for b in cfg.eval.regression}
    deltas = {}
    for task, adapter in adapter_scores.items():
        if task not in base_scores:
            continue
        delta = adapter.score - base_scores[task].score
        limit = limits.get(task, 0.0)
        deltas[task] = RegressionDelta(base=base_scores[task].score, adapter=adapter.score, delta=delta,
                                       max_regression=limit, ok=-delta <= limit)
    return deltas


def summary_table(results: RunResults) -> str:
    """The short table `python -m harness` prints at the end of a run."""
    def fmt(result) -> str:
        if not result:
            return "-"
        return f"{result.score:.3f} [{result.ci_low:.3f}, {result.ci_high:.3f}]"

    base, eval_set = results.baselines, results.eval_set
    lines = [
        (f"eval set {eval_set.name}, {eval_set.split} split (hash {eval_set.hash}, n={eval_set.n}, "
         f"min_score {eval_set.min_score}), base {results.model.id}"),
        f"{'model':<34}{'held-out score [95% CI]':<28}",
        f"{'base zero-shot' + (' (cached)' if base.cached else ''):<34}{fmt(base.zero_shot):<28}",
        f"{'base + prompt baseline':<34}{fmt(base.prompt_baseline):<28}",
    ]
    for name, stage in results.stages.items():
        lines.append(f"{'adapter after ' + name:<34}{fmt(stage.heldout):<28}")
    for task, delta in results.final.regression_delta.items():
        lines.append(f"regression {task}: base {delta.base:.3f} -> adapter {delta.adapter:.3f} "
                     f"(delta {delta.delta:+.3f}, limit -{delta.max_regression:.3f}: "
                     f"{'ok' if delta.ok else 'REGRESSED'})")
    verdict = "meets" if results.final.meets_min_score else "does NOT meet"
    prompting = ("meets" if base.prompting_meets_min_score else "does not meet") if base.prompt_baseline else \
        "was not scored against"
    lines.append(f"adapter {verdict} min_score; prompting alone {prompting} it. Adapter: {results.adapter.path}")
    return "\n".join(lines)


def _prompt_text(messages: list[Message]) -> str:
    return "\n".join(m.content for m in messages if m.role == "user")  # system turns are not the question

