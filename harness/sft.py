"""SFT stage: trl's SFTTrainer on pre-tokenized conversations with an assistant-only loss mask.

    stage = train_sft(model, tokenizer, examples, cfg.train.sft, run_dir, seed=cfg.seed, device="cpu",
                      compute_dtype=torch.float32)

The model is a PeftModel (frozen base + trainable LoRA). Only the LoRA weights change. Each logged step is
appended to `<run_dir>/loss.jsonl` (rewritten atomically) so a crash leaves a readable curve. The trainer
plumbing it shares with the DPO stage is in harness.trainer.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from transformers import TrainerCallback

from harness.config import SFTStageConfig
from harness.data import TokenizedExample
from harness.trainer import LossLogger, StageResult, build_trainer, run_stage, trainer_arguments


def train_sft(
    model,
    tokenizer,
    examples: list[TokenizedExample],
    stage: SFTStageConfig,
    run_dir: Path,
    *,
    seed: int,
    device: str,
    compute_dtype: torch.dtype,
    gradient_checkpointing: bool = False,
    previous_loss_log: list[dict] | None = None,
    callbacks: list[TrainerCallback] | None = None,
    progress: bool = True,
) -> StageResult:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    dataset = Dataset.from_dict(
        {
            "input_ids": [example.input_ids for example in examples],
            "assistant_masks": [example.assistant_masks for example in examples],
        }
    )
    args = SFTConfig(
        output_dir=str(run_dir / "trainer_sft"),
        weight_decay=stage.weight_decay,
        max_length=stage.max_length,
        **trainer_arguments(stage, seed, device, compute_dtype, gradient_checkpointing, progress),
    )
    loss_logger = LossLogger(run_dir / "loss.jsonl", "sft", previous_loss_log)
    trainer_class = _model_loss_sft_trainer() if device == "cpu" else SFTTrainer
    trainer = build_trainer(trainer_class, model, tokenizer, args, dataset, [loss_logger, *(callbacks or [])], progress)
    result = run_stage(trainer, "sft", loss_logger, device)
    shutil.rmtree(args.output_dir, ignore_errors=True)  # nothing is saved there (save_strategy="no")
    return result


def _model_loss_sft_trainer():
    from transformers import Trainer
    from trl import SFTTrainer

    class ModelLossSFTTrainer(SFTTrainer):
        """SFTTrainer with the model's own causal-LM loss (same labels, same normalisation).

        trl 1.16 computes the SFT loss through a tiled LM head: Triton kernels on GPU, but on CPU the tiles are
        folded into Python-level torch ops, which made each step several times slower than the model's plain
        loss (profiled here: ~65% of step time in trl/kernels/chunked_logprob.py on the tiny model).
        """

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs["use_cache"] = False
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

    return ModelLossSFTTrainer
