"""Ship a trained adapter: prove that it serves as it was evaluated, and export it.

    python -m harness.export <run or trial dir> [--out DIR] [--merge-into dequantized|original]
        [--name NAME] [key=value ...]      # overrides on the run's config.yaml, e.g. train.device=cpu
    export_run(run_dir, out_dir=None, overrides=None, merge_into="dequantized", name=None) -> ExportResult

Reads the run's results.json (a `RunResults` record), config.yaml and adapter/. Writes --out (default
<run dir>/export) atomically, and only into a directory export created itself:
  adapter/         the PEFT adapter as trained (adapter_config.json + adapter_model.safetensors)
  merged/          base + adapter merged into one fp32 safetensors model, tokenizer beside it, for runtimes
                   without LoRA (llama.cpp, Ollama): AutoModelForCausalLM.from_pretrained(merged/)
  serving.json     a `harness.serving.ServingRecord`: base model identity, rank, alpha, scaling rule, target
                   modules, the vLLM command, the checks
  serving_card.md  the same for a reader
  export.json      an `ExportHistory`: this export's record under `export`, earlier ones under `previous`

An NF4-trained adapter is merged into the dequantized NF4 weights by default (`--merge-into dequantized`):
the weights it was trained and evaluated on, read back exactly as `harness.model._dequantized_weight` does.
The merged model then reproduces the evaluated one up to float rounding, and keeps the NF4 quantization
error. `--merge-into original` merges into the original full-precision weights: closer to the unquantized
base, but it differs from what was evaluated (NF4 base + adapter) by the NF4 quantization error, so its
agreement with the evaluated model is measured and reported, not required. An unquantized run has one
merge: into its own base.

Proof, run at every export and recorded (base_hash_matches_run is recorded, not required):
  scaling_matches_run       adapter_config.json's scale (alpha/r; alpha/sqrt(r) with use_rslora) is the one
                            the run trained and evaluated with (results.adapter): an edited config is caught
  adapter_hash_matches_run  the adapter's content hash (tensors + LoRA settings, model.adapter_hash) is the
                            one results.json recorded: the adapter shipped is the adapter scored
  adapter_as_evaluated      base + adapter, on the evaluation's inference path, regenerates the run's
                            recorded greedy outputs (final stage) on the evaluation's first held-out batch
  merged_delta              W_merged - W_base == scaling * B @ A for one target layer, from the saved files
  merged_logits             merged model (reloaded from disk) vs base + adapter on the canary prompts: max
                            |logit difference| within LOGIT_TOLERANCE for the compute dtype
  merged_greedy             the merged model's greedy outputs == base + adapter's on the same examples
vLLM's LoRA constraints are harness.serving's.

Exit codes: 0 shipped, every check passed. 1 not shipped: the proof failed; only the record and the card
are written. 2 bad input: one line naming the path; nothing written. 3 shipped and proven, but vLLM would
refuse the adapter as it is: serve merged/, or apply the printed fix.
"""

from __future__ import annotations

import argparse
import gc
import math
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from harness.artifacts import git_revision, library_versions, replace_dir_atomic, write_text_atomic
from harness.config import QuantConfig, RunConfig
from harness.data import chat
from harness.recordio import RecordError, read_record, write_record
from harness.records import AdapterIdentity, RunResults
from harness.serving import (
    AdapterConfig,
    BaseModelInfo,
    Check,
    ExitCode,
    ExportHistory,
    ExportRecord,
    MergedModel,
    build_serving_record,
    default_lora_name,
    lora_scaling,
    read_adapter_config,
    serving_card,
    vllm_checks,
)

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
class ExportResult:
    out_dir: Path
    record: ExportRecord  # as written to export.json; its `serving` as written to serving.json


