"""Held-out generation as a trial runs it vs a bare `model.generate` loop: examples/s, the ratio, identical outputs.

    python tests/benchmarks/bench_generation.py            # SmolLM2-135M NF4 + LoRA, 100 selection examples, ~5 min
    python tests/benchmarks/bench_generation.py --quick    # tiny 2-layer llama, NF4, seconds: plumbing
    python tests/benchmarks/bench_generation.py --adapter sweeps/runs/<run>/adapter   # a trained adapter

(a) harness: `evaluate_heldout` exactly as a trial calls it (PEFT model with the adapter attached, NF4 base, the CPU
    inference swap entered per call, chat template, tokenizing, grading), outputs read from its per-example results.
(b) bare: the same model with the same (swapped) layers, entered once outside the clock; the prompts rendered and
    tokenized into the same batches (input order, `eval.generation.batch_size`, left padding) before the clock;
    then only `model.generate(greedy, same max_new_tokens, the model's EOS ids as stop criteria)` per batch.
After one untimed warm-up of each, the two alternate (a b, b a, ...) `--repeats` times so that machine noise hits
both; each side's median examples/s is reported, by wall time and by this process's CPU time (the figure to read
on a machine shared with other jobs). Without --adapter, LoRA B is seeded noise (std --lora-std) so
the adapter changes outputs without wrecking them. Trailing arguments are Hydra overrides.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

from harness.data import chat
from harness.evaluate import evaluate_heldout, load_eval_splits
from harness.model import attach_lora, fast_cpu_inference, load_adapter, load_base_model
from harness.reproduce import compose_run_config
from tests.conftest import randomize_lora_b

QUICK = ["model=tiny", "quant=nf4", "run_regression=false"]


def harness_outputs(model, tokenizer, eval_cfg, examples) -> list[str]:
    return [row.output for row in evaluate_heldout(model, tokenizer, eval_cfg, examples).per_example]


def bare_batches(model, tokenizer, examples, batch_size: int) -> list:
    texts = [tokenizer.apply_chat_template(chat(e.messages), tokenize=False, add_generation_prompt=True)
             for e in examples]
    previous_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        return [tokenizer(texts[s : s + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
                for s in range(0, len(texts), batch_size)]
    finally:
        tokenizer.padding_side = previous_side


@torch.no_grad()
def bare_generate(model, tokenizer, batches, max_new_tokens: int) -> list:
    model.eval()
    return [model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None,
                           top_k=None, pad_token_id=tokenizer.pad_token_id)[:, batch.input_ids.shape[1] :]
            for batch in batches]


def decode(tokenizer, generated) -> list[str]:
    return [text.strip() for tokens in generated for text in tokenizer.batch_decode(tokens, skip_special_tokens=True)]


def timed(fn):
    """fn's result, wall seconds and this process's CPU seconds (all threads: work done, whoever else shares the
    machine; wall time on a busy machine measures the neighbours)."""
    started, cpu_started = time.perf_counter(), time.process_time()
    result = fn()
    return result, (time.perf_counter() - started, time.process_time() - cpu_started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tiny model (tests/conftest-style), 32 examples")
    parser.add_argument("--examples", type=int, default=None, help="selection-split examples (100; --quick 32)")
    parser.add_argument("--repeats", type=int, default=None, help="timed passes each way (2; --quick 3)")
    parser.add_argument("--adapter", type=Path, default=None, help="a saved PEFT adapter directory to evaluate")
    parser.add_argument("--lora-std", type=float, default=None,
                        help="std of the seeded LoRA B noise without --adapter (0.01; --quick 0.5: the random tiny "
                             "model says only newlines without a large one)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (model=..., eval.generation.batch_size=...)")
    args = parser.parse_args(argv)
    n_examples = args.examples or (32 if args.quick else 100)
    repeats = args.repeats or (3 if args.quick else 2)
    lora_std = args.lora_std if args.lora_std is not None else (0.5 if args.quick else 0.01)
    cfg = compose_run_config([*(QUICK if args.quick else []), *args.overrides])
    gen = cfg.eval.generation

    # As a trial: the base loaded for training (k-bit prepared), an adapter on it, the selection split.
    base = load_base_model(cfg.model, cfg.quant, device=cfg.train.device)
    tokenizer = base.tokenizer
    if args.adapter is not None:
        model = load_adapter(base.model, args.adapter)
    else:
        model = attach_lora(base.model, cfg.lora)
        randomize_lora_b(model, lora_std, cfg.seed)
    examples = load_eval_splits(cfg.eval)["selection"][:n_examples]

    def swap_once():
        with fast_cpu_inference(model):
            pass

    _, swap_seconds = timed(swap_once)
    batches = bare_batches(model, tokenizer, examples, gen.batch_size)

    def run_harness():
        return timed(lambda: harness_outputs(model, tokenizer, cfg.eval, examples))

    def run_bare():
        with fast_cpu_inference(model):
            generated, seconds = timed(lambda: bare_generate(model, tokenizer, batches, gen.max_new_tokens))
        return decode(tokenizer, generated), seconds

    harness_outputs(model, tokenizer, cfg.eval, examples[: gen.batch_size])  # warm-up, untimed
    run_bare()
    times = {"harness": [], "bare": []}
    outputs = {"harness": [], "bare": []}
    for repeat in range(repeats):
        order = [("harness", run_harness), ("bare", run_bare)]
        for name, run in order if repeat % 2 == 0 else order[::-1]:
            texts, seconds = run()
            times[name].append(seconds)
            outputs[name].append(texts)

    wall = {name: [w for w, _ in seconds] for name, seconds in times.items()}
    cpu = {name: [c for _, c in seconds] for name, seconds in times.items()}
    rate = {name: n_examples / statistics.median(wall[name]) for name in times}
    cpu_rate = {name: n_examples / statistics.median(cpu[name]) for name in times}
    identical = all(texts == outputs["bare"][0] for texts in outputs["harness"] + outputs["bare"])
    differing = sum(a != b for a, b in zip(outputs["harness"][0], outputs["bare"][0], strict=True))
    print(f"generation: model {cfg.model.name_or_path} (kind {cfg.model.kind}), quant {cfg.quant.method}, "
          f"device {base.device}, adapter {args.adapter or f'fresh LoRA r={cfg.lora.r}, B ~ N(0, {lora_std})'}")
    print(f"  {n_examples} selection examples, batch {gen.batch_size}, max_new_tokens {gen.max_new_tokens}, greedy, "
          f"{repeats} timed passes each way (interleaved) after a warm-up; torch threads {torch.get_num_threads()}")
    for name in ("harness", "bare"):
        print(f"  {name:<8} {rate[name]:7.2f} examples/s wall, {cpu_rate[name]:7.2f} per CPU-second; medians of "
              f"wall [{', '.join(f'{s:.2f}' for s in wall[name])}] s, CPU [{', '.join(f'{s:.2f}' for s in cpu[name])}] s")
    print(f"  ratio harness / bare: {rate['harness'] / rate['bare']:.3f} wall, "
          f"{cpu_rate['harness'] / cpu_rate['bare']:.3f} CPU (target >= 0.9)")
    print(f"  outputs identical (harness vs bare, every pass): {'yes' if identical else 'no'}"
          f"{'' if identical else f' ({differing} of {n_examples} differ in the first pass)'}")
    print(f"  one CPU inference swap in and out (paid per harness call, not by bare): {swap_seconds[0] * 1000:.1f} ms "
          f"wall, {swap_seconds[1] * 1000:.1f} ms CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
