"""GPU check (not a test): QLoRA at Llama-3.1-8B's shape through the harness's own training path, on one GPU.

    python tests/benchmarks/gpu_check.py --out DIR            # one CUDA GPU: ~6-8 minutes on an H200
    python tests/benchmarks/gpu_check.py --dry-run --out DIR  # CPU, 2 layers, same vocabulary: about a minute

Prints one table and writes it to DIR/gpu_check.md and DIR/gpu_check.json. How to run it on a GPU machine that
lacks the harness's dependencies: tests/benchmarks/NOTES.md.

The model. A random-initialised Llama of Llama-3.1-8B's shape (hidden 4096, 32 layers, 32 heads, 8 KV heads,
intermediate 14336, vocabulary 128256, rope theta 500000 with Llama 3.1's rope scaling; 8.03B parameters), so
no weights are downloaded or carried. Its bf16 weights are written once as safetensors shards to local disk
(--model-dir, reused by a rerun), one tensor at a time from a seeded generator on the GPU: nothing ever holds
the model in fp32 (32 GB), nor builds a bf16 model object. The harness then loads it as a user's `model=hf`
directory: `load_base_model` -> `from_pretrained(quantization_config=NF4 + double quant, bf16 compute)`, which
quantizes tensor by tensor on the GPU, then peft's k-bit preparation with gradient checkpointing. Building the
model in bf16 on the GPU and swapping in bnb Linear4bit layers by hand would save the disk write (~16 GB), but
would skip the path users run: transformers' bnb quantizer, `is_loaded_in_4bit` (which trl and peft branch on)
and the k-bit preparation. The tokenizer is SmolLM2's, as the harness ships it (--tokenizer DIR where the
harness's embedded model is not installed): its ids are < 49152 < 128256.

What is measured, each through the harness's own functions (train_sft, train_dpo, load_adapter, generate):
1. QLoRA SFT at sequence --seq-len, batch 1 and larger batches until one does not fit: tokens/s, MFU, peak
   memory; beside a bare peft + PyTorch loop (forward, backward, clip, fused AdamW; the same autocast) over
   exactly the batches the harness trainer fed the model, on the same base with the LoRA in the same dtype.
2. DPO on the SFT adapter with the SFT policy as reference (reference log-probs precomputed, as the harness
   runs it).
3. Held-out generation (greedy, the harness's generate) with the DPO adapter, twice, and once more after the
   adapter went through safetensors and back: identical outputs, or how many differ.
4. Two trials back to back in one process (everything above is trial 1; trial 2 loads the base again and
   trains), each followed by harness.memory.release_trial_memory: memory before, between and after, and whether
   each trial's base model, LoRA models and optimizers are freed.
Tokens/s is steady state: non-padding tokens between the end of the first optimizer step and the end of the
last, over that wall time (CUDA synchronised at each step end), so one-off kernel compilation and warm-up are
left out of both loops alike.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import tempfile
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from transformers import TrainerCallback

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from harness.artifacts import library_versions, write_json_atomic, write_text_atomic  # noqa: E402
from harness.config import (  # noqa: E402
    DPOStageConfig,
    EvalConfig,
    LoraConfig,
    ModelConfig,
    QuantConfig,
    SFTStageConfig,
)
from harness.data import PreferencePair, TokenizedExample  # noqa: E402
from harness.dpo import train_dpo  # noqa: E402
from harness.evaluate import generate, load_heldout  # noqa: E402
from harness.memory import MemoryReading, memory_reading, release_trial_memory  # noqa: E402
from harness.model import attach_lora, load_adapter, load_base_model, smollm2_tokenizer_dir  # noqa: E402
from harness.sft import train_sft  # noqa: E402

H200_BF16_DENSE_TFLOPS = 989.0  # NVIDIA's datasheet figure for the H200 SXM (H100's), without sparsity
LLAMA_2_7B_PARAMS = 6.738e9  # the "7B" of the <= 8 GB QLoRA rule of thumb, to scale it to this model's size
SEVEN_B_PEAK_GIB = 8.0
SFT_LEARNING_RATE = 2e-4  # the QLoRA paper's rate for 7B-scale models
FLOPS_FORMULA = (
    "training FLOPs per token = 6*N_lora + 4*N_base + 12*L*d*s. N_base: weights of the frozen base's matmuls "
    "(every Linear, lm_head included, embedding lookup excluded); N_lora: LoRA parameters; L layers, d hidden "
    "size, s sequence length. Frozen base: forward 2*N_base + backward activation gradients 2*N_base, no weight "
    "gradients; LoRA: 2+2+2 (forward, activation and weight gradients). Attention scores and values: 4*s*d per "
    "token per layer forward, twice that backward, over the full s (PaLM's convention, no causal halving). "
    "Gradient checkpointing's recomputed forward (another 2*N_base + 2*N_lora) is not counted: MFU counts model "
    "FLOPs, not hardware FLOPs."
)
MFU_FORMULA = "MFU = tokens/s * FLOPs per token / peak FLOP/s"
WORDS = (
    "the of and to in is was for on that with as by at from his her they this which be or are not an have one "
    "had were but all their there been has more when who will would some no time into only other new than could "
    "these first two may then do any like my now over such our man me even most made after also did many before "
    "must through back years where much your way well down should because each just those people how too little"
).split()


@dataclass(frozen=True)
class Shape:
    """A Llama shape; the weights are random."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int


