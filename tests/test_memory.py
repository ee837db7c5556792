"""Memory between trials: after release_trial_memory, nothing of a finished trial is alive for the next one."""

from __future__ import annotations

import gc
import weakref

import torch
from transformers import TrainerCallback

import harness.sft
from harness.config import LoraConfig, ModelConfig, QuantConfig, SFTStageConfig
from harness.data import Conversation, tokenize_sft
from harness.memory import memory_reading, release_trial_memory
from harness.model import attach_lora, load_base_model
from harness.sft import train_sft

CONVERSATIONS = [
    Conversation([{"role": "user", "content": f"Say the number {i}."}, {"role": "assistant", "content": str(i)}],
                 f"mem:{i}")
    for i in range(8)
]


class KeepWeakrefs(TrainerCallback):
    """Weak references to what the trainer trains with; notes which of an earlier trial's objects are alive."""

    def __init__(self, refs: dict, earlier: dict | None = None):
        self.refs, self.earlier = refs, earlier
        self.earlier_alive: list[str] = []

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.refs["lora model"] = weakref.ref(model)
        self.refs["optimizer"] = weakref.ref(optimizer)
        if self.earlier is not None:
            self.earlier_alive = [name for name, ref in self.earlier.items() if ref() is not None]


def _trial(run_dir, refs: dict, earlier: dict | None = None) -> KeepWeakrefs:
    """One sweep trial's training, as run_experiment does it: load the base, attach LoRA, train_sft."""
    base = load_base_model(ModelConfig(kind="tiny"), QuantConfig(method="nf4"), "cpu",
                           gradient_checkpointing=True)
    refs["base model"] = weakref.ref(base.model)
    model = attach_lora(base.model, LoraConfig(r=4, alpha=8))
    stage = SFTStageConfig(max_steps=2, batch_size=4, warmup_ratio=0.0)
    keep = KeepWeakrefs(refs, earlier)
    examples = tokenize_sft(base.tokenizer, CONVERSATIONS, stage.max_length)
    train_sft(model, base.tokenizer, examples, stage, run_dir, seed=0, device="cpu", compute_dtype=torch.float32,
              gradient_checkpointing=True, callbacks=[keep], progress=False)
    return keep


def test_a_released_trial_holds_nothing_in_the_next(tmp_path, monkeypatch):
    build_trainer = harness.sft.build_trainer
    trainers: list[weakref.ref] = []

    def keep_trainer(*args, **kwargs):
        trainer = build_trainer(*args, **kwargs)
        trainers.append(weakref.ref(trainer))
        return trainer

    monkeypatch.setattr(harness.sft, "build_trainer", keep_trainer)
    first, second = {}, {}
    gc.disable()  # only release_trial_memory collects: the test shows that it is what frees a trial
    try:
        _trial(tmp_path / "1", first)
        first["trainer"] = trainers[0]
        release_trial_memory("cpu")
        assert [name for name, ref in first.items() if ref() is not None] == []

        keep = _trial(tmp_path / "2", second, earlier=first)
        assert keep.earlier_alive == []  # nothing of trial 1 while trial 2 trains
        assert second["base model"]() is not first["base model"]()
        second["trainer"] = trainers[1]
        release_trial_memory("cpu")
        assert [name for name, ref in second.items() if ref() is not None] == []
    finally:
        gc.enable()


def test_memory_reading_on_cpu_is_the_resident_set():
    reading = release_trial_memory("cpu")
    assert reading.device == "cpu" and reading.allocated_mb > 0 and reading.peak_mb >= reading.allocated_mb * 0.5
    assert memory_reading("cpu").device_used_mb > 0
