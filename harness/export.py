"""Ship a trained adapter: prove that it serves as it was evaluated, and export it.

    python -m harness.export <run or trial dir> [--out DIR] [--merge-into dequantized|original] [--name NAME]
        [key=value ...]        # overrides on the run's config.yaml, e.g. train.device=cpu

Writes --out (default <run dir>/export) atomically, and only into a directory export created itself:
  adapter/          the PEFT adapter as trained (adapter_config.json + adapter_model.safetensors)
  merged/           base + adapter merged into one fp32 safetensors model with the tokenizer beside it:
                    AutoModelForCausalLM.from_pretrained(merged/), for runtimes without LoRA (llama.cpp, Ollama)
  serving.json      base model identity, rank, alpha, scaling rule, target modules, the vLLM command, the checks
  serving_card.md   the same for a reader
  export.json       this export's record under `export`, earlier exports of the directory under `previous`

An NF4-trained adapter is merged into the dequantized NF4 weights by default (`--merge-into dequantized`): the
weights it was trained and evaluated on, read back exactly as `harness.model._dequantized_weight` does. The
merged model then reproduces the evaluated one up to float rounding, and keeps the NF4 quantization error.
`--merge-into original` merges into the original full-precision weights: closer to the unquantized base, but it
differs from what was evaluated (NF4 base + adapter) by the NF4 quantization error, so its agreement with the
evaluated model is measured and reported, not required. An unquantized run has one merge: into its own base.

Proof, run at every export and recorded:
  scaling_matches_run    adapter_config.json's scale (alpha/r; alpha/sqrt(r) with use_rslora) is the one the run
                         trained and evaluated with (results.json `adapter`): a config edited afterwards is caught
  adapter_as_evaluated   base + adapter, on the evaluation's inference path, regenerates the run's recorded greedy
                         outputs (results.json, final stage) on the evaluation's first batch of held-out examples
  merged_delta           W_merged - W_base == scaling * B @ A for one target layer, read from the saved files
  merged_logits          merged model (reloaded from disk) vs base + adapter on the canary prompts: max |logit
                         difference| within LOGIT_TOLERANCE for the compute dtype
  merged_greedy          the merged model's greedy outputs == base + adapter's on the same examples
vLLM's documented LoRA constraints (encoded here; vLLM is not needed): rank <= 512, served with
`--max-lora-rank` = the smallest allowed value >= r; no DoRA; bias == "none"; no modules_to_save; every target
module a Linear layer of the base.

Exit codes: 0 shipped, every check passed. 1 not shipped: the proof failed; only the record and the card are
written. 2 bad input: one line naming the path; nothing written. 3 shipped and proven, but vLLM would refuse
the adapter as it is: serve merged/, or apply the printed fix.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from harness.artifacts import (
    git_revision,
    library_versions,
    replace_dir_atomic,
    write_json_atomic,
    write_text_atomic,
)
from harness.config import QuantConfig, RunConfig

EXPORT_FORMAT = "harness.export/v1"
SERVING_FORMAT = "harness.export/serving-v1"
EXIT_CODES = {"shipped": 0, "not_as_evaluated": 1, "bad_input": 2, "vllm_refuses": 3}
# vLLM's LoRAConfig.max_lora_rank: Literal[1, 8, 16, 32, 64, 128, 256, 320, 512], default 16. It sizes the
# server's LoRA slots; it is not a rank the adapter must equal. An adapter loads when r <= --max-lora-rank
# (PEFTHelper.validate_legal) and a smaller one is zero-padded into the slot: padding costs compute, not accuracy.
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
VLLM_DEFAULT_MAX_LORA_RANK = 16
# Largest |logit| difference accepted between the merged model and base + adapter. fp32: the merge only reorders
# the same float operations (measured ~4e-7 on the tiny model). 16-bit compute rounds the evaluated path's
# activations; those tolerances are stated bounds, not measurements.
LOGIT_TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 0.25, torch.float16: 0.1}
# |(W_merged - W_base) - scaling * B @ A| allowed, relative to max |W_base|: fp32 rounding of W + delta.
DELTA_RELATIVE_TOLERANCE = 1e-5
MERGE_MODES = ("dequantized", "original")


class ExportError(Exception):
    """Bad input: a missing or malformed run directory, config, adapter or output directory (exit 2)."""


@dataclass
class Check:
    """One serving or proof check. Gating checks decide the exit code; the others are shown and recorded."""

    name: str
    ok: bool
    message: str
    fix: str = ""
    measured: float | None = None
    tolerance: float | None = None
    gating: bool = True


@dataclass
class ExportResult:
    out_dir: Path
    exit_code: int
    verdict: str  # one line: what was shipped, or why not
    vllm_command: str
    vllm_checks: list[Check]
    proof: list[Check]
    seconds: float
    record: dict = field(default_factory=dict)


def export_run(run_dir: Path, out_dir: Path | None = None, overrides: list[str] | None = None,
               merge_into: str = "dequantized", name: str | None = None) -> ExportResult:
    """Export one finished run or sweep trial. Bad input raises ExportError (or DataError) before any write."""
    started = time.perf_counter()
    # 1. Inputs: the run's files and config, and the output directory, checked before any model loads.
    run_dir = Path(run_dir)
    overrides = list(overrides or [])
    results, adapter_dir, adapter_config = _read_run(run_dir)
    cfg = run_config_from(run_dir, overrides)
    if merge_into not in MERGE_MODES:
        raise ExportError(f"--merge-into {merge_into!r}: expected one of {', '.join(MERGE_MODES)}")
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "export"
    previous = _check_out_dir(out_dir)

    # 2. The eval set must be the one the run was scored on, or its recorded outputs prove nothing.
    from harness.evalset import verify_frozen
    from harness.evaluate import load_heldout

    eval_set_hash = verify_frozen(cfg.eval)
    if eval_set_hash != results["eval_set"]["hash"]:
        raise ExportError(f"{run_dir / 'results.json'}: eval set hash {results['eval_set']['hash']} != "
                          f"current {eval_set_hash}: pass the run's eval overrides")
    heldout = load_heldout(cfg.eval)
    recorded = _recorded_outputs(results, run_dir)
    # The evaluation's first batch, so that left padding (and so the arithmetic) is the one the run had.
    checked = heldout[: max(cfg.eval.canary_examples, min(cfg.eval.generation.batch_size, len(heldout)))]
    missing = [e.source for e in checked if e.source not in recorded]
    if missing:
        raise ExportError(f"{run_dir / 'results.json'}: no recorded output for {missing[0]}")

    # 3. Prove and merge into a staging directory beside --out; publish it with one rename.
    staging = Path(tempfile.mkdtemp(dir=_parent(out_dir), prefix=f".{out_dir.name}.export-"))
    try:
        evidence = _prove_and_merge(cfg, results, adapter_dir, adapter_config, heldout[: cfg.eval.canary_examples],
                                    checked, recorded, merge_into, staging / "merged")
        proof_ok = all(c.ok for c in evidence.proof if c.gating)
        if proof_ok:
            (staging / "adapter").mkdir()
            for file_name in ("adapter_config.json", "adapter_model.safetensors"):
                shutil.copy2(adapter_dir / file_name, staging / "adapter" / file_name)
        else:
            shutil.rmtree(staging / "merged")  # never ship what does not behave as evaluated
        if cfg.model.chat_template:
            write_text_atomic(staging / "chat_template.jinja", cfg.model.chat_template)
        serving = _serving_record(cfg, adapter_dir, adapter_config, evidence, checked, out_dir.resolve(),
                                  name or default_lora_name(run_dir), proof_ok)
        record = {
            "run_dir": str(run_dir),
            "results": str(run_dir / "results.json"),
            "overrides": overrides,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "exit_code": serving["exit_code"],
            "verdict": serving["verdict"],
            "serving": serving,
            "git_revision": git_revision(),
            "library_versions": library_versions(),
            "device": evidence.base["device"],
            "wall_time_s": round(time.perf_counter() - started, 2),
        }
        write_json_atomic(staging / "serving.json", serving)
        write_text_atomic(staging / "serving_card.md", serving_card(serving, record))
        record["files"] = sorted([str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file()]
                                 + ["export.json"])
        write_json_atomic(staging / "export.json",
                          {"format": EXPORT_FORMAT, "export": record, "previous": previous})
        staging.chmod(0o755)  # mkdtemp makes it owner-only; an export is shared like the run it came from
        replace_dir_atomic(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(out_dir, serving["exit_code"], serving["verdict"], serving["vllm"]["command"],
                        evidence.vllm, evidence.proof, record["wall_time_s"], record)


def export_command(run_dir: Path) -> str:
    """The command the report's verdict section prints under the adapter it recommends."""
    return f"python -m harness.export {run_dir}"