LLAMA_3_1_8B = Shape("Llama-3.1-8B shape, random init", 4096, 32, 32, 8, 14336, 128256)
DRY_RUN_SHAPE = Shape("2-layer Llama, Llama-3.1 vocabulary, random init", 64, 2, 4, 2, 128, 128256)


@dataclass
class Row:
    """One line of the table. Targets are for one H200; off it (the dry run) they are not judged."""

    name: str
    measured: float
    unit: str
    target: float | None = None
    comparison: str = ""  # ">=" or "<=" when there is a target
    status: str = "info"  # pass, fail, unmeasured (a target not judged here), or info (no target)
    note: str = ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for gpu_check.md and gpu_check.json")
    parser.add_argument("--dry-run", action="store_true", help="CPU, 2 layers, few steps: tests the script")
    parser.add_argument("--model-dir", type=Path, help="where the random checkpoint is written (default: a temp "
                        "dir; on a GPU /tmp/gpu-check-llama-3.1-8b, reused by a rerun)")
    parser.add_argument("--tokenizer", type=Path, help="a tokenizer directory (default: the harness's SmolLM2)")
    parser.add_argument("--seq-len", type=int)
    parser.add_argument("--steps", type=int, help="SFT steps at batch 1 (the bare loop runs the same batches)")
    parser.add_argument("--sweep-steps", type=int, help="SFT steps at each larger batch")
    parser.add_argument("--batch-sizes", type=str, help="comma-separated, tried in order until one does not fit")
    parser.add_argument("--dpo-steps", type=int)
    parser.add_argument("--new-tokens", type=int, help="greedy tokens per held-out prompt")
    parser.add_argument("--peak-tflops", type=float, default=H200_BF16_DENSE_TFLOPS)
    args = parser.parse_args()
    if args.dry_run:
        device, shape = "cpu", DRY_RUN_SHAPE
        defaults = dict(seq_len=128, steps=3, sweep_steps=2, batch_sizes="1,2", dpo_steps=2, new_tokens=8)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("gpu_check: no CUDA device; --dry-run checks the script on CPU")
        device, shape = "cuda", LLAMA_3_1_8B
        defaults = dict(seq_len=2048, steps=8, sweep_steps=4, batch_sizes="1,2,4,8,16", dpo_steps=6,
                        new_tokens=32)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if batch_sizes[0] != 1:
        raise SystemExit("--batch-sizes must start with 1 (the bare-loop comparison and the memory target)")
    started = time.perf_counter()
    tokenizer_dir = args.tokenizer or smollm2_tokenizer_dir()

    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        model_dir = args.model_dir or (work / "model" if args.dry_run else Path("/tmp/gpu-check-llama-3.1-8b"))
        with timed(seconds, "checkpoint"):
            n_params = write_random_checkpoint(shape, tokenizer_dir, model_dir, device)
        matmul_tflops = matmul_tflops_measured(device)
        before = release_trial_memory(device)
        trial_one, trial_one_refs = run_trial_one(args, shape, model_dir, device, batch_sizes, work, seconds)
        after_one = release_trial_memory(device)
        freed_after_release = all(ref() is None for ref in trial_one_refs)
        with timed(seconds, "trial 2"):
            trial_two, trial_two_refs = run_trial_two(args, model_dir, device, work, trial_one_refs)
        after_two = release_trial_memory(device)
        freed_two = all(ref() is None for ref in trial_two_refs)

    memory = {"before": before, "after_trial_1": after_one, "after_trial_2": after_two}
    rows = build_rows(args, shape, device, trial_one, trial_two, memory, freed_after_release, freed_two,
                      n_params, matmul_tflops)
    meta = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": (torch.cuda.get_device_name(0) if device == "cuda"
                   else f"cpu ({platform.processor() or 'cpu'}, {torch.get_num_threads()} threads)"),
        "dry_run": args.dry_run,
        "shape": asdict(shape),
        "parameters": n_params,
        "seq_len": args.seq_len,
        "steps": {"sft_batch_1": args.steps, "sft_larger_batches": args.sweep_steps, "dpo": args.dpo_steps},
        "lora": asdict(LoraConfig()),
        "attn_implementation": trial_one["attn_implementation"],
        "compute_dtype": trial_one["compute_dtype"],
        "lora_dtype_in_training": trial_one["lora_dtype"],
        "peak_tflops": args.peak_tflops,
        "flops_formula": FLOPS_FORMULA,
        "mfu_formula": MFU_FORMULA,
        "flops_per_token": trial_one["flops_per_token"],
        "seconds": seconds,
        "memory": {name: asdict(reading) for name, reading in memory.items()},
        "sft_by_batch": trial_one["sft_by_batch"],
        "generation": trial_one["generation"],
        "library_versions": library_versions(),
        "wall_time_s": time.perf_counter() - started,
    }
    table = markdown_table(rows)
    print(table)
    write_text_atomic(args.out / "gpu_check.md", markdown_header(meta) + table + "\n")
    write_json_atomic(args.out / "gpu_check.json", {"meta": meta, "rows": [asdict(row) for row in rows]})
    sections = ", ".join(f"{name} {s:.0f} s" for name, s in seconds.items())
    print(f"\nwrote {args.out / 'gpu_check.md'} and {args.out / 'gpu_check.json'} "
          f"in {meta['wall_time_s']:.0f} s ({sections})")


