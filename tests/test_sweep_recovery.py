"""The study's bookkeeping without a model: liveness that survives pid reuse and containers, recovery of dead
workers' trials, trial.json kept in line with the study, per-trial sampler seeds, a resumed study that changed,
compose-time sweep validation, one worker on SQLite, and credentials redacted."""

from __future__ import annotations

import json
import sys

import pytest
from optuna.trial import TrialState

from harness.records import TrialRecord, read_record, write_record
from harness.redact import redact
from harness.sweep import _suggest, _write_sweep_json, search_space
from harness.sweep_storage import (
    load_study,
    next_trial,
    owner_attrs,
    owner_state,
    recover_dead_trials,
    single_worker_lock,
    sync_trial_records,
)
from tests.conftest import TINY_OVERRIDES, make_config

NOTHING_FINISHED = lambda trial_dir: None


def _grid_study(tmp_path, lora_r=(1, 2)):
    cfg = make_config([*TINY_OVERRIDES, "+sweep=rank", f"sweep.sweeps_dir={tmp_path}",
                       f"sweep.space.lora_r=[{','.join(map(str, lora_r))}]"])
    space = search_space(cfg.sweep.space)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    return cfg, load_study(cfg.sweep, storage, space, tmp_path, {"space": space}), storage


def _asked_by(study, attrs: dict):
    trial = study.ask()
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    return trial


def _state(study, number: int) -> TrialState:
    return study.get_trials()[number].state


def test_a_reused_pid_is_not_taken_for_the_dead_worker(tmp_path):
    # The recorded pid is alive (it is this process) but started at another time: another process reuses it.
    _, study, _ = _grid_study(tmp_path)
    trial = _asked_by(study, {**owner_attrs(), "pid_start": "1"})
    assert owner_state(trial.user_attrs) == "dead"
    recover_dead_trials(study, NOTHING_FINISHED)
    trials = study.get_trials()
    assert trials[trial.number].state == TrialState.FAIL
    assert "died" in trials[trial.number].user_attrs["fail_reason"]
    retry = [t for t in trials if t.user_attrs.get("retry_of") == trial.number]
    assert len(retry) == 1 and retry[0].state == TrialState.WAITING
    assert retry[0].system_attrs["fixed_params"] == trials[trial.number].system_attrs["fixed_params"]


def test_a_live_owner_is_left_running(tmp_path):
    _, study, _ = _grid_study(tmp_path)
    trial = _asked_by(study, owner_attrs())
    recover_dead_trials(study, NOTHING_FINISHED)
    assert _state(study, trial.number) == TrialState.RUNNING


@pytest.mark.parametrize("other", [{"pid_ns": "pid:[4026531836-other]"}, {"boot_id": "another-boot"},
                                   {"host": "another-machine"}])
def test_an_owner_in_another_container_boot_or_machine_is_not_judged_by_pid(tmp_path, other):
    # pid 2**22 + 1 does not exist here; in another pid namespace (or boot, or host) it says nothing about life.
    _, study, _ = _grid_study(tmp_path)
    trial = _asked_by(study, {**owner_attrs(), "pid": 2**22 + 1, **other})
    assert owner_state(trial.user_attrs) == "unknown"
    recover_dead_trials(study, NOTHING_FINISHED)
    assert _state(study, trial.number) == TrialState.RUNNING


def test_a_trial_asked_but_never_owned_is_failed_and_its_configuration_retried_once(tmp_path):
    _, study, _ = _grid_study(tmp_path)
    trial = study.ask()  # the worker died before recording itself (it held the ask lock until then)
    recover_dead_trials(study, NOTHING_FINISHED)
    assert _state(study, trial.number) == TrialState.FAIL
    retry = [t for t in study.get_trials() if t.user_attrs.get("retry_of") == trial.number]
    assert len(retry) == 1
    # The retry dies the same way: not retried again.
    retried = study.ask()
    while retried.number != retry[0].number:
        study.tell(retried, 0.0)
        retried = study.ask()
    recover_dead_trials(study, NOTHING_FINISHED)
    assert not any(t.user_attrs.get("retry_of") == retried.number for t in study.get_trials())