# ---------------------------------------------------------------------------------------------------------
# vLLM's documented LoRA constraints


def vllm_max_lora_rank(rank: int) -> int | None:
    """The smallest `--max-lora-rank` vLLM accepts that holds an adapter of this rank (None: none does)."""
    return next((allowed for allowed in VLLM_MAX_LORA_RANKS if allowed >= rank), None)


def unservable_ranks(ranks: list[int]) -> list[int]:
    """Ranks no `--max-lora-rank` can serve (above 512). Ranks <= 0 are config errors, not serving ones."""
    return sorted({int(r) for r in ranks if int(r) > 0 and vllm_max_lora_rank(int(r)) is None})


def check_servable_ranks(ranks: list[int], key: str) -> None:
    """Raise ValueError naming `key` if vLLM cannot serve one of the ranks (sweeps call this before trial 0)."""
    bad = unservable_ranks(ranks)
    if bad:
        largest = VLLM_MAX_LORA_RANKS[-1]
        raise ValueError(f"{key}={list(ranks)}: rank(s) {bad} cannot be served by vLLM (largest --max-lora-rank "
                         f"is {largest}); use {largest} or lower, or set sweep.servable_ranks_only=false")


def adapter_rank(adapter_config: dict) -> int:
    """The adapter's largest rank (rank_pattern can raise single modules above r)."""
    pattern = adapter_config.get("rank_pattern") or {}
    return max([int(adapter_config["r"]), *(int(v) for v in pattern.values())])


