"""Identities of adapters and base models: the same weights are the same identity wherever they are stored.

Results records, baselines and gates compare `adapter_hash` and `base_model_hash`; an identity that changed with
a cache path would make a gate refuse the same adapter on another machine, and one that ignored the weights
would let it compare different ones.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import harness.model
from harness.config import LoraConfig, ModelConfig
from harness.model import adapter_hash, attach_lora, base_model_hash, model_fingerprint, prepare_model_dir


# --- adapters ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_adapter(tmp_path_factory) -> Path:
    """A tiny LoRA adapter with non-zero B matrices, saved by peft."""
    from harness.config import QuantConfig
    from harness.model import load_base_model

    base = load_base_model(ModelConfig(kind="tiny"), QuantConfig(method="none"), "cpu", for_training=False)
    model = attach_lora(base.model, LoraConfig(r=4, alpha=8))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    model.save_pretrained(out, safe_serialization=True)
    return out


def _copy_with_config(adapter: Path, dest: Path, **changes) -> Path:
    shutil.copytree(adapter, dest)
    config = json.loads((dest / "adapter_config.json").read_text())
    (dest / "adapter_config.json").write_text(json.dumps({**config, **changes}, indent=2))
    return dest


def test_adapter_identity_ignores_where_the_base_model_was_cached(saved_adapter, tmp_path):
    config = json.loads((saved_adapter / "adapter_config.json").read_text())
    assert "/models/tiny-llama-" in config["base_model_name_or_path"]  # peft records the local cache path
    moved = _copy_with_config(saved_adapter, tmp_path / "other_machine",
                              base_model_name_or_path="/home/someone/.cache/harness/models/tiny-llama-x",
                              revision="abc123")
    assert (moved / "adapter_config.json").read_bytes() != (saved_adapter / "adapter_config.json").read_bytes()
    assert adapter_hash(moved) == adapter_hash(saved_adapter)


def test_adapter_identity_ignores_dropout_and_the_order_of_target_modules(saved_adapter, tmp_path):
    targets = json.loads((saved_adapter / "adapter_config.json").read_text())["target_modules"]
    assert isinstance(targets, list) and len(set(targets)) > 1
    reordered = _copy_with_config(saved_adapter, tmp_path / "reordered", lora_dropout=0.3,
                                  target_modules=targets[1:] + targets[:1])
    assert adapter_hash(reordered) == adapter_hash(saved_adapter)


def test_changed_tensor_values_change_the_adapter_identity(saved_adapter, tmp_path):
    changed = tmp_path / "changed"
    shutil.copytree(saved_adapter, changed)
    tensors = load_file(changed / "adapter_model.safetensors")
    name = min(k for k in tensors if "lora_B" in k)
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] += 1.0
    save_file(tensors, changed / "adapter_model.safetensors", metadata={"format": "pt"})
    assert adapter_hash(changed) != adapter_hash(saved_adapter)


@pytest.mark.parametrize("changes", [{"lora_alpha": 16}, {"r": 8}, {"use_rslora": True}, {"use_dora": True},
                                     {"target_modules": ["q_proj"]}],
                         ids=lambda changes: next(iter(changes)))
def test_behaviour_changing_lora_settings_change_the_adapter_identity(saved_adapter, tmp_path, changes):
    assert adapter_hash(_copy_with_config(saved_adapter, tmp_path / "changed", **changes)) != adapter_hash(
        saved_adapter)


def test_adapter_identity_is_the_full_sha256(saved_adapter):
    digest = adapter_hash(saved_adapter)
    assert len(digest) == 64 and int(digest, 16) >= 0


# --- base models ------------------------------------------------------------------------------------------
@pytest.fixture
def private_cache(tmp_path, monkeypatch) -> Path:
    """A tiny model directory copied to an aged private location, with a private fingerprint cache."""
    source = Path(prepare_model_dir(ModelConfig(kind="tiny")))  # built in the session's cache
    model_dir = tmp_path / "models" / "tiny"
    shutil.copytree(source, model_dir)
    _age(model_dir)
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    return model_dir


def _age(model_dir: Path) -> None:
    # Files modified in the last seconds are hashed every time (a same-size rewrite within one timestamp tick
    # would look unchanged); these tests check the cache, so their files are an hour old.
    for path in model_dir.glob("*.safetensors"):
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns - 3600 * 10**9))


def _count_data_hashes(monkeypatch) -> list[Path]:
    calls = []
    real = harness.model._hash_file_data

    def counting(path, start):
        calls.append(path)
        return real(path, start)

    monkeypatch.setattr(harness.model, "_hash_file_data", counting)
    return calls


def test_a_copied_model_directory_has_the_same_fingerprint(private_cache, tmp_path):
    copy = tmp_path / "elsewhere" / "same-model"
    shutil.copytree(private_cache, copy)
    fingerprint = model_fingerprint(private_cache)
    assert len(fingerprint) == 16 and int(fingerprint, 16) >= 0
    assert model_fingerprint(copy) == fingerprint


def test_config_provenance_does_not_change_the_fingerprint_but_its_values_do(private_cache):
    before = model_fingerprint(private_cache)
    config_path = private_cache / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "_name_or_path": "/somewhere/else", "transformers_version": "9"}))
    assert model_fingerprint(private_cache) == before
    config_path.write_text(json.dumps({**config, "rms_norm_eps": config["rms_norm_eps"] * 10}))
    assert model_fingerprint(private_cache) != before


def test_one_changed_weight_of_the_same_file_size_changes_the_fingerprint(private_cache, tmp_path):
    changed = tmp_path / "changed"
    shutil.copytree(private_cache, changed)
    weights = changed / "model.safetensors"
    tensors = load_file(weights)
    name = max(tensors)
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] += 1.0
    size = weights.stat().st_size
    save_file(tensors, weights, metadata={"format": "pt"})
    assert weights.stat().st_size == size
    assert model_fingerprint(changed) != model_fingerprint(private_cache)


def test_the_data_hash_is_cached_until_the_file_changes(private_cache, monkeypatch):
    calls = _count_data_hashes(monkeypatch)
    first = model_fingerprint(private_cache)
    assert len(calls) == 1
    cache = json.loads((harness.model.cache_root() / "fingerprints.json").read_text())
    weights = private_cache / "model.safetensors"
    assert set(cache) == {str(weights.resolve())}

    assert model_fingerprint(private_cache) == first
    assert len(calls) == 1, "the second fingerprint must not re-read the weights"

    # The same size, rewritten in place: a new mtime, so the data is read again and the fingerprint moves.
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert model_fingerprint(private_cache) != first
    assert len(calls) == 2


def test_a_just_written_file_is_not_trusted_to_the_cache(private_cache, monkeypatch):
    weights = private_cache / "model.safetensors"
    os.utime(weights)  # modified now: within one timestamp tick, a rewrite might keep this mtime
    calls = _count_data_hashes(monkeypatch)
    first = model_fingerprint(private_cache)
    assert model_fingerprint(private_cache) == first
    assert len(calls) == 2
    assert not (harness.model.cache_root() / "fingerprints.json").exists()


def test_load_base_model_and_the_gate_record_the_same_identity(tiny_base):
    from harness.gate import current_model_hash
    from tests.conftest import TINY_OVERRIDES, make_config

    assert tiny_base.model_hash == model_fingerprint(tiny_base.model_dir)
    assert current_model_hash(make_config(TINY_OVERRIDES)) == tiny_base.model_hash


# --- hub models -------------------------------------------------------------------------------------------
def _fake_hub_cache(root: Path, repo_id: str, commits: dict[str, str]) -> None:
    """The hub cache layout: refs/<branch> holds a commit, snapshots/<commit>/ holds that commit's files."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    for branch, commit in commits.items():
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / branch).write_text(commit)
        (repo / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
        (repo / "snapshots" / commit / "config.json").write_text("{}")


def test_a_hub_model_is_identified_by_its_resolved_commit(tmp_path, monkeypatch):
    import huggingface_hub.constants

    main, dev = "a" * 40, "b" * 40
    _fake_hub_cache(tmp_path, "org/model", {"main": main, "dev": dev})
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)  # no local directory called org/model

    def identity(revision):
        return base_model_hash(ModelConfig(kind="hf", name_or_path="org/model", revision=revision))

    assert identity(None) == identity("main") == identity(main)
    assert identity("dev") == identity(dev) != identity("main")
    assert len(identity(None)) == 16