# ---------------------------------------------------------------------------------------------------------
# The random checkpoint


def write_random_checkpoint(shape: Shape, tokenizer_dir: Path, model_dir: Path, device: str) -> int:
    """bf16 safetensors shards of a random Llama plus the tokenizer, one tensor in memory at a time.

    Returns the parameter count. A directory written earlier for the same shape and tokenizer is reused.
    """
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=131072,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        dtype="bfloat16",
    )
    with torch.device("meta"):
        shapes = {name: tensor.shape for name, tensor in LlamaForCausalLM(config).state_dict().items()}
    n_params = sum(math.prod(s) for s in shapes.values())
    identity = {"shape": asdict(shape), "tokenizer": str(Path(tokenizer_dir).resolve())}
    marker = model_dir / "gpu_check_checkpoint.json"  # written first, marked complete last
    if marker.is_file() and json.loads(marker.read_text()) == {**identity, "complete": True}:
        return n_params
    if model_dir.exists() and any(model_dir.iterdir()) and not marker.is_file():
        raise SystemExit(f"--model-dir {model_dir} is not empty and not gpu_check's: not replacing it")
    shutil.rmtree(model_dir, ignore_errors=True)  # gpu_check's own: another shape, or a write that was cut off
    model_dir.mkdir(parents=True)
    marker.write_text(json.dumps({**identity, "complete": False}))
    generator = torch.Generator(device).manual_seed(0)
    weight_map: dict[str, str] = {}
    shard: dict[str, torch.Tensor] = {}
    shard_bytes = 0

    def flush() -> None:
        nonlocal shard, shard_bytes
        filename = f"model-{len(set(weight_map.values())) + 1:05d}.safetensors"
        save_file(shard, str(model_dir / filename), metadata={"format": "pt"})
        weight_map.update({name: filename for name in shard})
        shard, shard_bytes = {}, 0

    for name, tensor_shape in shapes.items():
        if name.endswith("norm.weight"):
            tensor = torch.ones(tensor_shape, dtype=torch.bfloat16)
        else:
            tensor = torch.randn(tensor_shape, generator=generator, device=device, dtype=torch.bfloat16)
            tensor = tensor.mul_(config.initializer_range).cpu()
        shard[name] = tensor
        shard_bytes += tensor.numel() * 2
        if shard_bytes >= 4 * 2**30:
            flush()
    if shard:
        flush()
    total_size = sum(math.prod(s) for s in shapes.values()) * 2
    write_json_atomic(model_dir / "model.safetensors.index.json",
                      {"metadata": {"total_size": total_size}, "weight_map": weight_map})
    config.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    marker.write_text(json.dumps({**identity, "complete": True}))
    return n_params


