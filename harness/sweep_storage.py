"""The Optuna study behind a sweep: its storage, joining it, locks between workers, liveness and recovery.

harness.sweep drives the trial loop; everything that touches the study's storage is here:

    with single_worker_lock(storage_url, sweep_dir):                  # SQLite: refuses a second worker
        study = load_study(sweep, storage_url, space, sweep_dir, identity)  # refuses a changed space/eval
        trial = next_trial(study, sweep, sweep_dir, n_trials, outcome)  # recover, then ask; None when done

Every step is safe to kill -9 at any point (tests/test_faults.py kills at each harness.faults point):
- the grid is enqueued under a lock, only the configurations not yet in the study, so an interrupted enqueue is
  completed by the rerun, not repeated;
- a trial's owner is recorded under the same lock as its `ask`: a RUNNING trial without an owner belongs to a
  process that died in between;
- an owner is host + boot id + pid namespace + pid + the process's start time, so a reused pid or a pid from
  another container is never taken for the worker. An owner on this machine is checked at once; one elsewhere
  through Optuna's heartbeat (RDB storages; journal files are for one machine);
- a dead owner's trial that had written results.json is completed from it (finished work is kept); otherwise it
  is FAIL and its configuration retried once;
- trial.json files are brought in line with the study (a kill between `tell` and the rewrite, heartbeat
  failures).

Locks: a file lock for the processes of one machine, plus a database lock (PostgreSQL advisory lock, MySQL
GET_LOCK) for workers on several machines sharing one database.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import os
import socket
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import optuna
from optuna.storages import fail_stale_trials
from optuna.trial import TrialState

from harness.artifacts import boot_id, pid_namespace
from harness.config import SweepConfig
from harness.faults import kill_point
from harness.records import IntermediateScore, TrialRecord, read_record, write_record
from harness.redact import redact

# What a dead trial left: (objective values, constraints by name) read from its results.json, or None.
Outcome = Callable[[Path], tuple[list[float], dict[str, float]] | None]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def single_worker_lock(storage_url: str, sweep_dir: Path):
    """SQLite is for one worker: a second process on the same sweep is refused, naming the storages that work."""
    if not storage_url.startswith("sqlite"):
        yield
        return
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / ".sqlite-worker.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(
                f"another worker is running sweep {sweep_dir.name!r} on SQLite storage ({storage_url}): SQLite is "
                "for one worker. For several processes on one machine use sweep.storage=journal:///path/study.log; "
                "for several machines a PostgreSQL URL; then run the same command once per worker."
            ) from None
        yield


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


def _make_sampler(sweep: SweepConfig, seed: int):
    if sweep.sampler in ("grid", "random"):
        # Grid: every configuration is enqueued up front (see load_study) and trials only pop the queue, so no
        # sampling happens; Optuna's GridSampler would also reject enqueued trials when they are pruned.
        return optuna.samplers.RandomSampler(seed=seed)
    # Regression limits reach TPE as trial.set_constraint() values (harness.sweep._run_trial).
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=sweep.startup_trials())


def _make_pruner(sweep: SweepConfig):
    pruners = {
        "none": optuna.pruners.NopPruner,
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0),
        # Rungs start at the first intermediate report (prune_every_steps), not at step 1: with reports every k
        # steps, rungs below k would all be decided by the same first score.
        "successive_halving": lambda: optuna.pruners.SuccessiveHalvingPruner(
            min_resource=sweep.prune_every_steps, reduction_factor=sweep.prune_reduction_factor),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(
            min_resource=sweep.prune_every_steps, reduction_factor=sweep.prune_reduction_factor),
        "threshold": lambda: optuna.pruners.ThresholdPruner(lower=sweep.prune_threshold),
    }
    if sweep.pruner not in pruners:
        raise ValueError(f"sweep.pruner={sweep.pruner!r}: expected one of {sorted(pruners)}")
    return pruners[sweep.pruner]()


def load_study(sweep: SweepConfig, storage_url: str, space: dict[str, list], sweep_dir: Path, identity: dict):
    """Create or join the study. `identity` (search space, objective, eval set) must match a resumed study's."""
    directions = ("maximize", "minimize") if sweep.objective == "multi" else ("maximize",)
    study = optuna.create_study(
        study_name=sweep.name,
        storage=make_storage(storage_url, sweep),
        sampler=_make_sampler(sweep, sweep.seed),
        pruner=_make_pruner(sweep),
        directions=directions,
        load_if_exists=True,
    )
    # Workers on other machines may start at the same moment: the lock spans the database, not just this host.
    with study_lock(sweep_dir, study):
        _check_identity(study, json.loads(json.dumps(identity)), storage_url)
        if sweep.sampler == "grid" and not study.user_attrs.get("grid_enqueued"):
            # Only what is not in the study yet: a worker killed half-way through leaves the rest to its rerun.
            queued = {json.dumps(t.system_attrs.get("fixed_params"), sort_keys=True)
                      for t in study.get_trials(deepcopy=False)}
            names = list(space)
            for combination in list(itertools.product(*space.values()))[: sweep.n_trials or None]:
                params = dict(zip(names, combination))
                if json.dumps(params, sort_keys=True) not in queued:
                    study.enqueue_trial(params)
                    kill_point("during_enqueue")
            study.set_user_attr("grid_enqueued", True)
    return study