def export_run(run_dir: Path, out_dir: Path | None = None, overrides: list[str] | None = None,
               merge_into: str = "dequantized", name: str | None = None) -> ExportResult:
    """Export one finished run or sweep trial. Bad input raises ExportError (or DataError) before any write."""
    started = time.perf_counter()
    # 1. Inputs: the run's files and config, and the output directory, checked before any model loads.
    run_dir = Path(run_dir)
    overrides = list(overrides or [])
    results, adapter_dir, adapter = _read_run(run_dir)
    cfg = run_config_from(run_dir, overrides)
    if merge_into not in MERGE_MODES:
        raise ExportError(f"--merge-into {merge_into!r}: expected one of {', '.join(MERGE_MODES)}")
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "export"
    previous = _check_out_dir(out_dir)

    # 2. The eval set must be the one the run was scored on, or its recorded outputs prove nothing.
    from harness.evalset import verify_frozen
    from harness.evaluate import load_heldout

    eval_set_hash = verify_frozen(cfg.eval)
    if eval_set_hash != results.eval_set.hash:
        raise ExportError(f"{run_dir / 'results.json'}: eval set hash {results.eval_set.hash} != "
                          f"current {eval_set_hash}: pass the run's eval overrides")
    heldout = load_heldout(cfg.eval)
    recorded = _recorded_outputs(results, run_dir)
    # The evaluation's first batch, so that left padding (and so the arithmetic) is the one the run had.
    checked = heldout[: max(cfg.eval.canary_examples, min(cfg.eval.generation.batch_size, len(heldout)))]
    missing = [e.source for e in checked if e.source not in recorded]
    if missing:
        raise ExportError(f"{run_dir / 'results.json'}: no recorded output for {missing[0]}")

    # 3. Prove and merge into a staging directory beside --out; publish it with one rename.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.export-"))
    try:
        evidence = _prove_and_merge(cfg, results, adapter_dir, adapter, heldout[: cfg.eval.canary_examples],
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
        resolved = out_dir.resolve()
        serving = build_serving_record(
            adapter, evidence.adapter_hash, evidence.base, evidence.vllm, evidence.proof, evidence.merged,
            [e.source for e in checked], resolved, name or default_lora_name(run_dir),
            cfg.model.revision if cfg.model.kind == "hf" else None,
            resolved / "chat_template.jinja" if cfg.model.chat_template else None)
        record = ExportRecord(
            run_dir=str(run_dir), results=str(run_dir / "results.json"), overrides=overrides,
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), exit_code=serving.exit_code,
            verdict=serving.verdict, serving=serving, git_revision=git_revision(),
            library_versions=library_versions(), device=evidence.base.device,
            wall_time_s=round(time.perf_counter() - started, 2))
        write_record(staging / "serving.json", serving)
        write_text_atomic(staging / "serving_card.md",
                          serving_card(serving, record.run_dir, record.created_at, record.wall_time_s))
        record.files = sorted([str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file()]
                              + ["export.json"])
        write_record(staging / "export.json", ExportHistory(record, previous))
        staging.chmod(0o755)  # mkdtemp makes it owner-only; an export is shared like the run it came from
        replace_dir_atomic(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(out_dir, record)


def export_command(run_dir: Path) -> str:
    """The command the report's verdict section prints under the adapter it recommends."""
    return f"python -m harness.export {run_dir}"


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


def _read_run(run_dir: Path) -> tuple[RunResults, Path, AdapterConfig]:
    """(results.json, adapter dir, adapter_config.json) of a finished run, or ExportError naming what is wrong."""
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir}: not a directory (expected a run or sweep trial directory)")
    results_path = run_dir / "results.json"
    try:
        results = read_record(RunResults, results_path)
    except RecordError as err:
        raise ExportError(_one_line(err)) from None
    if results.status != "complete":
        raise ExportError(f"{results_path}: status {results.status!r}, expected 'complete'")
    adapter_dir = run_dir / "adapter"
    for file_name in ("adapter_config.json", "adapter_model.safetensors"):
        if not (adapter_dir / file_name).is_file():
            raise ExportError(f"{adapter_dir / file_name} not found (adapters load from safetensors only)")
    try:
        adapter = read_adapter_config(adapter_dir / "adapter_config.json")
    except RecordError as err:
        raise ExportError(_one_line(err)) from None
    return results, adapter_dir, adapter


