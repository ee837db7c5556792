"""Optuna sweeps: `python -m harness +sweep=rank` — resumable, pruned, failure-isolated, distributable.

Optuna is driven directly (the Hydra Optuna sweeper on PyPI pins optuna<3), with the ask/tell interface:

    summary = run_sweep(cfg)     # cfg.sweep set by +sweep=<name>

- Storage: SQLite file `sweeps/<name>/study.db` by default (one worker; a second is refused);
  `journal:///path/file.log` for several processes on one machine (Optuna JournalStorage); `postgresql://…` for
  several machines. N workers = the same command run N times (by hand, `&`, a scheduler, on N machines); each is
  an ordinary worker and they split the study's trials. Trial n samples with seed sweep.seed + n.
- Resume, kill -9 included at any point: the same command continues the study; no finished trial is lost or
  re-run. A trial left RUNNING by a dead worker is completed from its results.json if it wrote one, else FAIL
  and its configuration retried once (harness.sweep_storage has the rules; tests/test_faults.py proves them).
- A resumed study whose search space, objective, eval set or fixed settings (every config key outside `sweep.*`
  that the space does not sample, with training data by content) changed is refused, naming the dotted keys.
- Grid sweeps enqueue every configuration once, up front; workers pop them atomically, so no configuration
  runs twice.
- Failure isolation: a trial that raises is FAIL with its reason stored; the sweep goes on. A full disk or a
  read-only sweeps directory is not a trial's failure: the sweep stops (DiskError), everything finished stays.
- Pruning: trials report a held-out score on a small fixed subset every `prune_every_steps` steps; trial.json
  records the steps each trial trained and its full budget (the report's pruning budget).
- One base model per worker (harness.worker): loaded and quantized at the first trial, a fresh adapter per trial.

Artifacts: `sweeps/<name>/sweep.json`, `trials/<NNN>/` (trial.json + a run directory's files), `best.json` and a
`best` symlink to the best trial, `trials.csv` / `trials.md`, and the comparison report.

The study's storage, locks and dead-worker recovery are in harness.sweep_storage; MLflow / W&B tracking in
harness.tracking.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import socket
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import optuna
from optuna.storages._heartbeat import get_heartbeat_thread
from optuna.trial import TrialState
from tqdm.auto import tqdm

from harness.artifacts import file_sha256, write_text_atomic
from harness.baselines import SELECTION_BASELINES
from harness.config import LOG_UNIFORM, RunConfig, SearchSpace, SweepConfig, target_module_list
from harness.evaluate import evaluate_heldout
from harness.faults import kill_point
from harness.memory import release_trial_memory
from harness.model import resolve_device
from harness.onpolicy import sweep_pairs
from harness.records import (
    BestTrial,
    EvalSetIdentity,
    IntermediateScore,
    ModelIdentity,
    RunResults,
    SweepRecord,
    TrialRecord,
    read_record,
    write_record,
)
from harness.redact import redact, redact_all
from harness.reporting import dpo_summary_lines
from harness.selection import rank_key
from harness.shared_sft import sft_data_hash, shared_sft, shares_sft
from harness.sweep_storage import (
    counted,
    load_study,
    next_trial,
    single_worker_lock,
    sync_trial_records,
)
from harness.tracking import StepCounter, Tracker, TrialSteps, steps_budget
from harness.worker import WorkerBase

log = logging.getLogger(__name__)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
# We drive heartbeats ourselves around each trial (ask/tell), which Optuna warns about for RDB storages.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")

# A full disk or a read-only directory: stop the sweep rather than fail every trial that follows.
DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES}
DISK_MESSAGES = ("No space left on device", "Read-only file system", "Disk quota exceeded",
                 "database or disk is full", "readonly database", "StorageFull")


class DiskError(RuntimeError):
    """The sweeps directory or the study's storage cannot be written; the study and finished trials are intact."""


