"""Benchmark (not a test): DPO tokens/s vs SFT tokens/s on the same NF4 base, through the harness's stage entries.

    python tests/benchmarks/bench_dpo_throughput.py [--steps 8] [--batch-size 8] [--model smollm2|tiny] [--trl-head]

SFT trains a fresh LoRA (r16, attention) for --steps steps on json_extract's SFT rows; DPO then trains the same adapter
for --steps steps on its preference pairs, with the SFT adapter as the reference and reference log-probs precomputed
(as `train=sft_dpo` runs). Both on CPU with fp32 compute. Prints the ratio DPO / SFT (target >= 0.9), by wall
clock and by this process's CPU time: on a machine shared with other jobs the wall-clock ratio follows their load,
the CPU-time ratio much less.

Tokens are counted the same way for both: non-padding tokens of every sequence that goes through the policy's forward
and backward (the trainer's num_input_tokens_seen). An SFT example is one sequence (prompt + answer); a DPO pair is
two (prompt + chosen, prompt + rejected), so its prompt counts twice. The reference pass is not counted: it runs once,
before training, and is reported separately. --trl-head also runs DPO with trl's own tiled LM head, which the harness
replaces on CPU, on a fresh copy of the SFT adapter.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import harness.dpo  # noqa: E402
from harness.config import DataConfig, DPOStageConfig, LoraConfig, ModelConfig, QuantConfig, SFTStageConfig  # noqa: E402
from harness.data import load_preference_data, load_sft_data, tokenize_sft  # noqa: E402
from harness.dpo import train_dpo  # noqa: E402
from harness.model import attach_lora, load_adapter, load_base_model  # noqa: E402
from harness.sft import train_sft  # noqa: E402


class CpuTime(TrainerCallback):
    """CPU seconds this process spends inside trainer.train() (all threads)."""

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.process_time()

    def on_train_end(self, args, state, control, **kwargs):
        self.seconds = time.process_time() - self.started


def _dpo(model, tokenizer, pairs, stage, run_dir: Path, reference: Path) -> tuple[float, object, CpuTime]:
    cpu = CpuTime()
    started = time.perf_counter()
    result = train_dpo(model, tokenizer, pairs, stage, run_dir, seed=0, device="cpu", compute_dtype=torch.float32,
                       reference_adapter=reference, callbacks=[cpu], progress=False)
    return time.perf_counter() - started - result.train_runtime_s, result, cpu


def _line(name: str, result, cpu: CpuTime, setup_s: float | None = None) -> str:
    setup = f"; setup (tokenize + reference pass) {setup_s:.1f} s" if setup_s is not None else ""
    return (f"{name}: {result.steps} steps, {result.tokens_seen} tokens; wall {result.train_runtime_s:.1f} s = "
            f"{result.tokens_seen / result.train_runtime_s:.1f} tokens/s; CPU {cpu.seconds:.1f} s = "
            f"{result.tokens_seen / cpu.seconds:.1f} tokens/CPU-s{setup}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--model", default="smollm2", choices=["smollm2", "tiny"])
    parser.add_argument("--trl-head", action="store_true", help="also time DPO with trl's tiled LM head")
    args = parser.parse_args()
    torch.manual_seed(0)
    n = args.steps * args.batch_size
    model_cfg, quant = ModelConfig(kind=args.model), QuantConfig(method="nf4")

    base = load_base_model(model_cfg, quant, "cpu")
    sft_examples = tokenize_sft(base.tokenizer, load_sft_data(DataConfig(max_sft_examples=n)).conversations, 256)
    pairs = load_preference_data(DataConfig(preference_file="evals/json_extract/dpo_train.jsonl",
                                            max_preference_examples=n)).pairs
    sft_stage = SFTStageConfig(max_steps=args.steps, batch_size=args.batch_size, warmup_ratio=0.0)
    dpo_stage = DPOStageConfig(max_steps=args.steps, batch_size=args.batch_size, precompute_ref_log_probs=True)

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        model = attach_lora(base.model, LoraConfig())
        sft_cpu = CpuTime()
        sft = train_sft(model, base.tokenizer, sft_examples, sft_stage, run_dir, seed=0, device="cpu",
                        compute_dtype=base.compute_dtype, callbacks=[sft_cpu], progress=False)
        sft_dtype = next(p.dtype for n_, p in model.named_parameters() if "lora_A" in n_)
        model.save_pretrained(run_dir / "adapter_sft", safe_serialization=True)
        dpo_setup, dpo, dpo_cpu = _dpo(model, base.tokenizer, pairs, dpo_stage, run_dir, run_dir / "adapter_sft")
        dpo_dtype = next(p.dtype for n_, p in model.named_parameters() if "lora_A" in n_)

        if args.trl_head:
            harness.dpo._plain_head_fits = lambda model: False  # what train_dpo does off CPU: trl's own head
            fresh = load_base_model(model_cfg, quant, "cpu")
            trl_model = load_adapter(fresh.model, run_dir / "adapter_sft", trainable=True)
            trl_setup, trl, trl_cpu = _dpo(trl_model, fresh.tokenizer, pairs, dpo_stage, run_dir,
                                           run_dir / "adapter_sft")

    print(f"model={args.model} steps={args.steps} batch={args.batch_size} nf4 fp32-compute cpu "
          f"threads={torch.get_num_threads()} load-average={os.getloadavg()[0]:.1f} (other processes skew both); "
          f"LoRA weights: SFT {sft_dtype} (trl's QLoRA cast), DPO {dpo_dtype}")
    print(_line("SFT", sft, sft_cpu))
    print(_line("DPO (plain head)", dpo, dpo_cpu, dpo_setup))
    if args.trl_head:
        print(_line("DPO (trl tiled head)", trl, trl_cpu, trl_setup))
        print(f"plain head / trl head tokens/s: wall {_ratio(dpo, trl):.2f}x, "
              f"CPU {_ratio(dpo, trl, dpo_cpu, trl_cpu):.2f}x")
    print(f"ratio DPO/SFT tokens/s: wall {_ratio(dpo, sft):.3f}, CPU {_ratio(dpo, sft, dpo_cpu, sft_cpu):.3f} "
          "(target >= 0.9)")


def _ratio(a, b, a_cpu: CpuTime | None = None, b_cpu: CpuTime | None = None) -> float:
    a_s, b_s = (a_cpu.seconds, b_cpu.seconds) if a_cpu else (a.train_runtime_s, b.train_runtime_s)
    return (a.tokens_seen / a_s) / (b.tokens_seen / b_s)


if __name__ == "__main__":
    main()
