"""One base model per sweep worker: loaded and quantized at the worker's first trial, shared by the trials after it.

    worker_base = WorkerBase()
    results = run_experiment(trial_cfg, trial_dir, inputs, base=worker_base.base_for(trial_cfg))
    worker_base.close()                                          # before the reporting split loads its own

Loading the base (and NF4-quantizing it) took a few seconds per trial on the tiny model and minutes for a 7B on a
GPU; nothing a trial does changes it. run_experiment puts a fresh LoRA adapter on the shared base and takes it off
when the trial ends, however it ends (harness.model.lora_adapter), and seeds right before the adapter is
created, so trial N trains exactly what it would alone in a fresh process (tests/test_one_base.py proves it: the
base weights bit-identical across trials, trial N's adapter tensors and per-example outputs equal to its recorded
command run alone).

A base is shared only between trials that would load the same one: same model, quantization, device and
gradient-checkpointing setting (no search parameter changes them). A base left with adapter layers on it (a
trial that died half-way through taking its adapter off) is dropped and loaded again rather than trusted.
"""

from __future__ import annotations

import logging

from harness.config import RunConfig
from harness.model import BaseModel, lora_layers, resolve_device

log = logging.getLogger(__name__)


class WorkerBase:
    """The base model this worker's trials share. `for_training=False`: a base for evaluation only (no k-bit
    training preparation), as the reporting split's candidates share one (harness.reporting)."""

    def __init__(self, for_training: bool = True) -> None:
        self.base: BaseModel | None = None
        self.key: tuple | None = None
        self.loads = 0  # how many times a base was loaded (1 for a whole sweep of one model)
        self.for_training = for_training

    def base_for(self, cfg: RunConfig) -> BaseModel:
        """The shared base for a trial of `cfg`, loaded now if there is none yet or the trial needs another."""
        from harness.model import load_base_model
        from harness.run import gradient_checkpointing_for, load_run_base

        device = resolve_device(cfg.train.device)
        checkpointing = gradient_checkpointing_for(cfg, device) if self.for_training else None
        key = (cfg.model, cfg.quant, device, checkpointing)
        if self.base is not None and key == self.key and lora_layers(self.base.model):
            log.warning("the shared base model still holds adapter layers after a trial; loading it again")
            self.close()
        if self.base is None or key != self.key:
            self.close()
            self.base = load_run_base(cfg) if self.for_training else \
                load_base_model(cfg.model, cfg.quant, device, for_training=False)
            self.key, self.loads = key, self.loads + 1
        return self.base

    def close(self) -> None:
        """Let go of the base (harness.memory.release_trial_memory then frees it)."""
        self.base, self.key = None, None