def _check_identity(study, identity: dict, storage_url: str) -> None:
    stored = study.user_attrs.get("harness_identity")
    if stored is None:
        study.set_user_attr("harness_identity", identity)
        return
    if "fixed" in identity and "fixed" not in stored:  # a study from before fixed settings were recorded
        log.warning("sweep %r: the study does not record its fixed settings; recording this command's",
                    study.study_name)
        study.set_user_attr("harness_identity", {**stored, "fixed": identity["fixed"]})
        stored = {**stored, "fixed": identity["fixed"]}
    changed = [key for key in identity if key != "fixed" and stored.get(key) != identity[key]]
    details = [f"{key}: study has {stored.get(key)!r}, this command {identity[key]!r}" for key in changed]
    fixed, stored_fixed = identity.get("fixed", {}), stored.get("fixed", {})
    changed_fixed = sorted(key for key in {*fixed, *stored_fixed} if fixed.get(key) != stored_fixed.get(key))
    if changed_fixed:
        changed.append("fixed settings")
        details += [f"{key}: study has {_shown(stored_fixed, key)}, this command {_shown(fixed, key)}"
                    for key in changed_fixed]
    if changed:
        raise ValueError(
            f"sweep {study.study_name!r}: the study in {redact(storage_url)} was run with a different "
            f"{' and '.join(changed)} ({redact('; '.join(details))}). Its trials would not be comparable with new "
            "ones: run it with the study's settings, use a new sweep.name, or move the old study and its sweep "
            "directory away."
        )


def _shown(settings: dict, key: str) -> str:
    return repr(settings[key]) if key in settings else "(not set)"


def next_trial(study, sweep: SweepConfig, sweep_dir: Path, n_trials: int, outcome: Outcome):
    """Recover dead workers' trials, then ask for the next trial and record its owner; None when the study is done.

    Trial n samples with seed sweep.seed + n: one worker reproduces its sweep, and workers never share a seed.
    """
    with study_lock(sweep_dir, study):
        recover_dead_trials(study, outcome)
        sync_trial_records(study)
        if done(study, n_trials):
            return None
        seed = sweep.seed + len(study.get_trials(deepcopy=False))
        study.sampler = _make_sampler(sweep, seed)
        trial = study.ask()
        kill_point("after_ask")
        for key, value in {**owner_attrs(), "sampler_seed": seed}.items():
            trial.set_user_attr(key, value)
    if sweep.sampler == "grid" and "fixed_params" not in study._storage.get_trial_system_attrs(trial._trial_id):
        # Another machine popped the last queued configuration between our check and our ask.
        study._storage.set_trial_user_attr(trial._trial_id, "surplus", True)
        study.tell(trial, state=TrialState.FAIL)
        return None
    return trial


