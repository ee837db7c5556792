"""Shared fixtures: configs composed with Hydra's compose API (no launch) and a tiny 2-layer llama.

Every test session gets a private, empty $HARNESS_CACHE (removed at the end), set before any test module is
imported and inherited by the CLIs the tests start: the suite never reads or writes a user's ~/.cache/harness,
and a stale cached model or baseline cannot make a test pass. Models are built once per session in it.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
from hydra import compose, initialize_config_dir

from harness.artifacts import REPO_ROOT
from harness.config import RunConfig, register_configs, to_run_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
register_configs()

TINY_OVERRIDES = [
    "model=tiny",
    "quant=none",
    "run_regression=false",
    "train.sft.max_steps=2",
    "train.sft.batch_size=4",
    "data.max_sft_examples=16",
    "eval.max_examples=8",
]


def randomize_lora_b(model, std: float, seed: int = 0) -> None:
    """Seeded random LoRA B matrices (peft starts them at zero, a no-op adapter) so the adapter changes outputs."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.copy_(torch.randn(weight.shape, generator=generator) * std)


def compose_config(overrides: list[str] | None = None):
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base=None):
        return compose("config", overrides=overrides or [])


def make_config(overrides: list[str] | None = None) -> RunConfig:
    return to_run_config(compose_config(overrides))


def pytest_configure(config):
    # A hook, not module code: test modules import this file a second time as tests.conftest.
    config.harness_cache = tempfile.mkdtemp(prefix="harness-test-cache-")
    os.environ["HARNESS_CACHE"] = config.harness_cache


def pytest_unconfigure(config):
    shutil.rmtree(config.harness_cache, ignore_errors=True)


@pytest.fixture
def tiny_config(tmp_path, monkeypatch) -> RunConfig:
    """A run config on the tiny model with a private baseline cache (models are shared across tests)."""
    monkeypatch.setattr("harness.baselines.cache_root", lambda: tmp_path / "cache")
    return make_config(TINY_OVERRIDES)


@pytest.fixture(scope="session")
def tokenizer():
    from harness.config import ModelConfig
    from harness.model import load_tokenizer

    return load_tokenizer(ModelConfig(kind="tiny"))


@pytest.fixture
def tiny_base():
    from harness.config import ModelConfig, QuantConfig
    from harness.model import load_base_model

    return load_base_model(ModelConfig(kind="tiny"), QuantConfig(method="none"), "cpu")


@pytest.fixture
def forward_calls(monkeypatch) -> list[str]:
    """The type of every torch module called from now on: a model's forward pass calls at least its own module."""
    import torch

    calls = []
    real_call = torch.nn.Module.__call__

    def counting_call(module, *args, **kwargs):
        calls.append(type(module).__name__)
        return real_call(module, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "__call__", counting_call)
    return calls
