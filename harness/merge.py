"""Merge an adapter into its base and prove the merged model behaves as the evaluated one (the proof behind
harness.export; its docstring lists the checks and the two merge modes).

    evidence = prove_and_merge(cfg, results, adapter_dir, adapter, canary, checked, recorded, merge_into, merged_dir)
    evidence.proof    # [Check]: scaling, adapter hash, as-evaluated outputs, merged delta, logits, greedy outputs
"""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.config import QuantConfig, RunConfig
from harness.records import AdapterIdentity, RunResults
from harness.serving import AdapterConfig, BaseModelInfo, Check, MergedModel, lora_scaling, vllm_checks


class MergeError(Exception):
    """The run's artifacts cannot be merged (e.g. no target layer to check); the message names the path."""


# Largest |logit| difference accepted between the merged model and base + adapter. fp32: the merge only reorders
# the same float operations (measured ~4e-7 on the tiny model). 16-bit compute rounds the evaluated path's
# activations; those tolerances are stated bounds, not measurements.
LOGIT_TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 0.25, torch.float16: 0.1}
# |(W_merged - W_base) - scaling * B @ A| allowed, relative to max |W_base|: fp32 rounding of W + delta.
DELTA_RELATIVE_TOLERANCE = 1e-5

@dataclass
class Evidence:
    proof: list[Check]
    vllm: list[Check]
    base: BaseModelInfo  # the base model's identity and where it ran
    merged: MergedModel  # how the merge was done
    adapter_hash: str


def prove_and_merge(cfg: RunConfig, results: RunResults, adapter_dir: Path, adapter: AdapterConfig, canary: list,
                     checked: list, recorded: dict[str, str], merge_into: str, merged_dir: Path) -> Evidence:
    from transformers import AutoModelForCausalLM

    from harness.evaluate import generate
    from harness.model import adapter_hash, load_base_model

    gen = cfg.eval.generation
    prompts = [e.messages for e in checked]
    canary_prompts = [e.messages for e in canary]

    # a. The evaluated model: the run's base (NF4 where it was), held as the run held it, with the adapter.
    base = load_base_model(cfg.model, cfg.quant, cfg.train.device, gradient_checkpointing=False)
    architecture = type(base.model).__name__
    linear_names = {n for n, m in base.model.named_modules() if isinstance(m, torch.nn.Linear)}
    vllm = vllm_checks(adapter, linear_names, architecture)
    base_info = BaseModelInfo(
        id=results.model.id, hash=results.model.hash, quantized=results.model.quantized,
        compute_dtype=str(base.compute_dtype), architecture=architecture, local_dir=str(base.model_dir),
        device=base.device,
        serve_as=cfg.model.name_or_path if cfg.model.kind == "hf" else str(base.model_dir.resolve()),
    )
    hashed = adapter_hash(adapter_dir)
    same_base = base.model_hash == results.model.hash
    proof = [
        _scaling_check(adapter, results.adapter),
        _adapter_hash_check(hashed, results.adapter.hash),
        Check("base_hash_matches_run", same_base, f"base model hash {base.model_hash}"
              + ("" if same_base else f" != recorded {results.model.hash}"), gating=False),
    ]
    adapted = _load_adapter(base.model, adapter_dir)
    reference_logits, mask = _logits(adapted, base.tokenizer, canary_prompts)
    reference_outputs = generate(adapted, base.tokenizer, prompts, gen.max_new_tokens, gen.batch_size)
    proof.append(_as_evaluated_check(checked, reference_outputs, recorded, results, base))

    # b. The merge target: the dequantized NF4 weights (default), or the original full-precision weights.
    if base.quantized and merge_into == "original":
        del adapted
        base.model = None
        gc.collect()
        plain = load_base_model(cfg.model, QuantConfig(method="none", compute_dtype="float32"), cfg.train.device,
                                for_training=False).model
        mode = "original"
        changes = ("merged into the original full-precision base weights: differs from what was evaluated "
                   "(NF4 base + adapter) by the NF4 quantization error; agreement is measured, not required")
    else:
        plain = adapted.unload()  # the base without LoRA layers, nothing merged
        if base.quantized:
            _dequantize_in_place(plain)
            mode = "dequantized_nf4"
            changes = ("merged into the dequantized NF4 weights the adapter was trained and evaluated on: "
                       "reproduces the evaluated model up to float rounding; the NF4 quantization error stays in "
                       "the merged weights")
        else:
            mode = "unquantized"
            changes = "merged into the run's own unquantized base weights"
    for tensor in [*plain.parameters(), *plain.buffers()]:
        if tensor.is_floating_point():
            tensor.data = tensor.data.float()
    layer = _delta_layer(adapter_dir)
    w_base = plain.get_submodule(layer).weight.detach().clone()
    merged = _load_adapter(plain, adapter_dir).merge_and_unload()
    _save_plain(merged, base.tokenizer, merged_dir)
    del merged, plain
    gc.collect()

    # c. The saved merged model, loaded as a runtime loads it, against the evaluated model.
    reloaded = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32,
                                                    device_map={"": 0 if base.device == "cuda" else "cpu"})
    gating = mode != "original"
    proof.append(_delta_check(reloaded, layer, w_base, adapter_dir, adapter))
    merged_logits, _ = _logits(reloaded, base.tokenizer, canary_prompts)
    diff = float((merged_logits - reference_logits).abs()[mask].max())
    tolerance = LOGIT_TOLERANCE.get(base.compute_dtype, LOGIT_TOLERANCE[torch.bfloat16])
    proof.append(Check("merged_logits", diff <= tolerance,
                       f"max |logit diff| merged vs base + adapter on {len(canary)} canary prompts: {diff:.2e} "
                       f"(tolerance {tolerance:g} for {base.compute_dtype} compute)",
                       measured=diff, tolerance=tolerance, gating=gating))
    merged_outputs = generate(reloaded, base.tokenizer, prompts, gen.max_new_tokens, gen.batch_size)
    differing = [e.source for e, a, b in zip(checked, merged_outputs, reference_outputs) if a != b]
    proof.append(Check("merged_greedy", not differing,
                       f"merged greedy outputs identical to base + adapter on {len(checked)} held-out examples"
                       if not differing else f"merged greedy outputs differ from base + adapter on "
                       f"{len(differing)}/{len(checked)} held-out examples (first: {differing[0]})",
                       measured=float(len(differing)), gating=gating))
    merged_info = MergedModel(merge_into=mode, what_it_changes=changes, dtype="float32",
                              loads_with="AutoModelForCausalLM.from_pretrained(<merged>)")
    return Evidence(proof, vllm, base_info, merged_info, hashed)