def test_a_dead_trial_that_wrote_results_is_completed_from_them(tmp_path):
    _, study, _ = _grid_study(tmp_path)
    trial = _asked_by(study, {**owner_attrs(), "pid_start": "1", "trial_dir": str(tmp_path / "trials" / "000")})
    recover_dead_trials(study, lambda trial_dir: ([0.75], {"hellaswag": 0.02}))
    done = study.get_trials()[trial.number]
    assert done.state == TrialState.COMPLETE and done.values == [0.75]
    assert done.constraints == {"hellaswag": 0.02}
    assert not any(t.user_attrs.get("retry_of") == trial.number for t in study.get_trials())


def test_trial_json_left_running_is_brought_in_line_with_the_study(tmp_path):
    _, study, _ = _grid_study(tmp_path)
    trial_dir = tmp_path / "trials" / "000"
    trial_dir.mkdir(parents=True)
    trial = _asked_by(study, {**owner_attrs(), "trial_dir": str(trial_dir)})
    write_record(trial_dir / "trial.json", TrialRecord(
        number=trial.number, state="RUNNING", params={"lora_r": 1}, command="python -m harness", host="h",
        pid=1, started_at="2026-01-01T00:00:00+00:00", trial_dir=str(trial_dir)))
    trial.report(0.25, 2)
    trial.set_constraint("hellaswag", -0.01)
    study.tell(trial, 0.5)  # ... and the worker died before rewriting trial.json
    sync_trial_records(study)
    record = read_record(TrialRecord, trial_dir / "trial.json")
    assert (record.state, record.values, record.feasible) == ("COMPLETE", [0.5], True)
    assert [(s.step, s.score) for s in record.intermediate] == [(2, 0.25)] and record.finished_at


def test_two_tpe_workers_never_propose_the_same_parameters(tmp_path):
    # Two workers = two processes with their own Study object and sampler on one journal file. With one sampler
    # seed for both, their first (random) trials are identical; trial n draws from seed + n instead.
    cfg = make_config([*TINY_OVERRIDES, "+sweep=rank", f"sweep.sweeps_dir={tmp_path}", "sweep.sampler=tpe",
                       "sweep.space.lora_r=[]", "sweep.space.lora_alpha_ratio=[]",
                       "sweep.space.sft_learning_rate=[1e-5,1e-3]", "sweep.n_trials=8"])
    space = search_space(cfg.sweep.space)
    storage = f"journal://{tmp_path / 'study.log'}"
    workers = [load_study(cfg.sweep, storage, space, tmp_path, {"space": space}) for _ in range(2)]
    proposed, seeds = [], []
    for number in range(cfg.sweep.n_trials):
        study = workers[number % 2]
        trial = next_trial(study, cfg.sweep, tmp_path, cfg.sweep.n_trials, NOTHING_FINISHED)
        params = _suggest(trial, space, cfg.sweep.sampler)
        proposed.append(params["sft_learning_rate"])
        seeds.append(trial.user_attrs["sampler_seed"])
        study.tell(trial, params["sft_learning_rate"] * 1000)
    assert len(set(proposed)) == len(proposed), proposed
    assert seeds == [cfg.sweep.seed + n for n in range(cfg.sweep.n_trials)]


def test_a_resumed_study_whose_space_or_eval_set_changed_is_refused(tmp_path):
    cfg = make_config([*TINY_OVERRIDES, "+sweep=rank", f"sweep.sweeps_dir={tmp_path}"])
    space = search_space(cfg.sweep.space)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    identity = {"space": space, "objective": "constrained", "eval_set": "abc"}
    load_study(cfg.sweep, storage, space, tmp_path, identity)
    load_study(cfg.sweep, storage, space, tmp_path, identity)  # the same sweep resumes
    with pytest.raises(ValueError, match="different space .*lora_r"):
        load_study(cfg.sweep, storage, space, tmp_path, {**identity, "space": {**space, "lora_r": [1, 4, 32]}})
    with pytest.raises(ValueError, match="different eval_set .*'abc'.*'def'"):
        load_study(cfg.sweep, storage, space, tmp_path, {**identity, "eval_set": "def"})


