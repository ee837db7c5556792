"""Optuna sweeps: `python -m harness +sweep=rank` — resumable, pruned, failure-isolated, distributable.

Optuna is driven directly (the Hydra Optuna sweeper on PyPI pins optuna<3), with the ask/tell interface:

    summary = run_sweep(cfg)     # cfg.sweep set by +sweep=<name>

- Storage: SQLite file `sweeps/<name>/study.db` by default (one worker); `journal:///path/file.log` for several
  processes on one machine (Optuna JournalStorage); `postgresql://…` for several machines. Every worker runs
  the same command and they split the study's trials.
- Resume: the same command continues the study; finished trials are not re-run. A trial left RUNNING by a
  process that died is marked FAIL and its configuration retried once: at once when the dead process was on
  this machine (its pid is gone), through Optuna's heartbeat for RDB storages otherwise.
- Grid sweeps enqueue every configuration once, up front; workers pop them atomically, so no configuration
  runs twice.
- Failure isolation: a trial that raises is FAIL with its reason stored; the sweep goes on.
- Pruning: trials report a held-out score on a small fixed subset every `prune_every_steps` steps.

Artifacts: `sweeps/<name>/sweep.json`, `trials/<NNN>/` (trial.json + a run directory's files), `best.json` and a
`best` symlink to the best trial, `trials.csv` / `trials.md`, and the comparison report.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import math
import os
import socket
import sys
import time
import warnings
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import optuna
from optuna.storages import fail_stale_trials
from optuna.storages._heartbeat import get_heartbeat_thread
from optuna.trial import TrialState
from tqdm.auto import tqdm
from transformers import TrainerCallback

from harness.artifacts import write_text_atomic
from harness.config import RunConfig, SearchSpace, SweepConfig
from harness.evaluate import evaluate_heldout
from harness.memory import release_trial_memory
from harness.model import resolve_device
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
from harness.selection import rank_key

log = logging.getLogger(__name__)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
# We drive heartbeats ourselves around each trial (ask/tell), which Optuna warns about for RDB storages.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")

# Search-space fields that are continuous ([low, high], log-uniform) for the TPE and random samplers.
LOG_UNIFORM = {"sft_learning_rate", "dpo_learning_rate"}


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


def run_sweep(cfg: RunConfig) -> SweepSummary:
    from harness.run import prepare_inputs

    sweep = cfg.sweep
    assert sweep is not None
    started = time.perf_counter()
    sweep_dir = Path(sweep.sweeps_dir) / sweep.name
    storage_url = sweep.storage or f"sqlite:///{sweep_dir / 'study.db'}"
    _check_storage_for_workers(storage_url, sweep.workers)
    space = search_space(sweep.space)
    if not space:
        raise ValueError(f"sweep.space of sweep {sweep.name!r} is empty: name at least one parameter to vary")
    if sweep.servable_ranks_only:
        from harness.export import check_servable_ranks

        rank_key = "sweep.space.lora_r" if sweep.space.lora_r else "lora.r"
        check_servable_ranks(sweep.space.lora_r or [cfg.lora.r], rank_key)

    # 1. Validate every input once (eval set hash, data, chat template, leakage) before any trial.
    inputs = prepare_inputs(cfg)
    sweep_dir.mkdir(parents=True, exist_ok=True)

    # 2. Create or join the study; grid configurations are enqueued exactly once.
    study = _load_study(sweep, storage_url, space, sweep_dir)
    n_trials = _target_trials(sweep, space)
    _write_sweep_json(cfg, sweep_dir, storage_url, space, inputs.eval_set_hash, n_trials, started_at=_now())

    # 3. Trials, until the study holds n_trials finished or running ones.
    progress = tqdm(total=n_trials, desc=f"sweep {sweep.name}", unit="trial")
    tracker = _Tracker(sweep, sweep_dir)
    try:
        while True:
            _recover_dead_trials(study)
            with _study_lock(sweep_dir, study):
                if _done(study, n_trials):
                    break
                trial = study.ask()
            if sweep.sampler == "grid" and "fixed_params" not in study._storage.get_trial_system_attrs(trial._trial_id):
                # Another machine popped the last queued configuration between our check and our ask.
                study._storage.set_trial_user_attr(trial._trial_id, "surplus", True)
                study.tell(trial, state=TrialState.FAIL)
                break
            progress.n = _counted(study)
            progress.refresh()
            _run_trial(cfg, sweep_dir, study, trial, space, inputs, tracker)
    finally:
        progress.n = _counted(study)
        progress.close()
        tracker.close()

    # 4. Summary, best pointer, the trials table and the comparison report.
    summary = _finish(cfg, study, sweep_dir, storage_url, space, inputs.eval_set_hash, n_trials, started)
    return summary


def search_space(space: SearchSpace) -> dict[str, list]:
    """The non-empty fields of the sweep's search space."""
    return {name: list(values) for name, values in vars(space).items() if values}


