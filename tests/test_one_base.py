"""One base model per sweep worker (harness.worker): loaded once, bit-identical across trials, and trial N trains
and scores exactly what its recorded command does alone in a fresh process."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

import harness.sweep
from harness.config import LoraConfig
from harness.model import lora_adapter, lora_layers
from harness.records import TrialRecord, read_record
from harness.sweep import run_sweep
from harness.worker import WorkerBase
from tests.conftest import make_config
from tests.test_reproducibility import adapter_tensors, assert_same_tensors, outputs, run_trial_alone

# NF4 (quantized at load, dequantized for CPU inference by fast_cpu_inference) and a grid of complete, pruned,
# complete: trial 2 trains on a base that a finished trial and a pruned one (an exception out of training) used
# before it. max_steps 6 reports at step 3 and is pruned (threshold 0.5; the random model scores 0); max_steps 2
# never reports and completes.
OVERRIDES = [
    "model=tiny", "quant=nf4", "run_regression=false", "train.sft.batch_size=4", "data.max_sft_examples=16",
    "eval.max_examples=4", "eval.canary_examples=2", "sweep.tracking=none", "+sweep=rank",
    "sweep.space.lora_r=[1,2]", "sweep.space.lora_alpha_ratio=[2.0]", "sweep.space.sft_max_steps=[2,6]",
    "sweep.n_trials=3", "sweep.pruner=threshold", "sweep.prune_threshold=0.5", "sweep.prune_every_steps=3",
    "sweep.prune_eval_examples=2",
]


def state_digest(model: torch.nn.Module) -> str:
    """sha256 of every tensor of the model's state dict (NF4 weights and their quantization state included)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode() + b"\0" + str(tensor.dtype).encode() + b"\0")
        digest.update(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("one_base")
    seen: list[tuple[int, str, int]] = []  # (id of the base model, its state digest, loads so far) per trial

    class WatchedBase(WorkerBase):
        def base_for(self, cfg):
            base = super().base_for(cfg)
            seen.append((id(base.model), state_digest(base.model), self.loads))
            return base

        def close(self):
            if self.base is not None:
                seen.append((id(self.base.model), state_digest(self.base.model), self.loads))
            super().close()

    overrides = [*OVERRIDES, f"sweep.sweeps_dir={root}"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HARNESS_CACHE", str(root / "cache"))
        patch.setattr(harness.sweep, "WorkerBase", WatchedBase)
        summary = run_sweep(make_config(overrides), overrides)
    return root / "rank", summary, seen


def test_the_worker_loads_the_base_once_and_its_weights_never_change(sweep):
    _, summary, seen = sweep
    assert summary.n_complete == 2 and summary.n_pruned == 1
    assert len(seen) == 4  # before each of the 3 trials, and after the last
    assert {model_id for model_id, _, _ in seen} == {seen[0][0]}, "every trial got the same base model object"
    assert {loads for _, _, loads in seen} == {1}
    assert {digest for _, digest, _ in seen} == {seen[0][1]}, "the base weights changed between trials"


def test_trial_2_after_a_pruned_trial_equals_its_command_run_alone(sweep, tmp_path):
    sweep_dir, _, _ = sweep
    states = [read_record(TrialRecord, sweep_dir / "trials" / f"{n:03d}" / "trial.json").state for n in range(3)]
    assert states == ["COMPLETE", "PRUNED", "COMPLETE"]
    trial = read_record(TrialRecord, sweep_dir / "trials" / "002" / "trial.json")
    run_trial_alone(trial.command, tmp_path)
    assert_same_tensors(adapter_tensors(Path(trial.trial_dir)), adapter_tensors(tmp_path / "alone"))
    assert outputs(Path(trial.trial_dir)) == outputs(tmp_path / "alone")


def test_an_adapter_comes_off_cleanly_even_when_the_trial_raises(tiny_base):
    # quant=none: peft adds an input-embedding hook for training on each wrap; it must not pile up.
    model = tiny_base.model
    embeddings = model.get_input_embeddings()
    before, hooks = state_digest(model), dict(embeddings._forward_hooks)
    for rank in (2, 4):
        with pytest.raises(RuntimeError, match="pruned"), lora_adapter(model, LoraConfig(r=rank, alpha=2 * rank)) as peft:
            assert lora_layers(model)  # the adapter is on the base while the trial runs
            assert sum(p.numel() for p in peft.parameters() if p.requires_grad) > 0
            raise RuntimeError("pruned")
        assert lora_layers(model) == []
        assert dict(embeddings._forward_hooks) == hooks
        assert not hasattr(model, "peft_config")
    assert state_digest(model) == before


def test_a_base_left_with_adapter_layers_is_loaded_again(tiny_config):
    from harness.model import attach_lora

    worker = WorkerBase()
    first = worker.base_for(tiny_config)
    assert worker.base_for(tiny_config) is first and worker.loads == 1
    attach_lora(first.model, tiny_config.lora)  # a trial that never took its adapter off
    second = worker.base_for(tiny_config)
    assert second is not first and worker.loads == 2 and lora_layers(second.model) == []