# ---------------------------------------------------------------------------------------------------------
# Trial 1: SFT at several batch sizes, the bare loop, DPO, generation


class StepClock(TrainerCallback):
    """Time and tokens seen at the end of every optimizer step; keeps weak references to what training used."""

    def __init__(self, device: str, refs: list | None = None):
        self.device, self.refs = device, refs
        self.times: list[float] = []
        self.tokens: list[int] = []

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.refs is not None:
            self.refs += [weakref.ref(model), weakref.ref(optimizer)]

    def on_step_end(self, args, state, control, **kwargs):
        _sync(self.device)
        self.times.append(time.perf_counter())
        self.tokens.append(int(state.num_input_tokens_seen))

    def steady_tokens_per_s(self) -> float:
        if len(self.times) < 2:
            return float("nan")
        return (self.tokens[-1] - self.tokens[0]) / (self.times[-1] - self.times[0])


def run_trial_one(args, shape: Shape, model_dir: Path, device: str, batch_sizes: list[int], work: Path,
                  seconds: dict[str, float]):
    """Everything trial 1 measures, and weak references to its models and optimizers (dead once released)."""
    refs: list[weakref.ref] = []
    with timed(seconds, "load"):
        base = _load(model_dir, device)
    after_load = memory_reading(device)
    base_model, tokenizer, dtype = base.model, base.tokenizer, base.compute_dtype
    refs.append(weakref.ref(base_model))
    n_base = sum(m.in_features * m.out_features for m in base_model.modules() if isinstance(m, torch.nn.Linear))
    most = max(args.steps, args.sweep_steps * max(batch_sizes))
    examples = sft_examples(tokenizer, most, args.seq_len)

    # 1. SFT through the harness at batch 1 (its batches recorded for the bare loop), then larger batches until
    # one runs out of memory (at batch 1 that ends the check: nothing else would be comparable).
    sft_by_batch: dict[int, dict] = {}
    captured: list[dict] = []
    peaks = [after_load.peak_mb]
    for batch in batch_sizes:
        steps = args.steps if batch == 1 else args.sweep_steps
        model = attach_lora(base_model, LoraConfig())
        n_lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
        clock = StepClock(device, refs)
        if batch == 1:
            _record_batches(model, captured)
        stage = SFTStageConfig(learning_rate=SFT_LEARNING_RATE, max_steps=steps, batch_size=batch,
                               warmup_ratio=0.0, max_length=args.seq_len)
        try:
            with timed(seconds, f"sft batch {batch}"):
                result = train_sft(model, tokenizer, examples[: steps * batch], stage, work / f"sft-b{batch}",
                                   seed=0, device=device, compute_dtype=dtype, gradient_checkpointing=True,
                                   callbacks=[clock], progress=False)
        except torch.OutOfMemoryError:
            if batch == 1:
                raise
            sft_by_batch[batch] = {"fits": False}
        else:
            peaks.append(result.peak_memory_mb)
            sft_by_batch[batch] = {"fits": True, "steady_tokens_per_s": clock.steady_tokens_per_s(),
                                   "stage_tokens_per_s": result.tokens_per_s, "steps": result.steps,
                                   "peak_memory_mb": result.peak_memory_mb, "final_loss": result.final_loss}
        if batch == 1:
            del model.forward  # stop recording
            lora_dtype = next(p.dtype for n, p in model.named_parameters() if "lora_A" in n)
            model.save_pretrained(work / "adapter_sft", safe_serialization=True)
        base_model = model.unload()
        del model
        if not sft_by_batch[batch]["fits"]:
            release_trial_memory(device)  # the failed step's activations, before the measurements go on
            break
    flops_per_token = 6 * n_lora + 4 * n_base + 12 * shape.layers * shape.hidden * args.seq_len

    # 2. The bare peft + PyTorch loop over the same batches, on the same base, with the LoRA in the same dtype.
    bare_model = attach_lora(base_model, LoraConfig(), adapter_name="bare")
    for name, param in bare_model.named_parameters():
        if param.requires_grad:
            param.data = param.data.to(lora_dtype)
    with timed(seconds, "bare loop"):
        bare_tokens_per_s, bare_peak = bare_lora_loop(bare_model, captured, SFT_LEARNING_RATE, device, dtype)
    base_model = bare_model.unload()
    del bare_model

    # 3. DPO on the SFT adapter, the SFT policy as reference.
    policy = load_adapter(base_model, work / "adapter_sft", trainable=True)
    refs.append(weakref.ref(policy))
    dpo_clock = StepClock(device, refs)
    dpo_stage = DPOStageConfig(max_steps=args.dpo_steps, batch_size=1, max_length=args.seq_len)
    with timed(seconds, "dpo"):
        dpo = train_dpo(policy, tokenizer, preference_pairs(tokenizer, args.dpo_steps, args.seq_len), dpo_stage,
                        work / "dpo", seed=0, device=device, compute_dtype=dtype, gradient_checkpointing=True,
                        reference_adapter=work / "adapter_sft", callbacks=[dpo_clock], progress=False)
    peaks.append(dpo.peak_memory_mb)

    # 4. Held-out generation with the DPO adapter: twice, then after a round trip through safetensors.
    with timed(seconds, "generation"):
        generation = generation_check(policy, tokenizer, work / "adapter_dpo", max_new_tokens=args.new_tokens)
    peaks.append(memory_reading(device).peak_mb)
    measurements = {
        "attn_implementation": base.attn_implementation,
        "compute_dtype": str(dtype),
        "lora_dtype": str(lora_dtype),
        "weights_mb": after_load.allocated_mb,
        "n_base": n_base,
        "n_lora": n_lora,
        "flops_per_token": flops_per_token,
        "sft_by_batch": sft_by_batch,
        "bare_tokens_per_s": bare_tokens_per_s,
        "bare_peak_mb": bare_peak,
        "dpo_steady_tokens_per_s": dpo_clock.steady_tokens_per_s(),
        "dpo_stage_tokens_per_s": dpo.tokens_per_s,
        "dpo_first_loss": dpo.first_loss,
        "generation": generation,
        "peak_mb": max(peaks),
    }
    return measurements, refs


