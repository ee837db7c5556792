"""Determinism on CPU: the same config gives the same adapter tensors and the same per-example outputs, whatever
ran before it in the process and whether the baselines came from the cache or were computed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from harness.artifacts import REPO_ROOT
from harness.run import run_experiment
from tests.conftest import make_config

# NF4 on purpose: the CPU inference swap (model.fast_cpu_inference) and the baselines' generation ran before the
# adapter was created and used to move the global RNG, so the initial LoRA weights depended on the cache state.
REPRO_OVERRIDES = [
    "model=tiny", "quant=nf4", "run_regression=false", "train.sft.max_steps=2", "train.sft.batch_size=4",
    "data.max_sft_examples=16", "eval.max_examples=4", "eval.canary_examples=2", "lora.r=2", "lora.alpha=4.0",
]


def adapter_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(Path(run_dir) / "adapter" / "adapter_model.safetensors")


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    differing = [name for name in a if not torch.equal(a[name], b[name])]
    assert not differing, f"{len(differing)} of {len(a)} adapter tensors differ: {differing[:3]}"


def outputs(run_dir: Path) -> list[tuple[str, str, float]]:
    rows = [json.loads(line) for line in (Path(run_dir) / "samples_sft.jsonl").read_text().splitlines()]
    return [(row["source"], row["output"], row["score"]) for row in rows]


def run_trial_alone(command: str, tmp_path: Path) -> Path:
    """A sweep trial's recorded command run alone, in a fresh process with a cold cache; its run directory."""
    import shlex

    env = {**os.environ, "HARNESS_CACHE": str(tmp_path / "cold_cache"), "HF_HUB_OFFLINE": "1"}
    alone = subprocess.run([sys.executable, "-m", "harness", *shlex.split(command)[3:],
                            f"hydra.run.dir={tmp_path / 'alone'}"],
                           cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False)
    assert alone.returncode == 0, alone.stderr[-3000:]
    return tmp_path / "alone"


def test_same_config_gives_identical_adapters_cold_warm_after_other_runs_and_alone(tmp_path, monkeypatch):
    monkeypatch.setattr("harness.baselines.cache_root", lambda: tmp_path / "cache")
    cfg = make_config(REPRO_OVERRIDES)

    cold = run_experiment(cfg, tmp_path / "cold", progress=False)
    assert cold.baselines.cached is False and cold.metrics.seed == 0
    # Another configuration trains in between, and something else draws from every global RNG.
    run_experiment(make_config([*REPRO_OVERRIDES, "lora.r=4", "seed=7"]), tmp_path / "other", progress=False)
    torch.rand(1000), __import__("random").random()
    warm = run_experiment(cfg, tmp_path / "warm", progress=False)
    assert warm.baselines.cached is True

    assert_same_tensors(adapter_tensors(tmp_path / "cold"), adapter_tensors(tmp_path / "warm"))
    assert outputs(tmp_path / "cold") == outputs(tmp_path / "warm")
    assert cold.adapter.hash == warm.adapter.hash
    assert cold.metrics.reproducibility.startswith("bit-identical on cpu")

    # Alone, in a fresh process, with a cold cache of its own.
    env = {**os.environ, "HARNESS_CACHE": str(tmp_path / "fresh_cache"), "HF_HUB_OFFLINE": "1"}
    alone = subprocess.run([sys.executable, "-m", "harness", *REPRO_OVERRIDES, f"hydra.run.dir={tmp_path / 'alone'}"],
                           cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False)
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert_same_tensors(adapter_tensors(tmp_path / "cold"), adapter_tensors(tmp_path / "alone"))
    assert outputs(tmp_path / "cold") == outputs(tmp_path / "alone")


def test_a_different_seed_gives_a_different_adapter(tmp_path, monkeypatch):
    # The seed is what decides the initial adapter: without this the test above could pass on a constant init.
    monkeypatch.setattr("harness.baselines.cache_root", lambda: tmp_path / "cache")
    run_experiment(make_config(REPRO_OVERRIDES), tmp_path / "a", progress=False)
    run_experiment(make_config([*REPRO_OVERRIDES, "seed=1"]), tmp_path / "b", progress=False)
    a, b = adapter_tensors(tmp_path / "a"), adapter_tensors(tmp_path / "b")
    assert any(not torch.equal(a[name], b[name]) for name in a if "lora_A" in name)