# Each search-space parameter and the config key it sets (lora_alpha_ratio sets lora.alpha to ratio x r).
PARAM_KEYS = {
    "lora_r": "lora.r", "lora_alpha": "lora.alpha", "lora_alpha_ratio": "lora.alpha",
    "sft_learning_rate": "train.sft.learning_rate", "sft_max_steps": "train.sft.max_steps",
    "dpo_beta": "train.dpo.beta", "dpo_max_steps": "train.dpo.max_steps",
    "dpo_learning_rate": "train.dpo.learning_rate",
}


def trial_settings(cfg: RunConfig, params: dict) -> dict[str, object]:
    """The config keys a trial's sampled parameters set, and their values."""
    settings = {}
    for name, value in params.items():
        if name == "lora_alpha_ratio":
            value = float(value) * int(params.get("lora_r", cfg.lora.r))
        settings[PARAM_KEYS[name]] = value
    return settings


def apply_params(cfg: RunConfig, params: dict) -> RunConfig:
    """A trial's run config: the sweep's base config with the sampled parameters put in place (validated)."""
    from omegaconf import OmegaConf

    conf = OmegaConf.structured(replace(cfg, sweep=None))
    for key, value in trial_settings(cfg, params).items():
        OmegaConf.update(conf, key, value, merge=False)
    return OmegaConf.to_object(conf)


def trial_command(cfg: RunConfig, params: dict) -> str:
    """The command that re-runs one trial alone."""
    parts = [f"{key}={value}" for key, value in trial_settings(cfg, params).items()]
    base_args = [a for a in sys.argv[1:] if not a.startswith("+sweep=") and not a.startswith("sweep.")]
    return " ".join(["python -m harness", *base_args, *parts])


# ---------------------------------------------------------------------------------------------------------
# One trial


class _TrialSteps(TrainerCallback):
    """Counts optimizer steps across a trial's stages: each trainer (SFT, then DPO) restarts global_step at 0,
    but Optuna ignores a second report at a step it has seen and W&B drops steps that go backwards."""

    def __init__(self):
        self.offset = 0

    def on_train_end(self, args, state, control, **kwargs):
        self.offset += state.global_step

    def trial_step(self, state) -> int:
        return self.offset + state.global_step


class _PruningCallback(_TrialSteps):
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