def _load_adapter(model, adapter_dir: Path):
    """harness.model.load_adapter, with PEFT's refusals (e.g. no target module found) as bad input."""
    from harness.model import load_adapter

    try:
        return load_adapter(model, adapter_dir)
    except (ValueError, KeyError, RuntimeError) as err:
        raise MergeError(f"{adapter_dir}: PEFT cannot load this adapter on the base: {' '.join(str(err).split())}") from None


def _scaling_check(adapter: AdapterConfig, recorded: AdapterIdentity) -> Check:
    """The adapter's declared scale vs the one the run trained and evaluated with (the harness's LoRA: alpha/r)."""
    trained = lora_scaling(recorded.r, recorded.alpha, use_rslora=False)
    declared = adapter.scaling()
    r, alpha, rule = adapter.r, adapter.lora_alpha, adapter.scaling_rule
    if r == recorded.r and math.isclose(declared, trained, rel_tol=1e-9):
        return Check("scaling_matches_run", True, f"scale {declared:g} ({rule} = {alpha:g}/{r}), as trained and "
                     "evaluated", measured=declared)
    return Check("scaling_matches_run", False,
                 f"adapter_config.json scales the update by {declared:g} ({rule}; r={r}, lora_alpha={alpha:g}, "
                 f"use_rslora={adapter.use_rslora}) but the run trained and evaluated it at {trained:g} (alpha/r = "
                 f"{recorded.alpha:g}/{recorded.r}): a server would run another model than the one scored",
                 fix="restore the adapter_config.json the run saved (r, lora_alpha, use_rslora)", measured=declared)


def _adapter_hash_check(hashed: str, recorded: str) -> Check:
    """The adapter's content hash (tensors + LoRA hyperparameters) vs results.json's: the adapter scored?"""
    if hashed == recorded:
        return Check("adapter_hash_matches_run", True, "adapter hashes as results.json recorded")
    return Check("adapter_hash_matches_run", False,
                 f"adapter hash {hashed[:12]} != {recorded[:12]} recorded in results.json: its weights or LoRA "
                 "hyperparameters changed after the run (or results.json predates the harness's adapter hash)",
                 fix="export the adapter the run evaluated, or re-evaluate this one (python -m harness.gate "
                 "evaluate)")