def vllm_checks(adapter_config: dict, linear_names: set[str], architecture: str = "the base model") -> list[Check]:
    """The adapter against vLLM's LoRA constraints; `linear_names` are the base's Linear module paths."""
    rank = adapter_rank(adapter_config)
    max_rank = vllm_max_lora_rank(rank)
    largest = VLLM_MAX_LORA_RANKS[-1]
    if max_rank is None:
        rank_check = Check("vllm_rank", False, f"rank {rank} is not servable by vLLM: the largest --max-lora-rank "
                           f"is {largest}", fix=f"retrain with r <= {largest}, or serve merged/")
    elif max_rank != rank:
        rank_check = Check("vllm_rank", True, f"rank {rank} loads with --max-lora-rank {max_rank}, the smallest "
                           f"allowed value >= {rank}; vLLM zero-pads it to {max_rank}, which costs compute, not "
                           f"accuracy (r={_allowed_neighbours(rank)} would fill the slot)")
    else:
        default = " (vLLM's default)" if max_rank == VLLM_DEFAULT_MAX_LORA_RANK else ""
        rank_check = Check("vllm_rank", True, f"rank {rank}: --max-lora-rank {max_rank}{default}")
    checks = [rank_check]

    if adapter_config.get("use_dora"):
        checks.append(Check("vllm_dora", False, "use_dora=true: vLLM does not support DoRA adapters",
                            fix="retrain with plain LoRA (use_dora=false), or serve merged/"))
    else:
        checks.append(Check("vllm_dora", True, "no DoRA"))
    bias = adapter_config.get("bias", "none")
    if bias != "none":
        checks.append(Check("vllm_bias", False, f"bias={bias!r}: vLLM refuses adapter bias terms (older versions "
                            "load them only with --enable-lora-bias)", fix="retrain with bias='none', or serve "
                            "merged/"))
    else:
        checks.append(Check("vllm_bias", True, "bias='none'"))
    extras = adapter_config.get("modules_to_save")
    if extras:
        checks.append(Check("vllm_modules_to_save", False, f"modules_to_save={list(extras)}: vLLM only supports "
                            "modules_to_save being None (fully trained extra modules are not loaded)",
                            fix="retrain without modules_to_save, or serve merged/"))
    else:
        checks.append(Check("vllm_modules_to_save", True, "no modules_to_save"))
    targets = adapter_config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    unknown = [t for t in targets if not any(_target_matches(t, path) for path in linear_names)]
    if unknown:
        leaves = sorted({path.rsplit(".", 1)[-1] for path in linear_names})
        checks.append(Check("vllm_target_modules", False, f"target module(s) {unknown} match no Linear layer of "
                            f"{architecture}; vLLM checks target names against the architecture at load",
                            fix=f"target only existing Linear names: {', '.join(leaves)}"))
    else:
        checks.append(Check("vllm_target_modules", True, f"every target module is a Linear layer of {architecture}"))
    return checks


