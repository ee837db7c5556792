"""The SFT stage an sft_dpo sweep trains once, into `sweeps/<name>/sft/`, and every DPO trial starts from.

    start = shared_sft(cfg, sweep_dir, inputs, worker_base)   # None: this sweep trains its SFT in every trial
    run_experiment(trial_cfg, trial_dir, inputs, base=worker_base.base_for(trial_cfg), shared_sft=start)

When `train.stages` is [sft, dpo] and the search space samples only DPO settings (`dpo_*`), every trial would
train the same SFT adapter (same config, data and seed: the same tensors), so the sweep trains it once, as a
normal run directory (adapter/, loss.jsonl, results.json scored on the selection split), and each trial loads its
tensors into the trial's fresh adapter (the strict layout check DPO's reference gets), copies its SFT stage record
(marked `shared_from`, with the adapter hash), skips SFT training and runs DPO with that adapter as the reference.
A space that samples lora_* or sft_* settings changes the SFT per trial: those sweeps train SFT in every trial.

The recorded trial command still rebuilds the trial alone: a lone run trains the SFT itself, and with the same
seed gets the same SFT tensors (tests/test_sft_dpo_sweep.py checks the hashes).

Resume: `sft/shared_sft.json` (written last) records the SFT's identity: a content hash of the SFT-relevant config
(the run config without the DPO stage, preference data and sweep), the tokenized SFT data's hash, the eval set
hash, the seed and the base model's hash. A resumed sweep reuses the directory only if all of them match, and
otherwise refuses, naming what changed; it never deletes a directory it did not make. A directory the harness
made (it holds `.harness-shared-sft`, written first) but did not finish is replaced. Workers of one sweep take a
file lock around this, so only one trains the SFT and the others wait for it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from omegaconf import OmegaConf

from harness.baselines import SELECTION_BASELINES
from harness.config import RunConfig
from harness.records import (
    RunResults,
    SftIdentity,
    SharedSft,
    StageRecord,
    read_record,
    to_json,
    write_record,
)

log = logging.getLogger(__name__)

MARKER = ".harness-shared-sft"  # written first: the harness made this directory
RECORD = "shared_sft.json"


@dataclass
class SftStart:
    """What a trial starts from instead of training SFT: the shared adapter and its SFT stage record."""

    run_dir: Path
    adapter: Path
    adapter_hash: str
    stage: StageRecord  # already marked shared_from / adapter_hash

    @property
    def results(self) -> Path:
        return self.run_dir / "results.json"


def shares_sft(cfg: RunConfig) -> bool:
    """SFT then DPO, and a search space that samples DPO settings only: every trial's SFT would be the same."""
    from harness.sweep import search_space

    space = search_space(cfg.sweep.space) if cfg.sweep is not None else {}
    return tuple(cfg.train.stages) == ("sft", "dpo") and bool(space) and all(
        name.startswith("dpo_") for name in space)


def shared_sft(cfg: RunConfig, sweep_dir: Path, inputs, worker_base) -> SftStart | None:
    """The sweep's shared SFT: read (identity checked) or trained now. None when the sweep does not share one."""
    if not shares_sft(cfg):
        return None
    run_dir = sweep_dir / "sft"
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / ".sft.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one worker trains it; the others wait here, then read it
        return _read_or_train(cfg, run_dir, inputs, worker_base)


def sft_run_config(cfg: RunConfig) -> RunConfig:
    """The run that trains the shared SFT: the sweep's config with the SFT stage only (so no preference data)."""
    return replace(cfg, sweep=None, train=replace(cfg.train, stages=["sft"]),
                   data=replace(cfg.data, preference_source="file"))


def sft_config(cfg: RunConfig) -> dict:
    """The settings that decide the SFT adapter and its scores: everything but the DPO stage, preference data and
    the sweep."""
    config = OmegaConf.to_container(OmegaConf.structured(replace(cfg, sweep=None)))
    del config["sweep"]
    for key in ("dpo", "stages"):
        config["train"].pop(key)
    for key in [k for k in config["data"] if "preference" in k or k == "mining"]:
        config["data"].pop(key)
    return config