def bare_lora_loop(model, batches: list[dict], learning_rate: float, device: str, dtype: torch.dtype):
    """Forward, backward, clip, fused AdamW; autocast as the Trainer does. -> (steady tokens/s, peak MiB)"""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, fused=True)  # the Trainer's default optimizer
    model.train()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, tokens = [], [0]
    for batch in batches:
        with torch.autocast(device_type=device, dtype=dtype, enabled=dtype != torch.float32):
            loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         labels=batch["labels"], use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        times.append(time.perf_counter())
        tokens.append(tokens[-1] + int(batch["attention_mask"].sum()))
    steady = (tokens[-1] - tokens[1]) / (times[-1] - times[0]) if len(times) > 1 else float("nan")
    return steady, memory_reading(device).peak_mb


def _record_batches(model, captured: list[dict]) -> None:
    """Keep every batch the trainer feeds the model (a few small int tensors per step)."""
    forward = model.forward

    def recording_forward(*args, **kwargs):
        captured.append({k: kwargs[k].detach().clone() for k in ("input_ids", "attention_mask", "labels")})
        return forward(*args, **kwargs)

    model.forward = recording_forward


def generation_check(policy, tokenizer, adapter_dir: Path, max_new_tokens: int, n_prompts: int = 4) -> dict:
    prompts = [example.messages for example in load_heldout(EvalConfig(max_examples=n_prompts))]
    first = generate(policy, tokenizer, prompts, max_new_tokens, len(prompts))
    second = generate(policy, tokenizer, prompts, max_new_tokens, len(prompts))
    policy.save_pretrained(adapter_dir, safe_serialization=True)
    policy.load_adapter(adapter_dir, adapter_name="reloaded")
    policy.set_adapter("reloaded")
    reloaded = generate(policy, tokenizer, prompts, max_new_tokens, len(prompts))
    policy.set_adapter("default")
    policy.delete_adapter("reloaded")
    same_twice = sum(a == b for a, b in zip(first, second))
    same_reloaded = sum(a == b for a, b in zip(first, reloaded))
    differences = [{"prompt": i, "first": a, "second": b}
                   for i, (a, b) in enumerate(zip(first, second)) if a != b]
    differences += [{"prompt": i, "first": a, "reloaded": b}
                    for i, (a, b) in enumerate(zip(first, reloaded)) if a != b]
    return {"prompts": len(prompts), "max_new_tokens": max_new_tokens, "identical_twice": same_twice,
            "identical_after_reload": same_reloaded, "differences": differences[:4], "outputs": first}