def vllm_command(base: str, lora_name: str, adapter_dir: Path, max_lora_rank: int | None,
                 revision: str | None = None, chat_template: Path | None = None) -> str:
    """The `vllm serve` command that loads the base with this adapter, requested as model `lora_name`."""
    parts = ["vllm", "serve", base]
    if revision:
        parts += ["--revision", revision]
    parts += ["--enable-lora", "--lora-modules", f"{lora_name}={adapter_dir}"]
    if max_lora_rank is not None:
        parts += ["--max-lora-rank", str(max_lora_rank)]
    if chat_template is not None:
        parts += ["--chat-template", str(chat_template)]
    return " ".join(parts)


def _allowed_neighbours(rank: int) -> str:
    below = [r for r in VLLM_MAX_LORA_RANKS if r < rank][-1:]
    above = [r for r in VLLM_MAX_LORA_RANKS if r > rank][:1]
    return " or ".join(str(r) for r in below + above)


def _target_matches(target: str, module_path: str) -> bool:
    """PEFT's rule: a name matches a module path exactly or as its last component(s); a string is a regex."""
    return (module_path == target or module_path.endswith("." + target)
            or re.fullmatch(target, module_path) is not None)


# ---------------------------------------------------------------------------------------------------------
# Scaling


def lora_scaling(r: int, alpha: float, use_rslora: bool) -> float:
    """LoRA's update scale: alpha / r, or alpha / sqrt(r) for rank-stabilised LoRA (rsLoRA)."""
    return alpha / math.sqrt(r) if use_rslora else alpha / r


def adapter_scaling(adapter_config: dict, layer: str | None = None) -> float:
    """The scale PEFT applies to `layer` (rank_pattern / alpha_pattern override r / lora_alpha per module)."""
    r, alpha = int(adapter_config["r"]), float(adapter_config["lora_alpha"])
    if layer is not None:
        r = int(_pattern_value(adapter_config.get("rank_pattern"), layer, r))
        alpha = float(_pattern_value(adapter_config.get("alpha_pattern"), layer, alpha))
    return lora_scaling(r, alpha, bool(adapter_config.get("use_rslora")))


def _pattern_value(pattern: dict | None, layer: str, default):
    for key, value in (pattern or {}).items():
        if re.match(rf"(.*\.)?({key})$", layer):
            return value
    return default


def _scaling_rule(adapter_config: dict) -> str:
    return "alpha/sqrt(r)" if adapter_config.get("use_rslora") else "alpha/r"


def _scaling_check(adapter_config: dict, results: dict) -> Check:
    """The adapter's declared scale vs the one the run trained and evaluated with (the harness's LoRA: alpha/r)."""
    run_r, run_alpha = int(results["adapter"]["r"]), float(results["adapter"]["alpha"])
    trained = lora_scaling(run_r, run_alpha, use_rslora=False)
    declared = adapter_scaling(adapter_config)
    r, alpha, rule = adapter_config["r"], float(adapter_config["lora_alpha"]), _scaling_rule(adapter_config)
    if int(r) == run_r and math.isclose(declared, trained, rel_tol=1e-9):
        return Check("scaling_matches_run", True, f"scale {declared:g} ({rule} = {alpha:g}/{r}), as trained and "
                     "evaluated", measured=declared)
    return Check("scaling_matches_run", False,
                 f"adapter_config.json scales the update by {declared:g} ({rule}; r={r}, lora_alpha={alpha:g}, "
                 f"use_rslora={bool(adapter_config.get('use_rslora'))}) but the run trained and evaluated it at "
                 f"{trained:g} (alpha/r = {run_alpha:g}/{run_r}): a server would run another model than the one "
                 "scored", fix="restore the adapter_config.json the run saved (r, lora_alpha, use_rslora)",
                 measured=declared)


# ---------------------------------------------------------------------------------------------------------
# Proof and merge


@dataclass
class _Evidence:
    proof: list[Check]
    vllm: list[Check]
    base: dict  # the base model's identity and where it ran
    merged: dict  # how the merge was done