def _recorded_outputs(results: RunResults, run_dir: Path) -> dict[str, str]:
    """source -> greedy output the run recorded for its final stage."""
    stage = results.stages.get(results.final.stage)
    if stage is None or not stage.heldout.per_example:
        raise ExportError(f"{run_dir / 'results.json'}: no per-example held-out outputs for the final stage "
                          f"{results.final.stage!r}")
    return {row.source: row.output for row in stage.heldout.per_example}


def _check_out_dir(out_dir: Path) -> list[ExportRecord]:
    """Refuse an existing non-empty directory that export did not create; return its earlier export records."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"--out {out_dir}: exists and is not a directory")
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return []
    if not (out_dir / "export.json").is_file():
        raise ExportError(f"--out {out_dir}: exists, is not empty and was not created by harness.export "
                          "(no export.json); choose another --out")
    try:
        history = read_record(ExportHistory, out_dir / "export.json")
    except RecordError as err:
        raise ExportError(f"--out {out_dir}: not an export directory harness.export can replace "
                          f"({_one_line(err)}); choose another --out") from None
    ours = set(history.export.files)
    foreign = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*")
                     if p.is_file() and str(p.relative_to(out_dir)) not in ours)
    if foreign:
        raise ExportError(f"--out {out_dir}: holds {foreign[0]}, which harness.export did not write; move it or "
                          "choose another --out")
    return [history.export, *history.previous]


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


# ---------------------------------------------------------------------------------------------------------
# Proof and merge


@dataclass
class _Evidence:
    proof: list[Check]
    vllm: list[Check]
    base: BaseModelInfo  # the base model's identity and where it ran
    merged: MergedModel  # how the merge was done
    adapter_hash: str


def _prove_and_merge(cfg: RunConfig, results: RunResults, adapter_dir: Path, adapter: AdapterConfig, canary: list,
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
    return _Evidence(proof, vllm, base_info, merged_info, hashed)


def _load_adapter(model, adapter_dir: Path):
    """harness.model.load_adapter, with PEFT's refusals (e.g. no target module found) as bad input."""
    from harness.model import load_adapter

    try:
        return load_adapter(model, adapter_dir)
    except (ValueError, KeyError, RuntimeError) as err:
        raise ExportError(f"{adapter_dir}: PEFT cannot load this adapter on the base: {_one_line(err)}") from None


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
    from harness.model import fast_cpu_inference

    texts = [tokenizer.apply_chat_template(chat(p), tokenize=False, add_generation_prompt=True) for p in prompts]
    previous_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        device = next(model.parameters()).device
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        model.eval()
        with fast_cpu_inference(model):
            logits = model(**batch).logits.float().cpu()
    finally:
        tokenizer.padding_side = previous_side
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
        raise ExportError(f"{adapter_dir / 'adapter_model.safetensors'}: no lora_A weights in it")
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


# ---------------------------------------------------------------------------------------------------------
# Command line


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
        return int(ExitCode.BAD_INPUT)
    serving = result.record.serving
    print(serving.verdict)
    for check in serving.vllm.checks + serving.proof.checks:
        status = "ok" if check.ok else ("FAIL" if check.gating else "note")
        fix = f" (fix: {check.fix})" if check.fix and not check.ok else ""
        print(f"  {status:<4} {check.name}: {check.message}{fix}")
    print(f"vLLM: {serving.vllm.command}")
    print(f"card: {result.out_dir / 'serving_card.md'} ({result.record.wall_time_s:.1f} s)")
    return result.record.exit_code


if __name__ == "__main__":
    sys.exit(main())