def counted(study) -> int:
    """Trials that count towards n_trials: finished or running, except failures whose configuration is retried
    (by recovery here, `retry_of`, or by Optuna's heartbeat, `failed_trial`) and surplus asks."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials} | {t.system_attrs.get("failed_trial") for t in trials}
    return sum(
        1
        for t in trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        or (t.state == TrialState.FAIL and t.number not in retried and not t.user_attrs.get("surplus"))
    )


def done(study, n_trials: int) -> bool:
    waiting = any(t.state == TrialState.WAITING for t in study.get_trials(deepcopy=False))
    return not waiting and counted(study) >= n_trials


def recover_dead_trials(study, outcome: Outcome) -> None:
    """Trials left RUNNING by a dead worker: complete them from their results.json, or FAIL and retry them once.

    Called under study_lock, which `ask` and the owner's recording share: a RUNNING trial with no owner is dead.
    """
    fail_stale_trials(study)  # RDB storages: trials whose heartbeat stopped, on any machine
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.user_attrs
        if owner_state(owner) != "dead":
            continue
        trial_dir = owner.get("trial_dir")
        finished = outcome(Path(trial_dir)) if trial_dir else None
        try:
            if finished:
                _complete_from_results(study, trial, *finished)
                log.warning("trial %d: its worker died after writing results.json; completed from it", trial.number)
                continue
            when = "before it recorded the trial" if "pid" not in owner else ""
            _fail_and_retry(study, trial, f"worker process {owner.get('pid', '?')} died {when}".strip())
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker recovered it first (or its heartbeat expired meanwhile)


def _complete_from_results(study, trial, values: list[float], constraints: dict[str, float]) -> None:
    alive = optuna.trial.Trial(study, trial._trial_id)
    for name, value in constraints.items():
        alive.set_constraint(name, value)
    study._storage.set_trial_user_attr(trial._trial_id, "recovered_from", "results.json")
    study._storage.set_trial_state_values(trial._trial_id, state=TrialState.COMPLETE, values=values)


def _fail_and_retry(study, trial, reason: str) -> None:
    retry = trial.user_attrs.get("retry_of") is None
    # Attributes first: a finished trial can no longer be annotated.
    study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
    study._storage.set_trial_user_attr(trial._trial_id, "retried", retry)
    if not study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
        return
    if retry:
        # A trial killed before it sampled has no params yet; a grid trial's configuration is its fixed_params.
        params = trial.system_attrs.get("fixed_params") or trial.params
        study.enqueue_trial(params, user_attrs={"retry_of": trial.number})
        log.warning("trial %d: %s; retrying its configuration once", trial.number, reason)


def sync_trial_records(study) -> None:
    """Bring every finished trial's trial.json in line with the study (a worker killed after `tell`, a trial
    failed by a heartbeat or completed by recovery): the study is the truth, trial.json its copy."""
    for trial in study.get_trials(deepcopy=False):
        trial_dir = trial.user_attrs.get("trial_dir")
        path = Path(trial_dir) / "trial.json" if trial_dir else None
        if not trial.state.is_finished() or path is None or not path.is_file():
            continue
        record = read_record(TrialRecord, path)
        if record.state == trial.state.name:
            continue
        complete = trial.state == TrialState.COMPLETE
        record.state = trial.state.name
        record.values = list(trial.values) if complete else None
        record.feasible = all(v <= 0 for v in trial.constraints.values()) if complete else None
        record.fail_reason = None if complete else trial.user_attrs.get(
            "fail_reason", "no heartbeat within sweep.grace_period: its worker died")
        record.intermediate = [IntermediateScore(step=step, score=score)
                               for step, score in sorted(trial.intermediate_values.items())]
        finished = trial.datetime_complete or datetime.now()
        record.finished_at = finished.astimezone(timezone.utc).isoformat(timespec="seconds")
        if trial.datetime_start:
            record.duration_s = (finished - trial.datetime_start).total_seconds()
        write_record(path, record)


# ---------------------------------------------------------------------------------------------------------
# Liveness: who owns a RUNNING trial, and is that process still the one that asked for it


def owner_attrs() -> dict:
    """This process as a trial's owner: a pid means nothing without its host, boot, pid namespace and start."""
    return {"host": socket.gethostname(), "boot_id": boot_id(), "pid_ns": pid_namespace(), "pid": os.getpid(),
            "pid_start": _process_start(os.getpid())}


def owner_state(attrs: dict) -> str:
    """"dead", "alive", or "unknown" (another machine, boot or container: left to the storage's heartbeat)."""
    if "pid" not in attrs:
        return "dead"  # asked, owner never recorded: the asker held study_lock until it would have been
    mine = owner_attrs()
    if any(attrs.get(key) != mine[key] for key in ("host", "boot_id", "pid_ns")):
        return "unknown"
    if attrs.get("pid_start") is None:  # no /proc here (or an owner recorded by an older harness)
        return "alive" if _pid_alive(attrs.get("pid")) else "dead"
    return "alive" if _process_start(attrs.get("pid")) == attrs.get("pid_start") else "dead"


def _process_start(pid) -> str | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22); None if it is gone."""
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError):
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, TypeError, ValueError):
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
