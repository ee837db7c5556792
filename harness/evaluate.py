"""Held-out evaluation: batched greedy generation with left padding, graded per example.

    examples = load_heldout(cfg.eval)                         # DataError naming file:line on bad rows
    heldout = evaluate_heldout(model, tokenizer, cfg.eval, examples)
    canary = check_adapter_active(peft_model, tokenizer, examples[:4])  # raises AdapterInactiveError

Every example's prompt, output, reference and grade are kept, so two models can be compared on the same
examples (paired statistics) and a report can show what an adapter fixed and broke.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from harness.config import EVAL_SPLITS, EvalConfig
from harness.data import Conversation, DataError, Message, as_messages, chat
from harness.faults import kill_point
from harness.graders import aggregate, grade, grader_version
from harness.model import fast_cpu_inference
from harness.records import CanaryResult, ExampleResult, GradeResult, HeldoutResult
from harness.stats import estimate

log = logging.getLogger(__name__)


class AdapterInactiveError(RuntimeError):
    """The adapter does not change the model's outputs: it was not loaded, not applied, or is all zeros."""


@dataclass
class HeldoutExample:
    messages: list[Message]  # the prompt: system/user turns, ending before the answer
    reference: Any
    source: str  # file:line

    def __post_init__(self) -> None:
        self.messages = as_messages(self.messages)


def load_eval_splits(eval_cfg: EvalConfig) -> dict[str, list[HeldoutExample]]:
    """Every row of the eval set, by split (harness.eval_data: configurable fields, gold answers checked against
    the graders, duplicates removed); a malformed row or a split with no rows is an error naming the file."""
    from harness.eval_data import load_eval_rows

    splits: dict[str, list[HeldoutExample]] = {name: [] for name in EVAL_SPLITS}
    for row in load_eval_rows(eval_cfg).examples:
        if row.split is None:
            raise DataError(f"{row.source}: missing field 'split' (each row needs \"split\": \"selection\" or "
                            '"reporting"; selection picks, reporting judges), or set eval.split_fraction to assign '
                            "them (python -m harness.evalset create --split-fraction does)")
        if row.split not in splits:
            raise DataError(f"{row.source}: split {row.split!r}: expected one of {', '.join(EVAL_SPLITS)} (each row "
                            'needs "split": "selection" or "reporting"; selection picks, reporting judges)')
        splits[row.split].append(HeldoutExample(row.messages, row.reference, row.source))
    for name, examples in splits.items():
        if not examples:
            raise DataError(f"{eval_cfg.data_file}: the eval set has no {name} rows (each row needs "
                            f'"split": "selection" or "reporting"; selection picks, reporting judges)')
    return splits


def load_heldout(eval_cfg: EvalConfig) -> list[HeldoutExample]:
    """The rows of the eval set's `eval.split` (its first `max_examples`); errors name the file and line."""
    examples = load_eval_splits(eval_cfg)[eval_cfg.split]
    if eval_cfg.max_examples is not None:
        examples = examples[: eval_cfg.max_examples]
    return examples


def build_prompt(
    messages: list[Message], system_prompt: str = "", fewshot: list[Conversation] | None = None
) -> list[Message]:
    """A held-out prompt, optionally with a system instruction and few-shot turns (the prompt baseline)."""
    prompt = [Message("system", system_prompt)] if system_prompt else []
    for shot in fewshot or []:
        prompt.extend(m for m in shot.messages if m.role != "system")
    return prompt + messages


@dataclass(frozen=True)
class Sampling:
    """Sampled instead of greedy generation: `n` completions per prompt, seeded (harness.pairs mines with it)."""

    n: int
    temperature: float
    top_p: float
    seed: int


def generate(model, tokenizer, prompts: list[list[Message]], max_new_tokens: int, batch_size: int,
             sampling: Sampling | None = None) -> list[str]:
    """Greedy completions for chat prompts, batched with left padding; with `sampling`, sampling.n sampled
    completions per prompt (prompt-major: prompt 0's n, then prompt 1's), the same for the same seed and batch size."""
    with fast_cpu_inference(model):
        return _generate(model, tokenizer, prompts, max_new_tokens, batch_size, sampling)


@torch.no_grad()
def _generate(model, tokenizer, prompts: list[list[Message]], max_new_tokens: int, batch_size: int,
              sampling: Sampling | None = None) -> list[str]:
    texts = [tokenizer.apply_chat_template(chat(as_messages(p)), tokenize=False, add_generation_prompt=True)
             for p in prompts]
    previous_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only: pad on the left so every row ends at its prompt's end
    device = next(model.parameters()).device
    outputs: list[str] = []
    decoding = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    if sampling is not None:  # top_k=0: no top-k cut, whatever the model's generation_config says
        decoding = {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0,
                    "num_return_sequences": sampling.n}
        torch.manual_seed(sampling.seed)  # right before the draws (every device's generator)
    model.eval()
    try:
        for start in tqdm(range(0, len(texts), batch_size), desc="generating", leave=False):
            batch = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True,
                              add_special_tokens=False).to(device)
            generated = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                **decoding,
                pad_token_id=tokenizer.pad_token_id,
            )
            new_tokens = generated[:, batch.input_ids.shape[1] :]
            outputs.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = previous_side
    return [output.strip() for output in outputs]


