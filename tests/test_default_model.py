"""Slow: the real embedded model (SmolLM2-135M-Instruct, NF4, CPU) learns the default task end to end."""

from __future__ import annotations

import json

import pytest

from harness.run import run_experiment
from tests.conftest import make_config


@pytest.mark.slow
def test_qlora_sft_teaches_smollm2_the_json_extraction_task(tmp_path, monkeypatch):
    monkeypatch.setattr("harness.baselines.cache_root", lambda: tmp_path / "cache")
    cfg = make_config(["run_regression=false", "eval.max_examples=40"])
    assert cfg.model.kind == "smollm2" and cfg.quant.method == "nf4" and cfg.train.sft.max_steps == 40

    results = run_experiment(cfg, tmp_path / "run", progress=False)

    zero_shot = results.baselines.zero_shot.score
    adapter = results.final.heldout.score
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "loss.jsonl").read_text().splitlines()]
    print(f"held-out all-fields exact match on 40: base {zero_shot:.3f} -> adapter {adapter:.3f}; "
          f"loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert zero_shot <= 0.2, "the base model should not already solve the task in the strict format"
    # Measured on all 240 held-out examples: 0.800 [0.745, 0.846]. On 40 examples one answer is 0.025 and the
    # sampling spread is ~0.06, and CPUs with other SIMD kernels train a slightly different adapter (CI measured
    # 0.775 where this machine measured 0.80), so the test asserts a large, certain gain rather than min_score.
    assert adapter >= 0.6
    assert results.final.heldout.ci_low > results.baselines.zero_shot.ci_high
    assert losses[-1] < losses[0] / 3
    assert results.canary.outputs_changed >= 1