def _prove_and_merge(cfg: RunConfig, results: dict, adapter_dir: Path, adapter_config: dict, canary: list,
                     checked: list, recorded: dict[str, str], merge_into: str, merged_dir: Path) -> _Evidence:
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
    vllm = vllm_checks(adapter_config, linear_names, architecture)
    base_info = {
        "id": results["model"]["id"], "hash": results["model"]["hash"], "quantized": results["model"]["quantized"],
        "compute_dtype": str(base.compute_dtype), "architecture": architecture, "local_dir": str(base.model_dir),
        "device": base.device,
        "serve_as": cfg.model.name_or_path if cfg.model.kind == "hf" else str(base.model_dir.resolve()),
    }
    same_adapter = adapter_hash(adapter_dir) == results["adapter"]["hash"]
    same_base = base.model_hash == results["model"]["hash"]
    proof = [
        _scaling_check(adapter_config, results),
        Check("adapter_hash_matches_run", same_adapter, "adapter files hash as results.json recorded"
              if same_adapter else "adapter files differ from the hash results.json recorded (edited after the "
              "run, or hashed by another harness version); the behaviour checks decide", gating=False),
        Check("base_hash_matches_run", same_base, f"base model hash {base.model_hash}"
              + ("" if same_base else f" != recorded {results['model']['hash']}"), gating=False),
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
    proof.append(_delta_check(reloaded, layer, w_base, adapter_dir, adapter_config))
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
    merged_info = {"merge_into": mode, "what_it_changes": changes, "dtype": "float32",
                   "loads_with": "AutoModelForCausalLM.from_pretrained(<merged>)"}
    return _Evidence(proof, vllm, base_info, merged_info)


def _load_adapter(model, adapter_dir: Path):
    """harness.model.load_adapter, with PEFT's refusals (e.g. no target module found) as bad input."""
    from harness.model import load_adapter

    try:
        return load_adapter(model, adapter_dir)
    except (ValueError, KeyError, RuntimeError) as err:
        raise ExportError(f"{adapter_dir}: PEFT cannot load this adapter on the base: {_one_line(err)}") from None


def _as_evaluated_check(checked: list, outputs: list[str], recorded: dict[str, str], results: dict,
                        base) -> Check:
    differing = [e.source for e, output in zip(checked, outputs) if output != recorded[e.source]]
    if not differing:
        return Check("adapter_as_evaluated", True, "base + adapter regenerates the run's recorded greedy outputs "
                     f"on {len(checked)} held-out examples", measured=0.0)
    ran = (results.get("metrics", {}).get("device"), results.get("metrics", {}).get("compute_dtype"))
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


def _delta_check(merged, layer: str, w_base: torch.Tensor, adapter_dir: Path, adapter_config: dict) -> Check:
    """W_merged - W_base against scaling * B @ A, from the adapter file's tensors, for one target layer."""
    if adapter_config.get("use_dora"):
        return Check("merged_delta", True, f"{layer}: skipped (DoRA rescales the merged weight's columns)",
                     gating=False)
    from safetensors.torch import load_file

    tensors = load_file(adapter_dir / "adapter_model.safetensors")
    prefix = f"base_model.model.{layer}"
    lora_a, lora_b = tensors[f"{prefix}.lora_A.weight"].float(), tensors[f"{prefix}.lora_B.weight"].float()
    scaling = adapter_scaling(adapter_config, layer)
    expected = scaling * (lora_b @ lora_a)
    if adapter_config.get("fan_in_fan_out"):
        expected = expected.T
    delta = merged.get_submodule(layer).weight.detach().float().cpu() - w_base.cpu()
    error = float((delta - expected).abs().max())
    tolerance = DELTA_RELATIVE_TOLERANCE * max(1.0, float(w_base.abs().max()))
    return Check("merged_delta", error <= tolerance,
                 f"{layer}: max |(W_merged - W_base) - {scaling:g} * B @ A| = {error:.2e} (tolerance "
                 f"{tolerance:.1e}; scale {_scaling_rule(adapter_config)}; |scale * B @ A| up to "
                 f"{float(expected.abs().max()):.2e})", measured=error, tolerance=tolerance)


@torch.no_grad()
def _logits(model, tokenizer, prompts: list[list[dict]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits over a left-padded batch of chat prompts (as the canary feeds them) and its attention mask."""
    from harness.model import fast_cpu_inference

    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    previous_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        device = next(model.parameters()).device
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        model.eval()
        with fast_cpu_inference(model):
            logits = model(**batch).logits.float().cpu()
    finally:
        tokenizer.padding_side = previous_side
    return logits, batch["attention_mask"].bool().cpu()


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
        raise ExportError(f"{adapter_dir / 'adapter_model.safetensors'}: no lora_A weights in it")
    return keys[0].removeprefix("base_model.model.").removesuffix(".lora_A.weight")


def _save_plain(model, tokenizer, merged_dir: Path) -> None:
    """Save merged weights as a plain (never quantized) transformers model, with its tokenizer beside it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    # A model loaded through bitsandbytes keeps its quantizer and refuses a plain save: rebuild from the config.
    config_dict = model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict["dtype"] = "float32"
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config_dict), dtype=torch.float32)
    state = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    fresh.load_state_dict(state, strict=True, assign=True)
    fresh.tie_weights()
    fresh.generation_config = model.generation_config
    fresh.save_pretrained(merged_dir, safe_serialization=True)
    tokenizer.save_pretrained(merged_dir)


def _serving_record(cfg: RunConfig, adapter_dir: Path, adapter_config: dict, evidence: _Evidence,
                    checked: list, out_dir: Path, lora_name: str, proof_ok: bool) -> dict:
    from harness.model import adapter_hash

    vllm_ok = all(c.ok for c in evidence.vllm)
    max_rank = vllm_max_lora_rank(adapter_rank(adapter_config))
    command = vllm_command(evidence.base["serve_as"], lora_name, out_dir / "adapter", max_rank,
                           cfg.model.revision if cfg.model.kind == "hf" else None,
                           out_dir / "chat_template.jinja" if cfg.model.chat_template else None)
    if not proof_ok:
        exit_code = EXIT_CODES["not_as_evaluated"]
        failed = next(c for c in evidence.proof if c.gating and not c.ok)
        verdict = f"NOT SHIPPED: {failed.name}: {failed.message}"
    elif not vllm_ok:
        exit_code = EXIT_CODES["vllm_refuses"]
        failed = next(c for c in evidence.vllm if not c.ok)
        verdict = (f"SHIPPED {out_dir}, proven as evaluated, but vLLM would refuse the adapter: {failed.message}; "
                   f"fix: {failed.fix}")
    else:
        exit_code = EXIT_CODES["shipped"]
        verdict = f"SHIPPED {out_dir}: adapter and merged model proven to behave as evaluated; vLLM can serve it"
    return {
        "format": SERVING_FORMAT,
        "exit_code": exit_code,
        "verdict": verdict,
        "base_model": evidence.base,
        "adapter": {
            "path": str(out_dir / "adapter") if proof_ok else None,
            "hash": adapter_hash(adapter_dir),
            "r": adapter_config["r"],
            "lora_alpha": adapter_config["lora_alpha"],
            "use_rslora": bool(adapter_config.get("use_rslora")),
            "scaling_rule": _scaling_rule(adapter_config),
            "scaling": adapter_scaling(adapter_config),
            "target_modules": adapter_config["target_modules"],
            "use_dora": bool(adapter_config.get("use_dora")),
            "bias": adapter_config.get("bias", "none"),
            "modules_to_save": adapter_config.get("modules_to_save"),
        },
        "vllm": {"servable": vllm_ok, "max_lora_rank": max_rank, "lora_name": lora_name, "command": command,
                 "checks": [asdict(c) for c in evidence.vllm]},
        "merged": {**evidence.merged, "path": str(out_dir / "merged") if proof_ok else None},
        "proof": {"ok": proof_ok, "checks": [asdict(c) for c in evidence.proof],
                  "checked_examples": [e.source for e in checked]},
    }


# ---------------------------------------------------------------------------------------------------------
# Run directories, configs and the output directory


def run_config_from(run_dir: Path, overrides: list[str]) -> RunConfig:
    """The run's resolved config.yaml as a validated RunConfig, with key=value overrides applied.

    config.yaml is already composed, so overrides set keys (train.device=cpu); choosing a group (model=tiny)
    would describe another run and is refused, naming the override.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ExportError(f"{path} not found (not a run or trial directory)")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(RunConfig), OmegaConf.load(path))
    except (OmegaConfBaseException, ValueError) as err:
        raise ExportError(f"{path}: {_one_line(err)}") from None
    for override in overrides:
        key = override.split("=", 1)[0]
        if "=" not in override or key.startswith(("+", "~")):
            raise ExportError(f"override {override!r}: expected key=value on the run's config, e.g. "
                              "train.device=cpu")
        try:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([override]))
        except (OmegaConfBaseException, ValueError) as err:
            hint = "" if "." in key else "; the run's config is composed already: set keys, not groups"
            raise ExportError(f"override {override!r}: {_one_line(err)}{hint}") from None
    try:
        cfg = OmegaConf.to_object(merged)
        cfg.validate()
    except (OmegaConfBaseException, ValueError) as err:
        raise ExportError(f"{path} with overrides {overrides}: {_one_line(err)}") from None
    assert isinstance(cfg, RunConfig), type(cfg)
    return cfg


def default_lora_name(run_dir: Path) -> str:
    """`<sweep>-<trial>` for a sweep trial (sweeps/rank/trials/002 -> rank-002), else the directory's name."""
    resolved = Path(run_dir).resolve()
    name = f"{resolved.parent.parent.name}-{resolved.name}" if resolved.parent.name == "trials" else resolved.name
    return re.sub(r"[^A-Za-z0-9_.-]", "-", name)


def _read_run(run_dir: Path) -> tuple[dict, Path, dict]:
    """(results.json, adapter dir, adapter_config.json) of a finished run, or ExportError naming what is wrong."""
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir}: not a directory (expected a run or sweep trial directory)")
    results_path = run_dir / "results.json"
    results = _read_json(results_path)
    if results.get("status") != "complete":
        raise ExportError(f"{results_path}: status {results.get('status')!r}, expected 'complete'")
    for key in ("model", "adapter", "eval_set", "stages", "final"):
        if key not in results:
            raise ExportError(f"{results_path}: no {key!r} section")
    adapter_dir = run_dir / "adapter"
    for file_name in ("adapter_config.json", "adapter_model.safetensors"):
        if not (adapter_dir / file_name).is_file():
            raise ExportError(f"{adapter_dir / file_name} not found (adapters load from safetensors only)")
    adapter_config = _read_json(adapter_dir / "adapter_config.json")
    if adapter_config.get("peft_type") != "LORA":
        raise ExportError(f"{adapter_dir / 'adapter_config.json'}: peft_type {adapter_config.get('peft_type')!r}, "
                          "expected 'LORA'")
    for key in ("r", "lora_alpha", "target_modules"):
        if key not in adapter_config:
            raise ExportError(f"{adapter_dir / 'adapter_config.json'}: no {key!r}")
    return results, adapter_dir, adapter_config