def disk_error(err: BaseException) -> bool:
    """Whether `err` (or what caused it) is a full or read-only disk, however a library wrapped it."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError) and err.errno in DISK_ERRNOS:
            return True
        if any(message in str(err) for message in DISK_MESSAGES):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


@dataclass
class SweepSummary:
    name: str
    sweep_dir: Path
    n_complete: int
    n_pruned: int
    n_failed: int
    best_trial: int | None
    best_score: float | None
    wall_time_s: float
    failures: list[str]


def run_sweep(cfg: RunConfig, overrides: Sequence[str] | None = None) -> SweepSummary:
    """`overrides`: the Hydra task overrides `cfg` was composed with (HydraConfig's overrides.task); each trial
    records them, with the sweep's settings and its params, as the command that re-runs it alone. None: the
    trials record every setting that differs from the default composition instead (harness.reproduce)."""
    from harness.run import prepare_inputs

    sweep = cfg.sweep
    assert sweep is not None
    started = time.perf_counter()
    sweep_dir = Path(sweep.sweeps_dir) / sweep.name
    storage_url = sweep.storage or f"sqlite:///{sweep_dir / 'study.db'}"
    space = search_space(sweep.space)  # its shape was checked when the config was composed (SweepConfig)
    if sweep.servable_ranks_only:
        from harness.serving import check_servable_ranks

        rank_key = "sweep.space.lora_r" if sweep.space.lora_r else "lora.r"
        check_servable_ranks(sweep.space.lora_r or [cfg.lora.r], rank_key)

    # 1. Validate every input once (eval set hash, data, chat template, leakage) before any trial.
    inputs = prepare_inputs(cfg)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    try:
        with single_worker_lock(storage_url, sweep_dir):
            return _sweep(cfg, sweep_dir, storage_url, space, inputs, started, overrides)
    except Exception as err:
        if disk_error(err):
            raise DiskError(
                f"cannot write the sweep ({err}). The study and every finished trial are intact: free space or make "
                f"{sweep_dir} writable, then rerun the same command to continue."
            ) from err
        raise


def _sweep(cfg, sweep_dir, storage_url, space, inputs, started, overrides) -> SweepSummary:
    sweep = cfg.sweep
    # 2. Create or join the study (refused if its space, objective, eval set or fixed settings changed); a grid is
    # enqueued once.
    identity = {"space": space, "objective": sweep.objective, "eval_set": inputs.eval_set_hash,
                "fixed": fixed_settings(cfg, space, inputs)}
    study = load_study(sweep, storage_url, space, sweep_dir, identity)
    n_trials = _target_trials(sweep, space)
    _write_sweep_json(cfg, sweep_dir, storage_url, space, inputs.eval_set_hash, n_trials, started_at=_now())

    # 3. Trials, until the study holds n_trials finished or running ones. Each ask first recovers dead workers.
    progress = tqdm(total=n_trials, desc=f"sweep {sweep.name}", unit="trial")
    tracker = Tracker(sweep, sweep_dir)
    outcome = _outcome_reader(sweep.objective)
    worker_base = WorkerBase()  # one base model for all of this worker's trials (harness.worker)
    try:
        sft_start = shared_sft(cfg, sweep_dir, inputs, worker_base)  # SFT -> DPO over dpo_* only: SFT once
        if sft_start is not None and cfg.data.preference_source == "mined":  # mined once, with the shared SFT
            inputs = sweep_pairs(cfg, sweep_dir, sft_start, inputs, worker_base)
        while (trial := next_trial(study, sweep, sweep_dir, n_trials, outcome)) is not None:
            progress.n = counted(study)
            progress.refresh()
            _run_trial(cfg, sweep_dir, study, trial, space, inputs, tracker, overrides, worker_base, sft_start)
    finally:
        worker_base.close()
        release_trial_memory(resolve_device(cfg.train.device))  # the reporting split loads a base of its own
        progress.n = counted(study)
        progress.close()
        tracker.close()

    # 4. Summary, best pointer, the trials table and the comparison report.
    sync_trial_records(study)
    return _finish(cfg, study, sweep_dir, storage_url, space, inputs.eval_set_hash, n_trials, started)


def search_space(space: SearchSpace) -> dict[str, list]:
    """The non-empty fields of the sweep's search space."""
    return {name: list(values) for name, values in vars(space).items() if values}


# Each search-space parameter and the config key it sets (lora_alpha_ratio sets lora.alpha to ratio x r;
# lora_target_modules, a comma-separated string, sets the list).
PARAM_KEYS = {
    "lora_r": "lora.r", "lora_alpha": "lora.alpha", "lora_alpha_ratio": "lora.alpha",
    "lora_dropout": "lora.dropout", "lora_target_modules": "lora.target_modules",
    "sft_learning_rate": "train.sft.learning_rate", "sft_max_steps": "train.sft.max_steps",
    "dpo_beta": "train.dpo.beta", "dpo_max_steps": "train.dpo.max_steps",
    "dpo_learning_rate": "train.dpo.learning_rate", "dpo_loss_type": "train.dpo.loss_type",
}


def trial_settings(cfg: RunConfig, params: dict) -> dict[str, object]:
    """The config keys a trial's sampled parameters set, and their values."""
    settings = {}
    for name, value in params.items():
        if name == "lora_alpha_ratio":
            value = float(value) * int(params.get("lora_r", cfg.lora.r))
        elif name == "lora_target_modules":
            value = target_module_list(value)
        settings[PARAM_KEYS[name]] = value
    return settings


# Files whose content is in a sweep's identity (the eval set by its frozen hash, training data below), so that a
# moved copy resumes and an edited one does not; their paths are not.
_CONTENT_KEYS = ("data.sft_file", "data.preference_file", "data.mining.pool_file", "eval.data_file", "eval.manifest")
_NOT_RESULTS = ("train.sft.logging_steps", "train.dpo.logging_steps")  # how often a loss is logged, not what trains


def fixed_settings(cfg: RunConfig, space: dict[str, list], inputs) -> dict[str, object]:
    """What every trial of the sweep shares, as dotted key -> value: the resolved config outside `sweep.*`, less
    the keys the space samples, with the training data by content. A study resumed with other values would mix
    trials that are not comparable (harness.sweep_storage refuses it, naming the keys)."""
    import hashlib
    from dataclasses import asdict

    def flat(prefix: str, value) -> dict[str, object]:
        if isinstance(value, dict):
            return {k: v for key, item in value.items() for k, v in flat(f"{prefix}{key}.", item).items()}
        return {prefix[:-1]: value}

    sampled = {PARAM_KEYS[name] for name in space}
    settings = {key: value for key, value in flat("", asdict(replace(cfg, sweep=None))).items()
                if key != "sweep" and key not in sampled and key not in (*_CONTENT_KEYS, *_NOT_RESULTS)}
    if inputs.sft_examples:
        settings["data.sft_file (tokenized content)"] = sft_data_hash(inputs)[:16]
    if inputs.preference is not None:
        pairs = [[p.prompt, p.chosen, p.rejected] for p in inputs.preference.pairs]
        settings["data.preference_file (content)"] = hashlib.sha256(
            json.dumps(pairs, default=str).encode()).hexdigest()[:16]
    if cfg.data.mining.pool_file and cfg.data.preference_source == "mined":
        settings["data.mining.pool_file (content)"] = file_sha256(cfg.data.mining.pool_file)[:16]
    return redact_all(settings)  # it is stored in the study's database


def apply_params(cfg: RunConfig, params: dict) -> RunConfig:
    """A trial's run config: the sweep's base config with the sampled parameters put in place (validated)."""
    from omegaconf import OmegaConf

    conf = OmegaConf.structured(replace(cfg, sweep=None))
    for key, value in trial_settings(cfg, params).items():
        OmegaConf.update(conf, key, value, merge=False)
    return OmegaConf.to_object(conf)


# ---------------------------------------------------------------------------------------------------------
# One trial


class _PruningCallback(TrialSteps):
    """Every `every` steps: score a fixed held-out subset, report it, and stop the trial if the pruner says so."""

    def __init__(self, trial, tokenizer, eval_cfg, examples, every: int, record: list):
        super().__init__()
        self.trial, self.tokenizer = trial, tokenizer
        self.eval_cfg, self.examples, self.every, self.record = eval_cfg, examples, every, record

    def on_step_end(self, args, state, control, model=None, **kwargs):
        # The last step of a stage is skipped: the stage's full held-out evaluation follows it.
        if state.global_step % self.every or state.global_step >= state.max_steps:
            return
        score = evaluate_heldout(model, self.tokenizer, self.eval_cfg, self.examples).score
        model.train()
        step = self.trial_step(state)
        self.record.append(IntermediateScore(step=step, score=score))
        self.trial.report(score, step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"held-out subset score {score:.3f} at step {step}")


def _run_trial(cfg, sweep_dir, study, trial, space, inputs, tracker, task_overrides, worker_base, sft_start) -> None:
    from harness.reproduce import trial_command, trial_overrides, verify_overrides
    from harness.run import run_experiment

    sweep = cfg.sweep
    params = _suggest(trial, space, sweep.sampler)
    trial_dir = sweep_dir / "trials" / f"{trial.number:03d}"
    trial_dir.mkdir(parents=True, exist_ok=True)
    retry_of = trial.user_attrs.get("retry_of")
    if retry_of is None:  # Optuna's heartbeat retry names the failed trial in a system attribute
        retry_of = study._storage.get_trial_system_attrs(trial._trial_id).get("failed_trial")
    overrides = [redact(o) for o in trial_overrides(cfg, params, task_overrides)]
    record = TrialRecord(
        number=trial.number, state="RUNNING", params=params, command=trial_command(overrides), overrides=overrides,
        trial_dir=str(trial_dir), host=socket.gethostname(), pid=os.getpid(), started_at=_now(), retry_of=retry_of,
    )
    write_record(trial_dir / "trial.json", record)
    trial.set_user_attr("trial_dir", str(trial_dir))  # the owner (next_trial) and trial.json are recorded
    kill_point("after_pid")
    started = time.perf_counter()
    counter = StepCounter()  # first: a pruning callback may stop the step it counts
    callbacks = [counter, tracker.trial_callback(trial.number, params)]
    if sweep.pruner != "none":
        subset = inputs.heldout[: sweep.prune_eval_examples]
        callbacks.append(_PruningCallback(trial, inputs.tokenizer, cfg.eval, subset,
                                          sweep.prune_every_steps, record.intermediate))
    state, values, reason = TrialState.FAIL, None, None
    heartbeat = get_heartbeat_thread(trial._trial_id, study._storage)
    try:
        trial_cfg = apply_params(cfg, params)
        verify_overrides(overrides, trial_cfg)  # the recorded command rebuilds exactly this config
        record.steps_budget = steps_budget(trial_cfg, shared_sft=sft_start is not None)
        with heartbeat:
            results = run_experiment(trial_cfg, trial_dir, inputs, callbacks=callbacks, progress=False,
                                     base=worker_base.base_for(trial_cfg), shared_sft=sft_start,
                                     baselines=SELECTION_BASELINES)
        kill_point("after_results")
        values, constraints = _outcome(results, sweep.objective)
        for name, value in constraints.items():
            trial.set_constraint(name, value)
        trial.set_user_attr("heldout_score", results.final.heldout.score)
        record.feasible = all(c <= 0 for c in constraints.values())
        state = TrialState.COMPLETE
    except optuna.TrialPruned as pruned:
        state, reason = TrialState.PRUNED, str(pruned)
    except Exception as err:
        if disk_error(err):
            raise  # not this trial's fault: it stays RUNNING, and the rerun retries it (its worker is gone)
        reason = f"{type(err).__name__}: {err}"
        log.exception("trial %d failed", trial.number)
    # The trial's adapter, trainer and optimizer are unreachable now (failed and pruned trials included): free
    # them before the next trial trains on the shared base (trl's trainers leave reference cycles; CUDA caches).
    release_trial_memory(resolve_device(cfg.train.device))
    if reason:
        trial.set_user_attr("fail_reason", reason)
    study.tell(trial, values if state == TrialState.COMPLETE else None, state=state)
    kill_point("after_tell")
    record.state, record.values, record.fail_reason = state.name, values, reason
    record.steps_trained = counter.steps
    record.finished_at, record.duration_s = _now(), time.perf_counter() - started
    tracker.end_trial(state.name, values)
    kill_point("before_trial_json")
    write_record(trial_dir / "trial.json", record)
    scores = " ".join(f"{v:.3f}" for v in values) if values else "-"
    tqdm.write(f"trial {trial.number:3d} {state.name:<8} {json.dumps(params)} score {scores} "
               f"{record.duration_s:.0f}s{' - ' + reason if reason else ''}")


def _suggest(trial, space: dict[str, list], sampler: str) -> dict:
    params = {}
    for name, values in space.items():
        if sampler != "grid" and name in LOG_UNIFORM:
            if len(values) != 2:
                raise ValueError(f"sweep.space.{name} must be [low, high] for sampler={sampler}")
            params[name] = trial.suggest_float(name, values[0], values[1], log=True)
        else:
            params[name] = trial.suggest_categorical(name, values)
    return params


def _objective_values(results: RunResults, objective: str) -> list[float]:
    heldout = results.final.heldout.score
    if objective == "multi":
        return [heldout, results.final.worst_regression]
    return [heldout]


def _outcome(results: RunResults, objective: str) -> tuple[list[float], dict[str, float]]:
    """A finished trial's objective values and its constraints (regression drop beyond its limit, <= 0 is
    feasible), by benchmark."""
    constraints = {name: -d.delta - d.max_regression for name, d in results.final.regression_delta.items()}
    return _objective_values(results, objective), constraints


def _outcome_reader(objective: str):
    """What a dead worker's trial finished with, read from its results.json (None if it never wrote one)."""
    def outcome(trial_dir: Path):
        path = trial_dir / "results.json"
        return _outcome(read_record(RunResults, path), objective) if path.is_file() else None
    return outcome


# ---------------------------------------------------------------------------------------------------------
# Study size (the study, its storage, locks and resume are in harness.sweep_storage)


def _target_trials(sweep: SweepConfig, space: dict[str, list]) -> int:
    if sweep.sampler == "grid":
        grid = math.prod(len(v) for v in space.values())
        return min(grid, sweep.n_trials) if sweep.n_trials else grid
    return sweep.n_trials


# ---------------------------------------------------------------------------------------------------------
# Summary, best adapter, trials table


def _write_sweep_json(cfg, sweep_dir, storage_url, space, eval_set_hash, n_trials, started_at,
                      finished_at=None, wall_time_s=None, model=None, eval_set=None) -> None:
    from omegaconf import OmegaConf

    sweep = cfg.sweep
    path = sweep_dir / "sweep.json"
    previous = read_record(SweepRecord, path) if path.is_file() else None
    record = SweepRecord(
        name=sweep.name,
        question=sweep.question,
        command=redact(" ".join(["python -m harness", *sys.argv[1:]])),
        storage=redact(storage_url),
        sampler=sweep.sampler,
        pruner=sweep.pruner,
        objective=sweep.objective,
        n_trials=n_trials,
        space=space,
        eval_set=eval_set or EvalSetIdentity(name=cfg.eval.name, hash=eval_set_hash, n=None,
                                             min_score=cfg.eval.min_score, split=cfg.eval.split),
        model=model or ModelIdentity(id=cfg.model.name_or_path, hash=None, quantized=cfg.quant.method == "nf4"),
        price_per_gpu_hour=sweep.price_per_gpu_hour,
        config=redact_all(OmegaConf.to_container(OmegaConf.structured(cfg))),
        started_at=previous.started_at if previous else started_at,
        servable_ranks_only=sweep.servable_ranks_only,
        finished_at=finished_at,
        wall_time_s=wall_time_s,
    )
    write_record(path, record)


def _finish(cfg, study, sweep_dir, storage_url, space, eval_set_hash, n_trials, started) -> SweepSummary:
    trials = study.get_trials(deepcopy=False)
    records = []
    for trial in sorted(trials, key=lambda t: t.number):
        trial_json = Path(trial.user_attrs.get("trial_dir", "")) / "trial.json"
        if trial_json.is_file():
            records.append(read_record(TrialRecord, trial_json))
    best = best_trial(records)
    identities = {}
    if best:
        results = read_record(RunResults, Path(best.trial_dir) / "results.json")
        identities = {"model": ModelIdentity(id=results.model.id, hash=results.model.hash,
                                             quantized=results.model.quantized),
                      "eval_set": results.eval_set}
        write_record(sweep_dir / "best.json", best)
        link = sweep_dir / "best"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(Path("trials") / Path(best.trial_dir).name)
    wall = time.perf_counter() - started
    _write_sweep_json(cfg, sweep_dir, storage_url, space, eval_set_hash, n_trials, started_at=_now(),
                      finished_at=_now(), wall_time_s=wall, **identities)
    _write_trials_table(records, sweep_dir)
    verdicts = _judge_on_reporting_split(cfg, sweep_dir, records)
    failures = [f"trial {r.number}: {r.fail_reason}" for r in records if r.state == "FAIL"]
    summary = SweepSummary(
        name=cfg.sweep.name, sweep_dir=sweep_dir,
        n_complete=sum(r.state == "COMPLETE" for r in records),
        n_pruned=sum(r.state == "PRUNED" for r in records),
        n_failed=len(failures),
        best_trial=best.number if best else None, best_score=best.score if best else None,
        wall_time_s=wall, failures=failures,
    )
    print(f"sweep {summary.name}: {summary.n_complete} complete, {summary.n_pruned} pruned, {summary.n_failed} failed "
          f"in {wall / 60:.1f} min")
    for failure in failures:
        print(f"  FAILED {failure}")
    if best:
        print(f"best: trial {best.number} {json.dumps(best.params)} selection split {best.score:.3f} -> {best.adapter}")
    if verdicts:
        for score in verdicts.scores:
            print(f"  trial {score.number}: selection {score.selection.score:.3f}, reporting {score.reporting.score:.3f} "
                  f"[{score.reporting.ci_low:.3f}, {score.reporting.ci_high:.3f}] (optimism gap "
                  f"{score.optimism_gap:+.3f})")
        for verdict in verdicts.verdicts:
            print(f"  {verdict.question}: {verdict.state}")
        print(f"recommended: trial {verdicts.recommended}")
        for line in dpo_summary_lines(verdicts.dpo) if verdicts.dpo else []:
            print(line)
    _write_report(sweep_dir)
    return summary


def _judge_on_reporting_split(cfg, sweep_dir: Path, records: list[TrialRecord]):
    """Score the chosen trials on the reporting split and write verdicts.json (harness.reporting)."""
    from harness.reporting import judge_on_reporting_split

    sft_dir = sweep_dir / "sft" if shares_sft(cfg) else None
    try:
        return judge_on_reporting_split(sweep_dir, records, cfg.eval.equivalence_margin, sft_dir)
    except Exception as err:  # the trials stand even if the reporting evaluation fails
        log.exception("could not score the chosen trials on the reporting split")
        print(f"reporting split: FAILED ({type(err).__name__}: {err}); no verdicts.json")
        return None


def best_trial(records: list[TrialRecord]) -> BestTrial | None:
    """The best complete trial by `selection.rank_key` (the report ranks by the same rule).

    Only trials whose artifacts are on this machine are candidates for the `best` pointer; with workers on
    several machines, each machine's summary covers the trials it ran (the study holds them all).
    """
    ranked = []
    for record in sorted(records, key=lambda r: r.number):
        results_path = Path(record.trial_dir) / "results.json"
        if record.state == "COMPLETE" and record.values and results_path.is_file():
            ranked.append((rank_key(read_record(RunResults, results_path), record.feasible), record))
    if not ranked:
        return None
    best = min(ranked, key=lambda pair: pair[0])[1]  # min keeps the first of equals: the lowest trial number
    trial_dir = Path(best.trial_dir)
    return BestTrial(number=best.number, trial_dir=str(trial_dir), adapter=str(trial_dir / "adapter"),
                     params=best.params, score=best.values[0], feasible=best.feasible)


def _write_trials_table(records: list[TrialRecord], sweep_dir: Path) -> None:
    import pandas as pd

    rows = []
    for r in records:
        row = {"trial": r.number, "state": r.state, **r.params,
               "heldout_score": r.values[0] if r.values else None, "feasible": r.feasible,
               "duration_s": round(r.duration_s or 0, 1), "fail_reason": r.fail_reason}
        rows.append(row)
    table = pd.DataFrame(rows)
    if not table.empty:
        table = table.sort_values("heldout_score", ascending=False, na_position="last")
    write_text_atomic(sweep_dir / "trials.csv", table.to_csv(index=False))
    write_text_atomic(sweep_dir / "trials.md", table.to_markdown(index=False) if not table.empty else "no trials\n")


def _write_report(sweep_dir: Path) -> None:
    try:
        from harness.report import write_report
    except ImportError:
        return
    try:
        path = write_report([sweep_dir])
        print(f"report: {path}")
    except Exception as err:
        log.exception("could not write the comparison report: %s", err)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
