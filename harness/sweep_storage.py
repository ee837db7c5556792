"""The Optuna study behind a sweep: its storage, creating or joining it, locks between workers, recovery.

harness.sweep drives the trial loop; everything that touches the study's storage is here:

    check_storage_for_workers(storage_url, sweep.workers)    # refuses SQLite for several workers
    study = load_study(sweep, storage_url, space, sweep_dir)  # create or join; a grid is enqueued once
    recover_dead_trials(study)                                # FAIL and retry trials of dead local workers
    with study_lock(sweep_dir, study):                        # one worker at a time asks for a trial
        if not done(study, n_trials):
            trial = study.ask()

Locks: a file lock for the processes of one machine, plus a database lock (PostgreSQL advisory lock, MySQL
GET_LOCK) for workers on several machines sharing one database.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
import socket
from datetime import datetime, timezone
from pathlib import Path

import optuna
from optuna.storages import fail_stale_trials
from optuna.trial import TrialState

from harness.config import SweepConfig
from harness.records import TrialRecord, read_record, write_record

log = logging.getLogger(__name__)


def check_storage_for_workers(storage_url: str, workers: int) -> None:
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
        # Every grid configuration is enqueued up front (see load_study) and trials only pop the queue, so no
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


def load_study(sweep: SweepConfig, storage_url: str, space: dict[str, list], sweep_dir: Path):
    directions = ("maximize", "minimize") if sweep.objective == "multi" else ("maximize",)
    study = optuna.create_study(
        study_name=sweep.name,
        storage=make_storage(storage_url, sweep),
        sampler=_make_sampler(sweep, space),
        pruner=_make_pruner(sweep),
        directions=directions,
        load_if_exists=True,
    )
    # Workers on other machines may start at the same moment: the lock spans the database, not just this host.
    with study_lock(sweep_dir, study):
        if sweep.sampler == "grid" and not study.user_attrs.get("grid_enqueued"):
            names = list(space)
            for combination in list(itertools.product(*space.values()))[: sweep.n_trials or None]:
                study.enqueue_trial(dict(zip(names, combination)))
            study.set_user_attr("grid_enqueued", True)
    return study


def counted(study) -> int:
    """Trials that count towards n_trials: finished or running, except failures that are being retried."""
    return sum(
        1
        for t in study.get_trials(deepcopy=False)
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        or (t.state == TrialState.FAIL and not t.user_attrs.get("retried") and not t.user_attrs.get("surplus"))
    )


def done(study, n_trials: int) -> bool:
    waiting = any(t.state == TrialState.WAITING for t in study.get_trials(deepcopy=False))
    return not waiting and counted(study) >= n_trials


def recover_dead_trials(study) -> None:
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
def study_lock(sweep_dir: Path, study):
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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