def _run_trial(cfg, sweep_dir, study, trial, space, inputs, tracker) -> None:
    from harness.run import run_experiment

    sweep = cfg.sweep
    params = _suggest(trial, space, sweep.sampler)
    trial_dir = sweep_dir / "trials" / f"{trial.number:03d}"
    trial_dir.mkdir(parents=True, exist_ok=True)
    retry_of = trial.user_attrs.get("retry_of")
    for key, value in {"host": socket.gethostname(), "pid": os.getpid(), "trial_dir": str(trial_dir)}.items():
        trial.set_user_attr(key, value)
    record = TrialRecord(
        number=trial.number, state="RUNNING", params=params, command=trial_command(cfg, params),
        trial_dir=str(trial_dir), host=socket.gethostname(), pid=os.getpid(), started_at=_now(), retry_of=retry_of,
    )
    write_record(trial_dir / "trial.json", record)
    started = time.perf_counter()
    callbacks = [tracker.trial_callback(trial.number, params)]
    if sweep.pruner != "none":
        subset = inputs.heldout[: sweep.prune_eval_examples]
        callbacks.append(_PruningCallback(trial, inputs.tokenizer, cfg.eval, subset,
                                          sweep.prune_every_steps, record.intermediate))
    state, values, reason = TrialState.FAIL, None, None
    heartbeat = get_heartbeat_thread(trial._trial_id, study._storage)
    try:
        trial_cfg = apply_params(cfg, params)
        with heartbeat:
            results = run_experiment(trial_cfg, trial_dir, inputs, callbacks=callbacks, progress=False)
        values = _objective_values(results, sweep.objective)
        constraints = [-d.delta - d.max_regression for d in results.final.regression_delta.values()]
        trial.set_user_attr("constraints", constraints)
        trial.set_user_attr("heldout_score", results.final.heldout.score)
        record.feasible = all(c <= 0 for c in constraints)
        state = TrialState.COMPLETE
    except optuna.TrialPruned as pruned:
        state, reason = TrialState.PRUNED, str(pruned)
    except Exception as err:  # noqa: BLE001 - failure isolation: any trial error is recorded, the sweep goes on
        reason = f"{type(err).__name__}: {err}"
        log.exception("trial %d failed", trial.number)
    # The trial's model, trainer and optimizer are unreachable now (failed and pruned trials included): free
    # them before the next trial loads its base (trl's trainers leave reference cycles; CUDA caches memory).
    release_trial_memory(resolve_device(cfg.train.device))
    if reason:
        trial.set_user_attr("fail_reason", reason)
    study.tell(trial, values if state == TrialState.COMPLETE else None, state=state)
    record.state, record.values, record.fail_reason = state.name, values, reason
    record.finished_at, record.duration_s = _now(), time.perf_counter() - started
    write_record(trial_dir / "trial.json", record)
    tracker.end_trial(state.name, values)
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


# ---------------------------------------------------------------------------------------------------------
# Study, storage, resume


def _check_storage_for_workers(storage_url: str, workers: int) -> None:
    if storage_url.startswith("sqlite") and workers > 1:
        raise ValueError(
            f"sweep.workers={workers} with SQLite storage ({storage_url}): SQLite is for one worker. For several "
            "processes on one machine use sweep.storage=journal:///path/to/study.log; for several machines a "
            "PostgreSQL URL (postgresql://user:pass@host/db)."
        )