def evaluate_heldout(
    model,
    tokenizer,
    eval_cfg: EvalConfig,
    examples: list[HeldoutExample],
    system_prompt: str = "",
    fewshot: list[Conversation] | None = None,
) -> HeldoutResult:
    started = time.perf_counter()
    prompts = [build_prompt(example.messages, system_prompt, fewshot) for example in examples]
    outputs = generate(
        model, tokenizer, prompts, eval_cfg.generation.max_new_tokens, eval_cfg.generation.batch_size
    )
    kill_point("mid_evaluation")  # test facility (harness.faults): a no-op unless HARNESS_KILL_AT names it
    return grade_outputs(eval_cfg, examples, outputs, time.perf_counter() - started)


def grade_outputs(
    eval_cfg: EvalConfig, examples: list[HeldoutExample], outputs: list[str], seconds: float = 0.0
) -> HeldoutResult:
    """Grade outputs with every configured grader; the first grader gives the headline score."""
    per_example, grades_by_grader = [], {index: [] for index in range(len(eval_cfg.graders))}
    for example, output in zip(examples, outputs, strict=True):
        grades = {}
        for index, grader in enumerate(eval_cfg.graders):
            result = grade(grader, output, example.reference)
            grades_by_grader[index].append(result)
            grades[grader.type if index == 0 else f"{grader.type}_{index}"] = GradeResult(result.score, result.details)
        per_example.append(ExampleResult(
            source=example.source,
            prompt=example.messages[-1].content,
            output=output,
            reference=example.reference,
            score=grades_by_grader[0][-1].score,
            grades=grades,
        ))
    metrics, versions = {}, {}
    for index, grader in enumerate(eval_cfg.graders):
        name = grader.type if index == 0 else f"{grader.type}_{index}"
        versions[name] = grader_version(grader)
        for key, value in aggregate(grader, grades_by_grader[index]).items():
            metrics[f"{name}/{key}"] = value
    headline = estimate([row.score for row in per_example])
    return HeldoutResult(
        score=headline.mean,
        stderr=headline.stderr,
        ci_low=headline.ci_low,
        ci_high=headline.ci_high,
        n=headline.n,
        metrics=metrics,
        per_example=per_example,
        seconds=seconds,
        batch_size=eval_cfg.generation.batch_size,
        max_new_tokens=eval_cfg.generation.max_new_tokens,
        grader_versions=versions,
    )


def check_adapter_active(peft_model, tokenizer, examples: list[HeldoutExample], max_new_tokens: int = 32,
                         min_logit_diff: float = 1e-6) -> CanaryResult:
    """Prove the adapter is applied: its logits must differ from the base's (adapter disabled) on real prompts.

    A silently unapplied adapter (wrong target names, weights not loaded, LoRA B still zero) gives logits
    identical to the base model's, and every score after it would be the base model's score.
    """
    if not hasattr(peft_model, "disable_adapter"):
        raise AdapterInactiveError("the model has no adapter attached (not a PeftModel)")
    with fast_cpu_inference(peft_model):
        result = _canary(peft_model, tokenizer, examples, max_new_tokens)
    if result.max_logit_diff < min_logit_diff:
        raise AdapterInactiveError(
            f"adapter canary failed: logits with and without the adapter differ by at most "
            f"{result.max_logit_diff:.2e} on {result.n} held-out prompts; the adapter is not applied "
            "(or its LoRA B matrices are zero)"
        )
    return result


def chat_batch(model, tokenizer, prompts: list[list[Message]]):
    """Chat prompts rendered with the template and tokenized as one left-padded batch on the model's device."""
    texts = [tokenizer.apply_chat_template(chat(as_messages(p)), tokenize=False, add_generation_prompt=True)
             for p in prompts]
    previous_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        device = next(model.parameters()).device
        return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    finally:
        tokenizer.padding_side = previous_side


@torch.no_grad()
def _canary(peft_model, tokenizer, examples: list[HeldoutExample], max_new_tokens: int) -> CanaryResult:
    prompts = [example.messages for example in examples]
    batch = chat_batch(peft_model, tokenizer, prompts)
    peft_model.eval()
    adapted = peft_model(**batch).logits.float()
    with peft_model.disable_adapter():
        base = peft_model(**batch).logits.float()
    mask = batch.attention_mask.bool()
    max_diff = float((adapted - base).abs()[mask].max())
    adapter_outputs = generate(peft_model, tokenizer, prompts, max_new_tokens, len(prompts))
    with peft_model.disable_adapter():
        base_outputs = generate(peft_model, tokenizer, prompts, max_new_tokens, len(prompts))
    changed = sum(a != b for a, b in zip(adapter_outputs, base_outputs))
    return CanaryResult(max_logit_diff=max_diff, outputs_changed=changed, n=len(prompts))
