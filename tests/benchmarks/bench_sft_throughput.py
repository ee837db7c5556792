"""Benchmark (not a test): the harness SFT trainer's tokens/s vs a bare PyTorch LoRA loop, same batches.

    python tests/benchmarks/bench_sft_throughput.py [--steps 20] [--model smollm2|tiny]

Both loops train a fresh LoRA (r16, attention) on the same NF4 base with fp32 compute, over the exact batches
the harness trainer's dataloader yields (materialised once), with the same optimizer (AdamW) and gradient
clipping. The bare loop runs before and after the trainer; its mean is the reference. Prints the ratio
harness / bare (target >= 0.9 on CPU), measured in this one run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from harness.config import DataConfig, LoraConfig, ModelConfig, QuantConfig, SFTStageConfig  # noqa: E402
from harness.data import load_sft_data, tokenize_sft  # noqa: E402
from harness.model import attach_lora, load_base_model  # noqa: E402
from harness.sft import train_sft  # noqa: E402


def bare_lora_loop(model, batches, learning_rate: float) -> tuple[int, float]:
    """The minimum: forward, backward, clip, AdamW step. Returns (non-padding tokens, seconds)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate)
    model.train()
    tokens = 0
    started = time.perf_counter()
    for batch in batches:
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     labels=batch["labels"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(batch["attention_mask"].sum())
    return tokens, time.perf_counter() - started


def _record_batches(model) -> list[dict]:
    """Record every batch the trainer feeds the model (a cheap clone of a few int tensors per step)."""
    captured: list[dict] = []
    forward = model.forward

    def recording_forward(*args, **kwargs):
        captured.append({k: kwargs[k].detach().clone() for k in ("input_ids", "attention_mask", "labels")})
        return forward(*args, **kwargs)

    model.forward = recording_forward
    return captured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--model", default="smollm2", choices=["smollm2", "tiny"])
    args = parser.parse_args()
    torch.manual_seed(0)

    stage = SFTStageConfig(max_steps=args.steps, batch_size=args.batch_size, warmup_ratio=0.0, logging_steps=5)
    base = load_base_model(ModelConfig(kind=args.model), QuantConfig(method="nf4"), "cpu")
    data = load_sft_data(DataConfig(max_sft_examples=args.steps * args.batch_size))
    examples = tokenize_sft(base.tokenizer, data.conversations, stage.max_length)

    # The harness trainer, through the same entry point a run uses.
    model = attach_lora(base.model, LoraConfig(), adapter_name="harness")
    captured = _record_batches(model)
    with tempfile.TemporaryDirectory() as run_dir:
        result = train_sft(model, base.tokenizer, examples, stage, Path(run_dir), seed=0, device="cpu",
                           compute_dtype=base.compute_dtype)
    del model.forward  # stop recording
    harness_tps = result.tokens_seen / result.train_runtime_s
    base_model = model.unload()  # the frozen NF4 base without the adapter

    # The bare loop over exactly the batches the trainer saw, before and after (machines are noisy).
    bare = []
    for _ in range(2):
        bare_model = attach_lora(base_model, LoraConfig(), adapter_name="bare")
        tokens, seconds = bare_lora_loop(bare_model, captured, stage.learning_rate)
        bare.append(tokens / seconds)
        base_model = bare_model.unload()
    bare_tps = sum(bare) / len(bare)
    print(f"model={args.model} steps={args.steps} batch={args.batch_size} nf4 fp32-compute cpu threads={torch.get_num_threads()}")
    print(f"harness trainer: {result.tokens_seen} tokens in {result.train_runtime_s:.1f} s = {harness_tps:.1f} tokens/s")
    print(f"bare LoRA loop:  {tokens} tokens, runs {', '.join(f'{t:.1f}' for t in bare)} tokens/s, mean {bare_tps:.1f}")
    print(f"ratio harness/bare = {harness_tps / bare_tps:.3f} (target >= 0.9)")


if __name__ == "__main__":
    main()