def _as_evaluated_check(checked: list, outputs: list[str], recorded: dict[str, str], results: RunResults,
                        base) -> Check:
    differing = [e.source for e, output in zip(checked, outputs) if output != recorded[e.source]]
    if not differing:
        return Check("adapter_as_evaluated", True, "base + adapter regenerates the run's recorded greedy outputs "
                     f"on {len(checked)} held-out examples", measured=0.0)
    ran = (results.metrics.device, results.metrics.compute_dtype)
    where = ""
    if ran != (base.device, str(base.compute_dtype)):
        where = (f"; the run evaluated on {ran[0]} with {ran[1]} compute, this export ran on {base.device} with "
                 f"{base.compute_dtype}: pass train.device={ran[0]} to compare like with like")
    return Check("adapter_as_evaluated", False,
                 f"base + adapter does not regenerate the run's recorded outputs on {len(differing)}/"
                 f"{len(checked)} held-out examples (first: {differing[0]}): the adapter, its config or the base "
                 f"changed after evaluation{where}",
                 fix="export the adapter the run evaluated, or re-evaluate this one (python -m harness.gate "
                 "evaluate)", measured=float(len(differing)))


def _delta_check(merged, layer: str, w_base: torch.Tensor, adapter_dir: Path, adapter: AdapterConfig) -> Check:
    """W_merged - W_base against scaling * B @ A, from the adapter file's tensors, for one target layer."""
    if adapter.use_dora:
        return Check("merged_delta", True, f"{layer}: skipped (DoRA rescales the merged weight's columns)",
                     gating=False)
    from safetensors.torch import load_file

    tensors = load_file(adapter_dir / "adapter_model.safetensors")
    prefix = f"base_model.model.{layer}"
    lora_a, lora_b = tensors[f"{prefix}.lora_A.weight"].float(), tensors[f"{prefix}.lora_B.weight"].float()
    scaling = adapter.scaling(layer)
    expected = scaling * (lora_b @ lora_a)
    if adapter.fan_in_fan_out:
        expected = expected.T
    delta = merged.get_submodule(layer).weight.detach().float().cpu() - w_base.cpu()
    error = float((delta - expected).abs().max())
    tolerance = DELTA_RELATIVE_TOLERANCE * max(1.0, float(w_base.abs().max()))
    return Check("merged_delta", error <= tolerance,
                 f"{layer}: max |(W_merged - W_base) - {scaling:g} * B @ A| = {error:.2e} (tolerance "
                 f"{tolerance:.1e}; scale {adapter.scaling_rule}; |scale * B @ A| up to "
                 f"{float(expected.abs().max()):.2e})", measured=error, tolerance=tolerance)


@torch.no_grad()
def _logits(model, tokenizer, prompts: list[list[dict]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits over a left-padded batch of chat prompts (as the canary feeds them) and its attention mask."""
    from harness.evaluate import chat_batch
    from harness.model import fast_cpu_inference

    batch = chat_batch(model, tokenizer, prompts)
    model.eval()
    with fast_cpu_inference(model):
        logits = model(**batch).logits.float().cpu()
    return logits, batch.attention_mask.bool().cpu()


def _dequantize_in_place(model: torch.nn.Module) -> None:
    """Replace each bitsandbytes 4-bit layer by an fp32 Linear holding exactly the weight it computed with."""
    import bitsandbytes as bnb

    from harness.model import _dequantized_weight

    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, bnb.nn.Linear4bit):
                weight = _dequantized_weight(child).float()
                plain = torch.nn.Linear(child.in_features, child.out_features, bias=child.bias is not None,
                                        device=weight.device, dtype=torch.float32)
                plain.weight = torch.nn.Parameter(weight, requires_grad=False)
                if child.bias is not None:
                    plain.bias = torch.nn.Parameter(child.bias.data.float(), requires_grad=False)
                setattr(parent, child_name, plain)


def _delta_layer(adapter_dir: Path) -> str:
    """The module path of the adapter's first LoRA layer, e.g. model.layers.0.self_attn.k_proj."""
    from safetensors import safe_open

    with safe_open(adapter_dir / "adapter_model.safetensors", framework="pt") as handle:
        keys = sorted(k for k in handle.keys() if k.endswith(".lora_A.weight"))  # noqa: SIM118 (not iterable)
    if not keys:
        raise MergeError(f"{adapter_dir / 'adapter_model.safetensors'}: no lora_A weights in it")
    return keys[0].removeprefix("base_model.model.").removesuffix(".lora_A.weight")


def _save_plain(model, tokenizer, merged_dir: Path) -> None:
    """Save merged weights as a plain (never quantized) transformers model, with its tokenizer beside it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    # A model loaded through bitsandbytes keeps its quantizer and refuses a plain save: rebuild from the config.
    config_dict = model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.update(dtype="float32")
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config_dict), dtype=torch.float32)
    state = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    fresh.load_state_dict(state, strict=True, assign=True)
    fresh.tie_weights()
    fresh.generation_config = model.generation_config
    fresh.save_pretrained(merged_dir, safe_serialization=True)
    tokenizer.save_pretrained(merged_dir)
