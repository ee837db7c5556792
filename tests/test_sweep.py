"""Sweeps on the tiny model: artifacts, failure isolation, pruning, parallel workers (kill -9 and resume: test_faults)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from harness.artifacts import REPO_ROOT
from harness.sweep import run_sweep
from tests.conftest import TINY_OVERRIDES, make_config

SWEEP_OVERRIDES = [*TINY_OVERRIDES, "sweep.tracking=none"]


def _trials(sweep_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("trials/*/trial.json"))]


def _cli(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "harness", *args], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def test_three_trial_sweep_completes_with_artifacts(tmp_path, monkeypatch):
    monkeypatch.setattr("harness.baselines.cache_root", lambda: tmp_path / "cache")
    cfg = make_config([*SWEEP_OVERRIDES, "+sweep=rank", f"sweep.sweeps_dir={tmp_path}", "sweep.tracking=mlflow"])
    summary = run_sweep(cfg)

    sweep_dir = tmp_path / "rank"
    assert summary.n_complete == 3 and summary.n_failed == 0
    trials = _trials(sweep_dir)
    assert sorted(t["params"]["lora_r"] for t in trials) == [1, 4, 16]
    for trial in trials:
        trial_dir = sweep_dir / "trials" / f"{trial['number']:03d}"
        for name in ("config.yaml", "results.json", "loss.jsonl", "samples_sft.jsonl", "adapter/adapter_model.safetensors"):
            assert (trial_dir / name).exists(), name
        results = json.loads((trial_dir / "results.json").read_text())
        assert results["adapter"]["r"] == trial["params"]["lora_r"]
        assert trial["state"] == "COMPLETE" and trial["command"].startswith("python -m harness")
    best = json.loads((sweep_dir / "best.json").read_text())
    assert (sweep_dir / "best" / "adapter" / "adapter_config.json").exists()
    assert best["number"] in {t["number"] for t in trials}
    assert "lora_r" in (sweep_dir / "trials.csv").read_text()
    # Baselines once per sweep: the first trial computes them, the others read the cache.
    cached = [json.loads((sweep_dir / f"trials/{n:03d}/results.json").read_text())["baselines"]["cached"]
              for n in range(3)]
    assert cached == [False, True, True]
    # MLflow: a parent run for the sweep and a child run per trial, with the loss curve.
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{sweep_dir / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["harness-rank"])
    assert len(runs) == 4 and (runs["metrics.loss"].notna().sum() == 3)


def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(tmp_path):
    # lora.r = 0 is rejected when the trial's config is built: that trial fails, the others complete.
    cfg = make_config([*SWEEP_OVERRIDES, "+sweep=rank", f"sweep.sweeps_dir={tmp_path}", "sweep.space.lora_r=[0,2]"])
    summary = run_sweep(cfg)
    trials = {t["params"]["lora_r"]: t for t in _trials(tmp_path / "rank")}
    assert trials[0]["state"] == "FAIL" and "lora.r=0 must be > 0" in trials[0]["fail_reason"]
    assert trials[2]["state"] == "COMPLETE"
    assert summary.n_failed == 1 and "lora.r=0" in summary.failures[0]
    study = optuna.load_study(study_name="rank", storage=f"sqlite:///{tmp_path / 'rank' / 'study.db'}")
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert failed[0].user_attrs["fail_reason"].startswith("ValueError")


def test_pruner_stops_a_trial_with_a_bad_intermediate_score(tmp_path):
    # The random tiny model scores 0 on the held-out subset; a threshold pruner at 0.5 must stop it early.
    cfg = make_config([
        *SWEEP_OVERRIDES, "+sweep=rank", f"sweep.sweeps_dir={tmp_path}", "sweep.space.lora_r=[2]",
        "sweep.pruner=threshold", "sweep.prune_threshold=0.5", "sweep.prune_every_steps=2",
        "sweep.prune_eval_examples=2", "train.sft.max_steps=6",
    ])
    summary = run_sweep(cfg)
    (trial,) = _trials(tmp_path / "rank")
    assert summary.n_pruned == 1 and trial["state"] == "PRUNED"
    assert trial["intermediate"] == [{"step": 2, "score": 0.0}]
    loss_rows = (tmp_path / "rank" / "trials" / "000" / "loss.jsonl").read_text().splitlines()
    assert len(loss_rows) >= 1, "a pruned trial keeps what it measured (its loss curve up to the prune)"


def test_sft_then_dpo_trial_reports_and_logs_steps_across_both_stages(tmp_path):
    # Each trainer restarts global_step at 0. Reports must continue across stages: Optuna ignores a second report
    # at a step it has seen (the pruner would never see DPO), and W&B drops steps that go backwards.
    cfg = make_config([
        *SWEEP_OVERRIDES, "+sweep=sft_dpo", f"sweep.sweeps_dir={tmp_path}", "sweep.n_trials=1",
        "sweep.tracking=mlflow", "sweep.pruner=threshold", "sweep.prune_threshold=-1.0", "sweep.prune_every_steps=2",
        # sampling an SFT setting keeps SFT in every trial (a space of dpo_* only would share one SFT)
        "sweep.prune_eval_examples=2", "sweep.space.sft_max_steps=[4]", "sweep.space.dpo_max_steps=[4]",
        "train.dpo.batch_size=4", "data.max_preference_examples=8", "data.preference_source=file",
    ])
    summary = run_sweep(cfg)
    assert summary.n_complete == 1
    study = optuna.load_study(study_name="sft_dpo", storage=f"sqlite:///{tmp_path / 'sft_dpo' / 'study.db'}")
    assert sorted(study.trials[0].intermediate_values) == [2, 6]  # SFT step 2, then DPO step 2 = trial step 6
    (trial,) = _trials(tmp_path / "sft_dpo")
    assert [row["step"] for row in trial["intermediate"]] == [2, 6]

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'sft_dpo' / 'mlflow.db'}")
    child = mlflow.search_runs(experiment_names=["harness-sft_dpo"], filter_string="tags.mlflow.parentRunId != ''")
    history = mlflow.MlflowClient().get_metric_history(child["run_id"][0], "loss")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(1, 9))


def test_a_sweep_resumed_with_other_fixed_settings_is_refused_and_one_with_moved_data_resumes(tmp_path):
    import shutil

    overrides = [*SWEEP_OVERRIDES, "+sweep=rank", f"sweep.sweeps_dir={tmp_path}", "sweep.space.lora_r=[1,2]",
                 "sweep.sampler=random", "sweep.n_trials=1"]
    run_sweep(make_config(overrides))
    sweep_dir = tmp_path / "rank"
    before = sorted(str(p.relative_to(sweep_dir)) for p in sweep_dir.rglob("*") if "study.db" not in p.name)
    # A fixed training setting changed: refused from the command line, naming the key, no traceback, no new trial.
    worker = _cli([*overrides, "sweep.n_trials=2", "train.sft.learning_rate=5e-4", "data.max_sft_examples=12"])
    output = worker.communicate(timeout=600)[0]
    assert worker.returncode != 0 and "Traceback" not in output, output[-3000:]
    assert "different fixed settings" in output and "train.sft.learning_rate: study has 0.001, this command 0.0005" \
        in output and "data.max_sft_examples: study has 16, this command 12" in output, output[-3000:]
    assert "data.sft_file (tokenized content)" in output, "fewer rows are other training data too"
    assert sorted(str(p.relative_to(sweep_dir)) for p in sweep_dir.rglob("*") if "study.db" not in p.name) == before
    # The training data moved (same bytes), the sampled key's own default and n_trials changed: it resumes.
    moved = tmp_path / "data" / "sft_train.jsonl"
    moved.parent.mkdir()
    shutil.copy(REPO_ROOT / make_config([]).data.sft_file, moved)
    summary = run_sweep(make_config([*overrides, "sweep.n_trials=2", f"data.sft_file={moved}", "lora.r=8"]))
    assert summary.n_complete == 2 and [t["number"] for t in _trials(sweep_dir)] == [0, 1]


def test_a_second_sqlite_worker_on_a_running_sweep_is_refused(tmp_path):
    # There is no sweep.workers setting (N workers = the command run N times); on SQLite the second is refused.
    from harness.sweep_storage import single_worker_lock

    cfg = make_config([*SWEEP_OVERRIDES, "+sweep=rank", f"sweep.sweeps_dir={tmp_path}"])
    sweep_dir = tmp_path / "rank"
    lock = single_worker_lock(f"sqlite:///{sweep_dir / 'study.db'}", sweep_dir)
    with lock, pytest.raises(ValueError, match="SQLite is for one worker"):
        run_sweep(cfg)
    assert not (sweep_dir / "study.db").exists() and not (sweep_dir / "trials").exists()


def test_two_workers_on_a_journal_file_split_the_trials(tmp_path):
    journal = tmp_path / "study.log"
    args = [*SWEEP_OVERRIDES, "+sweep=rank", f"sweep.sweeps_dir={tmp_path}", f"sweep.storage=journal://{journal}",
            "sweep.space.lora_r=[1,2,4,8]", "sweep.n_trials=4", "train.sft.max_steps=6"]
    workers = [_cli(args) for _ in range(2)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), [o[-2000:] for o in outputs]
    trials = _trials(tmp_path / "rank")
    ranks = [t["params"]["lora_r"] for t in trials]
    assert sorted(ranks) == [1, 2, 4, 8], "every configuration ran exactly once"
    assert all(t["state"] == "COMPLETE" for t in trials)
    assert len({t["pid"] for t in trials}) == 2, "both workers took trials"


def test_wandb_tracking_logs_one_run_per_trial(tmp_path, monkeypatch):
    # wandb is in the tracking extra that `make setup` installs: without it this fails rather than skips.
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = make_config([*SWEEP_OVERRIDES, "+sweep=rank", f"sweep.sweeps_dir={tmp_path}", "sweep.space.lora_r=[2]",
                       "sweep.tracking=wandb"])
    run_sweep(cfg)
    runs = list((tmp_path / "rank" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0, "one offline W&B run for the one trial"
    assert b"heldout_score" in runs[0].read_bytes() and b"loss" in runs[0].read_bytes()