# ---------------------------------------------------------------------------------------------------------
# Trial 2: load and train again in the same process


def run_trial_two(args, model_dir: Path, device: str, work: Path, trial_one_refs: list):
    refs: list[weakref.ref] = []
    alive_during: list[bool] = []

    class TrialOneGone(StepClock):
        def on_train_begin(self, args_, state, control, **kwargs):
            super().on_train_begin(args_, state, control, **kwargs)
            alive_during.append(any(ref() is not None for ref in trial_one_refs))

    base = _load(model_dir, device)
    refs.append(weakref.ref(base.model))
    after_load = memory_reading(device)
    model = attach_lora(base.model, LoraConfig())
    stage = SFTStageConfig(learning_rate=SFT_LEARNING_RATE, max_steps=args.sweep_steps, batch_size=1,
                           warmup_ratio=0.0, max_length=args.seq_len)
    examples = sft_examples(base.tokenizer, args.sweep_steps, args.seq_len, seed=1)
    result = train_sft(model, base.tokenizer, examples, stage, work / "trial2", seed=0, device=device,
                       compute_dtype=base.compute_dtype, gradient_checkpointing=True,
                       callbacks=[TrialOneGone(device, refs)], progress=False)
    peak = max(after_load.peak_mb, result.peak_memory_mb, memory_reading(device).peak_mb)
    return {"peak_mb": peak, "trial_one_alive_in_two": any(alive_during)}, refs


def _load(model_dir: Path, device: str):
    """The base as a sweep trial loads it: model=hf on a local directory, quant=nf4, checkpointing on."""
    model_cfg = ModelConfig(kind="hf", name_or_path=str(model_dir))
    return load_base_model(model_cfg, QuantConfig(method="nf4"), device, gradient_checkpointing=True)


# ---------------------------------------------------------------------------------------------------------
# Data: ordinary words, so that a re-tokenized text keeps about the length it was made for


def _text(n_words: int, seed: int) -> str:
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(WORDS), (n_words,), generator=generator).tolist()
    return " ".join(WORDS[i] for i in picks)


def sft_examples(tokenizer, n: int, seq_len: int, seed: int = 0) -> list[TokenizedExample]:
    """n examples of exactly seq_len tokens; the loss on the last three quarters (the "answer")."""
    examples = []
    for i in range(n):
        ids = tokenizer(_text(seq_len + 16, seed * 100_000 + i), add_special_tokens=False).input_ids[:seq_len]
        assert len(ids) == seq_len, (len(ids), seq_len)
        prompt = seq_len // 4
        examples.append(TokenizedExample(ids, [0] * prompt + [1] * (seq_len - prompt), f"gpu_check:{i}"))
    return examples


def preference_pairs(tokenizer, n: int, seq_len: int) -> list[PreferencePair]:
    """Plain-text pairs with prompt + answer over seq_len tokens: DPO truncates each sequence to seq_len."""
    half = seq_len // 2
    return [PreferencePair(_text(half, 10 * i), _text(half + 16, 10 * i + 1), _text(half + 16, 10 * i + 2),
                           f"gpu_check:{i}") for i in range(n)]


# ---------------------------------------------------------------------------------------------------------
# The table


