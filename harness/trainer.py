"""Trainer plumbing shared by the SFT and DPO stages (harness.sft, harness.dpo).

    args = SFTConfig(output_dir=..., **trainer_arguments(stage, seed, device, compute_dtype, False, progress))
    loss_logger = LossLogger(run_dir / "loss.jsonl", "sft", previous_loss_log)
    trainer = build_trainer(SFTTrainer, model, tokenizer, args, dataset, [loss_logger], progress)
    stage = run_stage(trainer, "sft", loss_logger, device)   # a StageResult

Each logged step is appended to `<run_dir>/loss.jsonl` (rewritten atomically) so a crash leaves a readable
curve.
"""

from __future__ import annotations

import logging
import math
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import PrinterCallback, TrainerCallback

from harness.artifacts import write_jsonl_atomic
from harness.records import TrainingStats

log = logging.getLogger(__name__)


@dataclass
class StageResult(TrainingStats):
    """What one training stage measured (the record's TrainingStats), with every logged step."""

    loss_log: list[dict] = field(default_factory=list)


class NonFiniteTrainingError(FloatingPointError):
    """A training stage produced a NaN or infinite loss, gradient norm or adapter weight; nothing is saved."""


class NonFiniteGuard(TrainerCallback):
    """Stops training at the first non-finite loss, gradient norm or trainable weight, naming the stage and step.

    transformers' `logging_nan_inf_filter` (on by default) replaces a NaN step loss by the running mean, so a
    diverged run would log plausible losses and save a broken adapter; trainer_arguments turns it off and this
    callback turns what is then logged into an error.
    """

    def __init__(self, stage: str):
        self.stage = stage

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "grad_norm"):
            value = (logs or {}).get(key)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                raise NonFiniteTrainingError(f"{self.stage}: non-finite {key} ({value}) at step {state.global_step}")

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is None:
            return
        for name, param in model.named_parameters():
            if param.requires_grad and not bool(torch.isfinite(param).all()):
                raise NonFiniteTrainingError(
                    f"{self.stage}: non-finite weight {name} after step {state.global_step}")


class LossLogger(TrainerCallback):
    """Keeps every logged step and rewrites `loss.jsonl` atomically after each one."""

    def __init__(self, path: Path, stage: str, previous: list[dict] | None = None):
        self.path = path
        self.stage = stage
        self.rows: list[dict] = list(previous or [])
        self.stage_rows: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "train_loss" in logs:  # the closing summary, not a step
            return
        row = {"stage": self.stage, "step": state.global_step, **{k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}}
        self.rows.append(row)
        self.stage_rows.append(row)
        write_jsonl_atomic(self.path, self.rows)


def build_trainer(trainer_class, model, tokenizer, args, dataset, callbacks: list[TrainerCallback], progress: bool):
    """A trl trainer for one stage, quiet when the progress bar is off."""
    # The guard goes right after the loss logger: a NaN step is written to loss.jsonl, then stops the stage
    # before any later callback (a pruning evaluation) runs on broken weights.
    loggers = [c for c in callbacks if isinstance(c, LossLogger)]
    guard = NonFiniteGuard(loggers[0].stage if loggers else "train")
    callbacks = [*loggers, guard, *(c for c in callbacks if not isinstance(c, LossLogger))]
    trainer = trainer_class(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                            callbacks=callbacks)
    if not progress:
        trainer.remove_callback(PrinterCallback)  # it prints every log dict when the progress bar is off
    return trainer


def trainer_arguments(stage, seed: int, device: str, compute_dtype: torch.dtype, gradient_checkpointing: bool,
                      progress: bool) -> dict:
    """TrainingArguments shared by the SFT and DPO stages (stage: SFTStageConfig or DPOStageConfig)."""
    return dict(
        learning_rate=stage.learning_rate,
        max_steps=stage.max_steps if stage.max_steps > 0 else -1,
        num_train_epochs=stage.epochs,
        per_device_train_batch_size=stage.batch_size,
        gradient_accumulation_steps=stage.grad_accum,
        warmup_steps=stage.warmup_ratio,  # a float in [0, 1) is a ratio of total steps
        lr_scheduler_type=stage.scheduler,
        logging_steps=stage.logging_steps,
        logging_nan_inf_filter=False,  # a NaN loss must be seen (NonFiniteGuard), not averaged away
        seed=seed,
        data_seed=seed,
        # trl defaults to bf16 and gradient checkpointing; both are wrong for CPU, so set them explicitly.
        bf16=compute_dtype == torch.bfloat16,
        fp16=compute_dtype == torch.float16,
        gradient_checkpointing=gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if gradient_checkpointing else None,
        use_cpu=device == "cpu",
        save_strategy="no",
        report_to=[],
        include_num_input_tokens_seen="non_padding",  # for DPO: chosen and rejected, prompt included in each
        dataloader_num_workers=0,
        disable_tqdm=not progress,
    )


def run_stage(trainer, stage: str, loss_logger: LossLogger, device: str) -> StageResult:
    """Train, then gather the stage's measurements (shared by SFT and DPO)."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    output = trainer.train()
    runtime = time.perf_counter() - started
    tokens = int(trainer.state.num_input_tokens_seen)
    losses = [row["loss"] for row in loss_logger.stage_rows if "loss" in row]
    if losses and not all(torch.isfinite(torch.tensor(losses))):
        raise NonFiniteTrainingError(f"{stage}: non-finite training loss {losses[-5:]}")
    result = StageResult(
        stage=stage,
        steps=output.global_step,
        train_runtime_s=runtime,
        tokens_seen=tokens,
        tokens_per_s=tokens / runtime if runtime > 0 else 0.0,
        first_loss=losses[0] if losses else float("nan"),
        final_loss=losses[-1] if losses else float("nan"),
        peak_memory_mb=peak_memory_mb(device),
        loss_log=loss_logger.stage_rows,
    )
    log.info(
        "%s: %d steps in %.1f s, %.0f tokens/s, loss %.4f -> %.4f",
        stage, result.steps, runtime, result.tokens_per_s, result.first_loss, result.final_loss,
    )
    return result


def peak_memory_mb(device: str) -> float:
    """Peak GPU memory allocated on CUDA; the process's peak resident set size on CPU."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