def _recorded_outputs(results: dict, run_dir: Path) -> dict[str, str]:
    stage = results["final"].get("stage")
    try:
        return {row["source"]: row["output"] for row in results["stages"][stage]["heldout"]["per_example"]}
    except (KeyError, TypeError):
        raise ExportError(f"{run_dir / 'results.json'}: no per-example held-out outputs for the final stage "
                          f"{stage!r}") from None


def _check_out_dir(out_dir: Path) -> list[dict]:
    """Refuse an existing non-empty directory that export did not create; return its earlier export records."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"--out {out_dir}: exists and is not a directory")
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return []
    record_path = out_dir / "export.json"
    record = _read_json(record_path) if record_path.is_file() else {}
    if record.get("format") != EXPORT_FORMAT:
        raise ExportError(f"--out {out_dir}: exists, is not empty and was not created by harness.export "
                          "(no export.json); choose another --out")
    ours = set(record["export"]["files"])
    foreign = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*")
                     if p.is_file() and str(p.relative_to(out_dir)) not in ours)
    if foreign:
        raise ExportError(f"--out {out_dir}: holds {foreign[0]}, which harness.export did not write; move it or "
                          "choose another --out")
    return [record["export"], *record.get("previous", [])]


def _parent(out_dir: Path) -> Path:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return out_dir.parent


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"{path} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ExportError(f"{path}: not valid JSON ({err})") from None


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


# ---------------------------------------------------------------------------------------------------------
# Card and command line


def serving_card(serving: dict, record: dict) -> str:
    """serving.json for a reader: what to serve, the exact command, and the evidence it serves as evaluated."""
    base, adapter, vllm, merged, proof = (serving[k] for k in ("base_model", "adapter", "vllm", "merged", "proof"))
    targets = adapter["target_modules"]
    targets = ", ".join(targets) if isinstance(targets, list) else f"regex {targets!r}"
    held = "quantized (NF4)" if base["quantized"] else "unquantized"
    rslora = " (rsLoRA)" if adapter["use_rslora"] else ""
    checked = proof["checked_examples"]
    lines = [
        "# Serving card",
        "",
        f"**{serving['verdict']}**",
        "",
        (f"Run `{record['run_dir']}`, exported {record['created_at']} in {record['wall_time_s']:.1f} s on "
         f"{record['device']}."),
        "",
        "## Base model",
        f"- id `{base['id']}`, hash `{base['hash']}`, architecture {base['architecture']}",
        f"- trained and evaluated {held}, {base['compute_dtype']} compute; weights `{base['local_dir']}`",
        "",
        "## Adapter",
        (f"- rank {adapter['r']}, lora_alpha {adapter['lora_alpha']:g}, scaling {adapter['scaling_rule']} = "
         f"{adapter['scaling']:g}{rslora}"),
        f"- target modules: {targets}",
        f"- DoRA {adapter['use_dora']}, bias {adapter['bias']!r}, modules_to_save {adapter['modules_to_save']}",
        f"- hash `{adapter['hash']}`; files `{adapter['path'] or 'not shipped'}`",
        "",
        "## vLLM: one base, adapters hot-swapped",
        "```",
        vllm["command"],
        "```",
        f"Request model `{vllm['lora_name']}`. vLLM's LoRA constraints:",
        *[_card_line(c, "REFUSED") for c in vllm["checks"]],
    ]
    if base["quantized"]:
        lines += ["", ("The adapter was trained and evaluated on the NF4-quantized base. Served by vLLM on the "
                       "full-precision base above, it runs a slightly different model (by the NF4 quantization "
                       "error); to serve exactly what was evaluated, serve `merged/`.")]
    if adapter["use_rslora"]:
        lines += ["", ("rsLoRA: some servers (SGLang) apply alpha/r instead of alpha/sqrt(r), with no error. "
                       "Serve `merged/` there, or compare the server's outputs with the proof below.")]
    lines += [
        "",
        "## Merged model: runtimes without LoRA (llama.cpp, Ollama)",
        (f"- `{merged['path'] or 'not shipped'}`: {merged['dtype']} safetensors with the tokenizer; loads with "
         f"{merged['loads_with']}"),
        f"- merge `{merged['merge_into']}`: {merged['what_it_changes']}",
        "",
        "## Proof: serves as evaluated",
        *[_card_line(c, "FAILED") for c in proof["checks"]],
        f"- checked on the first {len(checked)} held-out examples ({checked[0]} to {checked[-1]})",
        "",
    ]
    return "\n".join(lines)


def _card_line(check: dict, failed: str) -> str:
    status = "ok" if check["ok"] else (failed if check["gating"] else "note")
    fix = f" Fix: {check['fix']}." if check["fix"] and not check["ok"] else ""
    return f"- {status} `{check['name']}`: {check['message']}.{fix}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a finished run or sweep trial directory (holds results.json)")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: <run_dir>/export)")
    parser.add_argument("--merge-into", choices=MERGE_MODES, default="dequantized",
                        help="NF4 runs: merge into the dequantized NF4 weights (as evaluated; default) or into "
                             "the original full-precision weights")
    parser.add_argument("--name", default=None, help="the adapter's model name in vLLM's --lora-modules")
    parser.add_argument("overrides", nargs="*", help="key=value on the run's config, e.g. train.device=cpu")
    args = parser.parse_intermixed_args(argv)
    from harness.data import DataError

    try:
        result = export_run(args.run_dir, args.out, args.overrides, args.merge_into, args.name)
    except (ExportError, DataError, FileNotFoundError) as err:  # DataError: the eval set changed or is missing
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return EXIT_CODES["bad_input"]
    print(result.verdict)
    for check in result.vllm_checks + result.proof:
        status = "ok" if check.ok else ("FAIL" if check.gating else "note")
        fix = f" (fix: {check.fix})" if check.fix and not check.ok else ""
        print(f"  {status:<4} {check.name}: {check.message}{fix}")
    print(f"vLLM: {result.vllm_command}")
    print(f"card: {result.out_dir / 'serving_card.md'} ({result.seconds:.1f} s)")
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