def build_rows(args, shape, device, one: dict, two: dict, memory: dict[str, MemoryReading], freed_one: bool,
               freed_two: bool, n_params: int, matmul_tflops: float) -> list[Row]:
    on_gpu = device == "cuda"
    gib = 2**10  # MiB per GiB

    def target(row: Row, h200_only: bool = True) -> Row:
        """Judge a row against its target; throughput and VRAM targets only on the GPU they were set for."""
        if h200_only and not on_gpu:
            row.status = "unmeasured"
            row.note = (row.note + "; " if row.note else "") + "dry run on CPU: the target is for one H200"
        elif math.isnan(row.measured):
            row.status = "unmeasured"
        else:
            ok = row.measured >= row.target if row.comparison == ">=" else row.measured <= row.target
            row.status = "pass" if ok else "fail"
        return row

    fitted = {b: r for b, r in one["sft_by_batch"].items() if r["fits"]}
    b1 = fitted[1]
    best_batch = max(fitted, key=lambda b: fitted[b]["steady_tokens_per_s"])
    best = fitted[best_batch]
    peak_flops = args.peak_tflops * 1e12

    def mfu(tokens_per_s: float) -> float:
        return tokens_per_s * one["flops_per_token"] / peak_flops

    # DPO runs one pair per step: two sequences through the policy, as SFT at batch 2 does.
    sft_for_dpo_batch = 2 if 2 in fitted else 1
    sft_for_dpo = fitted[sft_for_dpo_batch]["steady_tokens_per_s"]
    memory_target_gib = SEVEN_B_PEAK_GIB * n_params / LLAMA_2_7B_PARAMS
    after_one, after_two = memory["after_trial_1"], memory["after_trial_2"]
    resident = "device memory in use (total - free)" if on_gpu else "process RSS"
    not_fitted = [b for b, r in one["sft_by_batch"].items() if not r["fits"]]
    generation = one["generation"]
    b1_tokens, bare_tokens = b1["steady_tokens_per_s"], one["bare_tokens_per_s"]
    rows = [
        Row("sft_b1_tokens_per_s", b1_tokens, "tokens/s",
            note=f"harness train_sft, batch 1 x {args.seq_len}, steady state; whole stage incl. warm-up "
                 f"{b1['stage_tokens_per_s']:.1f}"),
        Row("bare_b1_tokens_per_s", bare_tokens, "tokens/s",
            note=f"bare peft + PyTorch loop, same batches; peak {one['bare_peak_mb'] / gib:.2f} GiB"),
        target(Row("harness_over_bare", b1_tokens / bare_tokens, "ratio", 0.9, ">=")),
        target(Row("sft_b1_mfu", mfu(b1_tokens), "fraction", 0.35, ">=",
                   note=f"{one['flops_per_token'] / 1e9:.2f} GFLOPs/token (N_base {one['n_base'] / 1e9:.3f}B, "
                        f"N_lora {one['n_lora'] / 1e6:.2f}M); peak {args.peak_tflops:g} TFLOP/s bf16 dense")),
        target(Row("sft_b1_peak_memory_gib", b1["peak_memory_mb"] / gib, "GiB", memory_target_gib, "<=",
                   note=f"{'torch.cuda.max_memory_allocated' if on_gpu else 'process peak RSS'}; target = "
                        f"{SEVEN_B_PEAK_GIB:g} GiB for a 7B (6.74B) model x {n_params / 1e9:.2f}B / 6.74B")),
        Row("matmul_tflops", matmul_tflops, "TFLOP/s",
            note=f"a plain {'8192^3 bf16' if on_gpu else '512^3 fp32'} matmul here, the reachable ceiling; SFT "
                 f"batch 1 reaches {b1_tokens * one['flops_per_token'] / 1e12 / matmul_tflops:.3f} of it"),
        Row("weights_memory_gib", one["weights_mb"] / gib, "GiB",
            note="allocated after load_base_model: NF4 layers + the embeddings, norms and lm_head, which peft's "
                 "k-bit preparation casts to fp32" if on_gpu else "process RSS after load_base_model"),
        Row("sft_best_batch", best_batch, "sequences",
            note=f"of {','.join(map(str, one['sft_by_batch']))} tried; "
                 + (f"batch {not_fitted[0]} ran out of memory" if not_fitted else "all fitted")),
        Row("sft_best_batch_tokens_per_s", best["steady_tokens_per_s"], "tokens/s"),
        Row("sft_best_batch_mfu", mfu(best["steady_tokens_per_s"]), "fraction"),
        Row("sft_best_batch_peak_memory_gib", best["peak_memory_mb"] / gib, "GiB"),
        Row("dpo_tokens_per_s", one["dpo_steady_tokens_per_s"], "tokens/s",
            note=f"harness train_dpo, 1 pair (chosen + rejected, {args.seq_len} tokens each) per step, steady; "
                 f"first loss {one['dpo_first_loss']:.4f} (ln 2 = 0.6931 when the policy is its reference)"),
        target(Row("dpo_over_sft", one["dpo_steady_tokens_per_s"] / sft_for_dpo, "ratio", 0.9, ">=",
                   note=f"vs SFT at batch {sft_for_dpo_batch} (the same sequences per step)")),
        Row("resident_before_trial_1_gib", memory["before"].device_used_mb / gib, "GiB", note=resident),
        Row("trial_1_peak_gib", one["peak_mb"] / gib, "GiB"),
        Row("resident_after_trial_1_gib", after_one.device_used_mb / gib, "GiB",
            note=f"after release_trial_memory; allocated {after_one.allocated_mb / gib:.3f} GiB"),
        Row("trial_2_peak_gib", two["peak_mb"] / gib, "GiB"),
        Row("resident_after_trial_2_gib", after_two.device_used_mb / gib, "GiB",
            note=f"after release_trial_memory; allocated {after_two.allocated_mb / gib:.3f} GiB"),
        target(Row("after_trial_2_over_after_trial_1", after_two.device_used_mb / after_one.device_used_mb,
                   "ratio", 1.05, "<=", note=resident), h200_only=False),
        target(Row("trial_objects_freed", float(freed_one and freed_two and not two["trial_one_alive_in_two"]),
                   "1 = yes", 1.0, ">=", note="weakrefs to each trial's base model, LoRA models and optimizers: "
                                              "dead after release_trial_memory, trial 1's during trial 2"),
               h200_only=False),
        target(Row("generation_identical_twice", generation["identical_twice"] / generation["prompts"],
                   "fraction", 1.0, ">=",
                   note=f"{generation['prompts']} held-out prompts, greedy, {generation['max_new_tokens']} new "
                        f"tokens, {one['compute_dtype']}"), h200_only=False),
        Row("generation_identical_after_reload", generation["identical_after_reload"] / generation["prompts"],
            "fraction", note="the same adapter through safetensors and back (differences in the json)"),
    ]
    return rows