def sft_data_hash(inputs) -> str:
    """The SFT training data by content: its tokenized examples and loss masks (not the file's path)."""
    return _sha256([[e.input_ids, e.assistant_masks] for e in inputs.sft_examples])


def sft_identity(cfg: RunConfig, inputs, model_hash: str) -> SftIdentity:
    return SftIdentity(config_hash=_sha256(sft_config(cfg)), data_hash=sft_data_hash(inputs),
                       eval_set_hash=inputs.eval_set_hash, seed=cfg.seed, model_hash=model_hash)


def _read_or_train(cfg: RunConfig, run_dir: Path, inputs, worker_base) -> SftStart:
    from harness.run import run_experiment

    sft_cfg = sft_run_config(cfg)
    base = worker_base.base_for(sft_cfg)  # the trials' base too: same model, quantization and device
    identity = sft_identity(cfg, inputs, base.model_hash)
    record_path = run_dir / RECORD
    if record_path.is_file():
        record = read_record(SharedSft, record_path)
        _refuse_changed(record, identity, sft_config(cfg), run_dir)
        print(f"shared SFT: reusing {run_dir} (identity {record.identity_hash[:12]} matches)", flush=True)
        return _start(run_dir, record)
    if run_dir.exists():
        if not (run_dir / MARKER).is_file():
            raise ValueError(
                f"{run_dir} exists but was not made by the harness (no {MARKER}): the sweep trains its shared SFT "
                "there and will not overwrite it; move it away or choose another sweep.name")
        log.warning("replacing %s: a shared SFT run the harness started and did not finish", run_dir)
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / MARKER).write_text(f"made by harness.shared_sft on {socket.gethostname()} pid {os.getpid()}\n",
                                  encoding="utf-8")
    print(f"shared SFT: training it once for every DPO trial, into {run_dir}", flush=True)
    results = run_experiment(sft_cfg, run_dir, inputs, progress=False, base=base, baselines=SELECTION_BASELINES)
    record = SharedSft(identity=identity, identity_hash=_sha256(to_json(identity)), run_dir=str(run_dir),
                       adapter_hash=results.adapter.hash, config=sft_config(cfg),
                       created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    write_record(record_path, record)
    return _start(run_dir, record, results)


def _refuse_changed(record: SharedSft, identity: SftIdentity, config: dict, run_dir: Path) -> None:
    if record.identity == identity:
        return
    changed = [name for name in vars(identity) if getattr(identity, name) != getattr(record.identity, name)]
    detail = ""
    if "config_hash" in changed:
        keys = [key for key, (old, new) in _leaf_pairs(record.config, config) if old != new]
        detail = f" (config: {', '.join(keys[:5]) or 'its layout'})"
    raise ValueError(
        f"{run_dir}: the sweep's shared SFT was trained with another {', '.join(changed)}{detail} than this "
        f"command asks for. It is not deleted: move {run_dir} away (or choose another sweep.name) to train a new "
        "one, or rerun with the settings it was trained with")


def _start(run_dir: Path, record: SharedSft, results: RunResults | None = None) -> SftStart:
    from harness.model import adapter_hash

    adapter = run_dir / "adapter"
    actual = adapter_hash(adapter)
    if actual != record.adapter_hash:
        raise ValueError(f"{adapter}: its tensors changed since the shared SFT was trained (hash {actual[:12]}, "
                         f"recorded {record.adapter_hash[:12]}); move {run_dir} away to train it again")
    results = results or read_record(RunResults, run_dir / "results.json")
    stage = replace(results.stages["sft"], shared_from=str(run_dir), adapter_hash=actual)
    return SftStart(run_dir=run_dir, adapter=adapter, adapter_hash=actual, stage=stage)


def _leaf_pairs(old, new, prefix: str = ""):
    """(dotted key, (old value, new value)) for every leaf of either dict."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            yield from _leaf_pairs(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix, (old, new)


def _sha256(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