def test_a_resumed_study_whose_fixed_settings_changed_is_refused_naming_each_key(tmp_path, caplog):
    cfg = make_config([*TINY_OVERRIDES, "+sweep=rank", f"sweep.sweeps_dir={tmp_path}"])
    space = search_space(cfg.sweep.space)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    identity = {"space": space, "objective": "constrained", "eval_set": "abc"}
    load_study(cfg.sweep, storage, space, tmp_path, identity)  # a study from before fixed settings were recorded
    fixed = {"train.sft.learning_rate": 0.001, "seed": 0}
    load_study(cfg.sweep, storage, space, tmp_path, {**identity, "fixed": fixed})  # joins it, and records them
    assert "does not record its fixed settings" in caplog.text
    load_study(cfg.sweep, storage, space, tmp_path, {**identity, "fixed": fixed})
    changed = {"train.sft.learning_rate": 0.0005, "seed": 0, "data.max_sft_examples": 8}
    with pytest.raises(ValueError, match=r"different fixed settings \(data\.max_sft_examples: study has \(not set\), "
                                         r"this command 8; train\.sft\.learning_rate: study has 0\.001, this command "
                                         r"0\.0005\)"):
        load_study(cfg.sweep, storage, space, tmp_path, {**identity, "fixed": changed})


@pytest.mark.parametrize(("overrides", "key"), [
    (["sweep.sampler=bayes"], "sweep.sampler"),
    (["sweep.pruner=medain"], "sweep.pruner"),
    (["sweep.tracking=tensorboard"], "sweep.tracking"),
    (["sweep.objective=multi", "sweep.pruner=median"], "sweep.pruner=median with sweep.objective=multi"),
    (["sweep.sampler=tpe", "sweep.space.sft_learning_rate=[1e-3]"], "sweep.space.sft_learning_rate"),
    (["sweep.sampler=random", "sweep.space.sft_learning_rate=[1e-3,1e-5]"], "sweep.space.sft_learning_rate"),
    (["sweep.space.lora_r=[4,4]"], "sweep.space.lora_r"),
    (["sweep.space.lora_r=[]", "sweep.space.lora_alpha_ratio=[]"], "sweep.space of sweep 'rank' is empty"),
    (["sweep.sampler=tpe", "sweep.n_trials=6", "sweep.n_startup_trials=6"], "sweep.n_startup_trials"),
    (["sweep.workers=2"], "workers"),
])
def test_sweep_config_errors_are_raised_at_compose_time_naming_the_key(overrides, key):
    with pytest.raises(Exception, match=key.replace("[", r"\[").replace(".", r"\.")):
        make_config(["+sweep=rank", *overrides])


def test_a_short_tpe_sweep_keeps_trials_for_tpe_itself():
    sweep = make_config(["+sweep=sft_dpo"]).sweep
    assert sweep.n_trials == 3 and sweep.startup_trials() == 1  # 1 random, then 2 chosen by TPE


def test_a_second_worker_on_sqlite_is_refused(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    first, second = single_worker_lock(storage, tmp_path), single_worker_lock(storage, tmp_path)
    with first, pytest.raises(ValueError, match="SQLite is for one worker"), second:
        pass
    with single_worker_lock(storage, tmp_path):  # released when the first worker ends
        pass


def test_credentials_are_redacted_from_sweep_json(tmp_path, monkeypatch):
    url = "postgresql://harness:hunter2@db.example.com:5432/sweeps"
    assert redact(url) == "postgresql://harness:***@db.example.com:5432/sweeps"
    assert redact("mysql://u@h/db?password=hunter2&x=1") == "mysql://u@h/db?password=***&x=1"
    cfg = make_config([*TINY_OVERRIDES, "+sweep=rank", f"sweep.sweeps_dir={tmp_path}", f"sweep.storage={url}"])
    monkeypatch.setattr(sys, "argv", ["harness", "+sweep=rank", f"sweep.storage={url}"])
    _write_sweep_json(cfg, tmp_path, url, search_space(cfg.sweep.space), "hash", 3, started_at="now")
    text = (tmp_path / "sweep.json").read_text()
    assert "hunter2" not in text
    record = json.loads(text)
    assert record["storage"] == redact(url) and redact(url) in record["command"]