def make_storage(storage_url: str, sweep: SweepConfig):
    if storage_url.startswith("journal://"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(storage_url.removeprefix("journal://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if storage_url.startswith("sqlite:///"):
        Path(storage_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    with _schema_lock(storage_url):
        return optuna.storages.RDBStorage(
            storage_url,
            heartbeat_interval=sweep.heartbeat_interval,
            grace_period=sweep.grace_period,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
        )


@contextlib.contextmanager
def _schema_lock(storage_url: str):
    """Workers starting together on a fresh PostgreSQL database race to create Optuna's tables and types;
    the loser fails with IntegrityError or ProgrammingError. A database lock makes them take turns."""
    if not storage_url.startswith("postgresql"):
        yield
        return
    import sqlalchemy

    engine = sqlalchemy.create_engine(storage_url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with _advisory_lock(engine, "harness-optuna-schema"):
            yield
    finally:
        engine.dispose()


def _make_sampler(sweep: SweepConfig, space: dict[str, list]):
    if sweep.sampler == "grid":
        # Every grid configuration is enqueued up front (see _load_study) and trials only pop the queue, so no
        # sampling happens; Optuna's GridSampler would also reject enqueued trials when they are pruned.
        return optuna.samplers.RandomSampler(seed=sweep.seed)
    if sweep.sampler == "random":
        return optuna.samplers.RandomSampler(seed=sweep.seed)
    if sweep.sampler == "tpe":
        constraints = None if sweep.objective == "multi" else (lambda t: t.user_attrs.get("constraints", [0.0]))
        return optuna.samplers.TPESampler(seed=sweep.seed, constraints_func=constraints)
    raise ValueError(f"sweep.sampler={sweep.sampler!r}: expected grid, tpe or random")


def _make_pruner(sweep: SweepConfig):
    pruners = {
        "none": optuna.pruners.NopPruner,
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0),
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "threshold": lambda: optuna.pruners.ThresholdPruner(lower=sweep.prune_threshold),
    }
    if sweep.pruner not in pruners:
        raise ValueError(f"sweep.pruner={sweep.pruner!r}: expected one of {sorted(pruners)}")
    return pruners[sweep.pruner]()


def _load_study(sweep: SweepConfig, storage_url: str, space: dict[str, list], sweep_dir: Path):
    directions = ["maximize", "minimize"] if sweep.objective == "multi" else ["maximize"]
    study = optuna.create_study(
        study_name=sweep.name,
        storage=make_storage(storage_url, sweep),
        sampler=_make_sampler(sweep, space),
        pruner=_make_pruner(sweep),
        directions=directions,
        load_if_exists=True,
    )
    # Workers on other machines may start at the same moment: the lock spans the database, not just this host.
    with _study_lock(sweep_dir, study):
        if sweep.sampler == "grid" and not study.user_attrs.get("grid_enqueued"):
            names = list(space)
            for combination in list(itertools.product(*space.values()))[: sweep.n_trials or None]:
                study.enqueue_trial(dict(zip(names, combination)))
            study.set_user_attr("grid_enqueued", True)
    return study


def _target_trials(sweep: SweepConfig, space: dict[str, list]) -> int:
    if sweep.sampler == "grid":
        grid = math.prod(len(v) for v in space.values())
        return min(grid, sweep.n_trials) if sweep.n_trials else grid
    return sweep.n_trials


def _counted(study) -> int:
    """Trials that count towards n_trials: finished or running, except failures that are being retried."""
    return sum(
        1
        for t in study.get_trials(deepcopy=False)
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        or (t.state == TrialState.FAIL and not t.user_attrs.get("retried") and not t.user_attrs.get("surplus"))
    )


def _done(study, n_trials: int) -> bool:
    waiting = any(t.state == TrialState.WAITING for t in study.get_trials(deepcopy=False))
    return not waiting and _counted(study) >= n_trials


def _recover_dead_trials(study) -> None:
    """Trials left RUNNING by a dead process on this machine: FAIL them and retry their configuration once.

    Trials of other machines are failed (and retried once) by Optuna's heartbeat on RDB storages.
    """
    fail_stale_trials(study)
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = trial.user_attrs.get("pid")
        if trial.user_attrs.get("host") != host or pid is None or _pid_alive(pid):
            continue
        retry = trial.user_attrs.get("retry_of") is None
        try:
            # Attributes first: a finished trial can no longer be annotated.
            study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", f"worker process {pid} died")
            study._storage.set_trial_user_attr(trial._trial_id, "retried", retry)
            if not study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker recovered it first
        _update_trial_json(trial, state="FAIL", fail_reason=f"worker process {pid} died")
        if retry:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            log.warning("trial %d was left running by dead process %s: retrying its configuration once",
                        trial.number, pid)


def _update_trial_json(trial, state: str, fail_reason: str) -> None:
    trial_dir = trial.user_attrs.get("trial_dir")
    path = Path(trial_dir) / "trial.json" if trial_dir else None
    if path and path.is_file():
        record = read_record(TrialRecord, path)
        record.state, record.fail_reason, record.finished_at = state, fail_reason, _now()
        write_record(path, record)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _study_lock(sweep_dir: Path, study):
    """Serialise 'enqueue the grid' and 'is the study done? / ask' between workers.

    A file lock covers the processes of this machine; for a database storage a database lock keyed on the
    study name also covers other machines (PostgreSQL advisory lock, MySQL GET_LOCK).
    """
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / ".ask.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            with _database_lock(study):
                yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _database_lock(study):
    storage = getattr(study._storage, "_backend", study._storage)
    engine = getattr(storage, "engine", None)
    if engine is None or engine.dialect.name not in ("postgresql", "mysql"):
        return contextlib.nullcontext()  # SQLite and journal files live on one machine: the file lock is enough.
    return _advisory_lock(engine, f"harness-sweep:{study.study_name}")


@contextlib.contextmanager
def _advisory_lock(engine, key: str):
    """A lock held by a database connection, seen by every machine using that database (PostgreSQL, MySQL)."""
    import sqlalchemy

    if engine.dialect.name == "postgresql":
        lock, unlock = "SELECT pg_advisory_lock(hashtext(:key))", "SELECT pg_advisory_unlock(hashtext(:key))"
    else:
        lock, unlock = "SELECT GET_LOCK(:key, -1)", "SELECT RELEASE_LOCK(:key)"
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(lock), {"key": key})
        try:
            yield
        finally:
            connection.execute(sqlalchemy.text(unlock), {"key": key})


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
        command=" ".join(["python -m harness", *sys.argv[1:]]),
        storage=storage_url,
        sampler=sweep.sampler,
        pruner=sweep.pruner,
        objective=sweep.objective,
        n_trials=n_trials,
        space=space,
        eval_set=eval_set or EvalSetIdentity(name=cfg.eval.name, hash=eval_set_hash, n=None,
                                             min_score=cfg.eval.min_score),
        model=model or ModelIdentity(id=cfg.model.name_or_path, hash=None, quantized=cfg.quant.method == "nf4"),
        price_per_gpu_hour=sweep.price_per_gpu_hour,
        config=OmegaConf.to_container(OmegaConf.structured(cfg)),
        started_at=previous.started_at if previous else started_at,
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
        print(f"best: trial {best.number} {json.dumps(best.params)} held-out {best.score:.3f} -> {best.adapter}")
    _write_report(sweep_dir)
    return summary


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
    except Exception as err:  # noqa: BLE001 - the sweep's results stand even if the report cannot be drawn
        log.exception("could not write the comparison report: %s", err)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------------------
# Tracking (MLflow by default)


class _Tracker:
    """Experiment tracking. MLflow: the sweep as a parent run, each trial a child run. W&B: one run per trial,
    grouped by sweep (W&B has no nested runs; set WANDB_MODE=offline to keep it local). Loss curves are
    logged live from the trainer."""

    def __init__(self, sweep: SweepConfig, sweep_dir: Path):
        self.kind, self.sweep, self.sweep_dir = sweep.tracking, sweep, sweep_dir
        if self.kind not in ("mlflow", "wandb", "none"):
            raise ValueError(f"sweep.tracking={self.kind!r}: expected mlflow, wandb or none")
        self.mlflow = self.wandb = self.wandb_run = None
        if self.kind == "mlflow":
            import mlflow

            self.mlflow = mlflow
            mlflow.set_tracking_uri(sweep.tracking_uri or f"sqlite:///{(sweep_dir / 'mlflow.db').resolve()}")
            mlflow.set_experiment(f"harness-{sweep.name}")
            mlflow.start_run(run_name=f"sweep-{sweep.name}")
        elif self.kind == "wandb":
            import wandb

            self.wandb = wandb

    def trial_callback(self, number: int, params: dict) -> TrainerCallback:
        if self.kind == "mlflow":
            self.mlflow.start_run(run_name=f"trial-{number:03d}", nested=True)
            self.mlflow.log_params(params)
        elif self.kind == "wandb":
            self.wandb_run = self.wandb.init(
                project=f"harness-{self.sweep.name}", group=self.sweep.name, name=f"trial-{number:03d}",
                config=params, dir=str(self.sweep_dir),
            )
        tracker = self

        class LogToTracker(_TrialSteps):
            def on_log(self, args, state, control, logs=None, **kwargs):
                metrics = {k.replace("/", "_"): float(v) for k, v in (logs or {}).items()
                           if isinstance(v, (int, float))}
                if metrics and tracker.kind == "mlflow":
                    tracker.mlflow.log_metrics(metrics, step=self.trial_step(state))
                elif metrics and tracker.kind == "wandb":
                    tracker.wandb_run.log(metrics, step=self.trial_step(state))

        return LogToTracker()

    def end_trial(self, state: str, values: list[float] | None) -> None:
        if self.kind == "mlflow":
            if values:
                self.mlflow.log_metric("heldout_score", values[0])
            self.mlflow.set_tag("state", state)
            self.mlflow.end_run()
        elif self.kind == "wandb" and self.wandb_run is not None:
            self.wandb_run.summary["state"] = state
            if values:
                self.wandb_run.summary["heldout_score"] = values[0]
            self.wandb_run.finish()
            self.wandb_run = None

    def close(self) -> None:
        if self.kind == "mlflow":
            self.mlflow.end_run()
