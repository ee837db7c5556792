"""Held-out generation's speed-ups change no output: length-bucketed batches come back in the prompts' order with
the outputs of unbucketed and one-by-one greedy generation, a batch stops when its rows hit EOS without changing
what they say, and the generation benchmark's --quick mode prints its figures (tests/benchmarks/bench_generation.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from harness.artifacts import REPO_ROOT
from harness.config import LoraConfig
from harness.data import as_messages, chat
from harness.evaluate import generate, generation_order
from harness.model import attach_lora
from tests.conftest import randomize_lora_b

# Lengths differ a lot, so longest-first reorders them across batches of 2.
PROMPTS = [[{"role": "user", "content": text}] for text in (
    "x", "A much longer prompt than the first one, with a few more words in it", "Hi there",
    "Medium length prompt here", "y z", "Another fairly long prompt that is longer than the medium one",
)]


@pytest.fixture
def noisy_adapter(tiny_base):
    """The tiny base with a LoRA adapter of seeded random B: without it the random model says only "\\n"."""
    model = attach_lora(tiny_base.model, LoraConfig(r=4, alpha=8))
    randomize_lora_b(model, 0.5)
    return model, tiny_base.tokenizer


@torch.no_grad()
def in_order_batches(model, tokenizer, prompts, max_new_tokens: int, batch_size: int) -> list[list[int]]:
    """The token ids a plain left-padded model.generate loop produces, batches in input order (no bucketing)."""
    texts = [tokenizer.apply_chat_template(chat(as_messages(p)), tokenize=False, add_generation_prompt=True) for p in prompts]
    model.eval()  # as generate() does: no LoRA dropout
    tokenizer.padding_side = "left"
    tokens = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        generated = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                                   top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id)
        tokens.extend(row.tolist() for row in generated[:, batch.input_ids.shape[1] :])
    tokenizer.padding_side = "right"
    return tokens


def decode(tokenizer, tokens: list[int]) -> str:
    return tokenizer.decode(tokens, skip_special_tokens=True).strip()


def test_bucketed_generation_returns_unbucketed_outputs_in_the_prompts_order(noisy_adapter):
    model, tokenizer = noisy_adapter
    texts = [tokenizer.apply_chat_template(chat(as_messages(p)), tokenize=False, add_generation_prompt=True) for p in PROMPTS]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False).input_ids]
    order = generation_order(lengths, bucketed=True)
    assert [order[:2], order[2:4]] != [[0, 1], [2, 3]], "the prompts must be regrouped, or nothing is tested"
    assert [lengths[i] for i in order] == sorted(lengths, reverse=True)

    bucketed = generate(model, tokenizer, PROMPTS, max_new_tokens=8, batch_size=2)
    unbucketed = [decode(tokenizer, t) for t in in_order_batches(model, tokenizer, PROMPTS, 8, 2)]
    one_by_one = [generate(model, tokenizer, [p], max_new_tokens=8, batch_size=1)[0] for p in PROMPTS]
    assert bucketed == unbucketed == one_by_one
    assert len(set(bucketed)) > 1, "distinct outputs per prompt, or a reordering would go unnoticed"
    assert generate(model, tokenizer, [], max_new_tokens=8, batch_size=2) == []


def test_stopping_at_eos_changes_no_output_and_ends_the_batch(noisy_adapter):
    model, tokenizer = noisy_adapter
    model.generation_config.eos_token_id = []  # no stop: every row runs to max_new_tokens
    full = in_order_batches(model, tokenizer, PROMPTS, 12, 3)
    varied = max(range(len(full)), key=lambda i: len(set(full[i])))
    stop = full[varied][3]  # a token the model emits early in one row (and maybe not in others): the EOS id now
    model.generation_config.eos_token_id = [stop]
    stopped = generate(model, tokenizer, PROMPTS, max_new_tokens=12, batch_size=3)
    expected = [decode(tokenizer, row[: row.index(stop) + 1] if stop in row else row) for row in full]
    assert stopped == expected
    assert stopped[varied] != decode(tokenizer, full[varied]), "that row stops early"

    forwards = []
    hook = model.lm_head.register_forward_hook(lambda *args: forwards.append(1))
    try:
        generate(model, tokenizer, [PROMPTS[varied]], max_new_tokens=12, batch_size=1)
    finally:
        hook.remove()
    assert len(forwards) == full[varied].index(stop) + 1, "a batch whose rows all hit EOS stops there"


@pytest.mark.slow  # a subprocess that loads torch, transformers and the tiny model: 20 s idle, minutes on a busy machine
def test_generation_benchmark_quick_mode_prints_its_figures(tmp_path):
    env = {**os.environ, "HARNESS_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "tests/benchmarks/bench_generation.py", "--quick", "--repeats", "2"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert re.search(r"harness +\d+\.\d\d examples/s wall, +\d+\.\d\d per CPU-second", out)
    assert re.search(r"bare +\d+\.\d\d examples/s wall, +\d+\.\d\d per CPU-second", out)
    assert re.search(r"ratio harness / bare: \d+\.\d{3} wall, \d+\.\d{3} CPU", out)
    assert "outputs identical (harness vs bare, every pass): yes" in out