def markdown_header(meta: dict) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in meta["library_versions"].items())
    lora = meta["lora"]
    return (
        f"# GPU check ({'dry run' if meta['dry_run'] else 'GPU'}), {meta['date']}\n\n"
        f"- device: {meta['device']}; {meta['shape']['name']}, {meta['parameters'] / 1e9:.3f}B parameters, "
        f"NF4 (double quant), compute {meta['compute_dtype']}, attention {meta['attn_implementation']}, LoRA "
        f"r={lora['r']} on {','.join(lora['target_modules'])} (trained in {meta['lora_dtype_in_training']}), "
        f"gradient checkpointing on, sequence {meta['seq_len']}\n"
        f"- {meta['flops_formula']}\n"
        f"- {meta['mfu_formula']}, peak {meta['peak_tflops']:g} TFLOP/s (H200 bf16 dense)\n"
        f"- tokens/s: non-padding tokens from the end of the first optimizer step to the end of the last, over "
        f"that wall time\n"
        f"- seconds: {', '.join(f'{name} {s:.0f}' for name, s in meta['seconds'].items())}\n"
        f"- {versions}\n\n"
    )


def markdown_table(rows: list[Row]) -> str:
    lines = ["| check | measured | unit | target | status | note |", "|---|---|---|---|---|---|"]
    for row in rows:
        target = f"{row.comparison} {row.target:.4g}" if row.target is not None else "-"
        measured = f"{row.measured:.4g}"
        lines.append(f"| {row.name} | {measured} | {row.unit} | {target} | {row.status} | {row.note} |")
    return "\n".join(lines)


@contextmanager
def timed(seconds: dict[str, float], name: str) -> Iterator[None]:
    """Add the wall time of the block to seconds[name]: a GPU run shows where its minutes went."""
    started = time.perf_counter()
    try:
        yield
    finally:
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started


def matmul_tflops_measured(device: str) -> float:
    """Mean TFLOP/s of ten square matmuls after three warm-ups (bf16 8192 on CUDA, fp32 512 on CPU)."""
    n, dtype = (8192, torch.bfloat16) if device == "cuda" else (512, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    started = time.perf_counter()
    for _ in range(10):
        a @ b
    _sync(device)
    return 10 * 2 * n**3 / (time.perf_counter() - started) / 1e12


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
