"""Fault injection: kill -9 a sweep at every harness.faults point, rerun the same command, check nothing is lost.

For each point the first run must die by SIGKILL there; the rerun must exit 0 with every configuration completed
exactly once, no finished trial lost or run again, nothing left RUNNING (study or trial.json), `best` and the
report agreeing with the study, and no credential from the command line in any file written. The table of points x
outcome is printed (pytest -s shows it; it is also in the failure message).
"""

from __future__ import annotations

import csv
import errno
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import optuna
import pytest

from harness.artifacts import REPO_ROOT
from harness.faults import POINTS
from harness.records import TrialRecord, read_record
from harness.sweep import best_trial
from tests.conftest import TINY_OVERRIDES

SECRET = "s3cret-pw"
# A credential on the command line (in a URL the sweep never contacts: tracking is off) must not reach a file.
SWEEP_ARGS = [*TINY_OVERRIDES, "+sweep=rank", "sweep.tracking=none", "sweep.space.lora_r=[1,2]",
              f"sweep.tracking_uri=https://alice:{SECRET}@mlflow.example.com"]
CONFIGS = [1, 2]
# Where each point first fires in a 2-configuration grid (the n-th time it is reached, see harness.faults).
KILLS = {name: name for name in POINTS}


def run_cli(args: list[str], kill_at: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("HARNESS_KILL_AT", None)
    if kill_at:
        env["HARNESS_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def study_of(storage) -> optuna.Study:
    return optuna.load_study(study_name="rank", storage=storage)


def check_sweep(root: Path, storage, complete_before: set[int]) -> tuple[dict, list[str]]:
    """The invariants after a rerun: (counts for the table, problems found)."""
    problems = []
    sweep_dir = root / "sweeps" / "rank"
    trials = study_of(storage).get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    per_config = Counter(t.params["lora_r"] for t in complete)
    if sorted(per_config) != CONFIGS or set(per_config.values()) != {1}:
        problems.append(f"configurations completed {dict(per_config)}, expected each of {CONFIGS} once")
    if stuck := [t.number for t in trials if not t.state.is_finished()]:
        problems.append(f"trials {stuck} left RUNNING/WAITING in the study")
    if lost := complete_before - {t.number for t in complete}:
        problems.append(f"finished trials {sorted(lost)} lost")
    results = sorted(p.parent.name for p in sweep_dir.glob("trials/*/results.json"))
    if len(results) != len(CONFIGS):
        problems.append(f"results.json in {results}: finished work was discarded and run again")
    records = [read_record(TrialRecord, p) for p in sorted(sweep_dir.glob("trials/*/trial.json"))]
    states = {t.number: t.state.name for t in trials}
    if mismatched := [r.number for r in records if states.get(r.number) != r.state]:
        problems.append(f"trial.json of trials {mismatched} disagrees with the study")
    best_json = sweep_dir / "best.json"
    best = json.loads(best_json.read_text()) if best_json.is_file() else None
    expected = best_trial(records)
    top = max(t.values[0] for t in complete) if complete else None
    if best is None or expected is None or best["number"] != expected.number or best["score"] != top:
        problems.append(f"best.json {best} is not the study's best (score {top})")
    report = root / "reports" / "rank"
    if not (report / "report.html").is_file() or not (report / "report.md").is_file():
        problems.append("report.html/report.md missing")
    else:
        rows = {int(row["number"]): row["state"] for row in csv.DictReader((report / "trials.csv").open())}
        if rows != {r.number: r.state for r in records}:
            problems.append(f"the report's trials {rows} differ from the study's")
    leaks = [str(p) for p in root.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    if leaks:
        problems.append(f"credential written to {leaks}")
    # A write killed between its temporary file and the rename leaves the temporary file; the rerun's write of
    # the same file removes it (its writer is dead).
    if temps := sorted(str(p.relative_to(root)) for p in root.rglob(".*.tmp") if "hydra" not in p.parts):
        problems.append(f"temporary files left: {temps}")
    counts = {
        "trials": len(trials),
        "FAIL+retry": sum(t.state == optuna.trial.TrialState.FAIL for t in trials),
        "from results.json": sum(t.user_attrs.get("recovered_from") == "results.json" for t in trials),
    }
    return counts, problems


def complete_numbers(storage) -> set[int]:
    try:
        return {t.number for t in study_of(storage).get_trials(states=(optuna.trial.TrialState.COMPLETE,))}
    except KeyError:  # killed before the study was created
        return set()


def format_table(rows: list[list[str]]) -> str:
    header = ["kill point", "first run", "complete before", "rerun", "trials", "FAIL+retry", "from results.json",
              "outcome"]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [" | ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in [header, *rows]]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def _kill_and_rerun(tmp_path: Path, point: str) -> tuple[list, list[str]]:
    root = tmp_path / point
    args = [*SWEEP_ARGS, f"sweep.sweeps_dir={root / 'sweeps'}", f"hydra.run.dir={root / 'hydra'}"]
    storage = f"sqlite:///{root / 'sweeps' / 'rank' / 'study.db'}"
    first = run_cli(args, kill_at=KILLS[point])
    killed = first.returncode == -signal.SIGKILL
    before = complete_numbers(storage) if killed else set()
    # What a killed run leaves (Hydra's copy of the command line included) holds no credential either.
    left = [str(p) for p in root.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    rerun = run_cli(args)
    counts, problems = check_sweep(root, storage, before) if rerun.returncode == 0 else ({}, [])
    if not killed:
        problems.insert(0, f"the first run was not killed at {KILLS[point]}: exit {first.returncode}")
    if left:
        problems.append(f"credential left by the killed run in {left}")
    if rerun.returncode != 0:
        problems.append(f"rerun exit {rerun.returncode}: {rerun.stderr[-1500:]}")
    row = [point, "killed" if killed else f"exit {first.returncode}", sorted(before), f"exit {rerun.returncode}",
           counts.get("trials", "-"), counts.get("FAIL+retry", "-"), counts.get("from results.json", "-"),
           "ok" if not problems else "; ".join(problems)]
    return row, [f"{point}: {p}" for p in problems]


def test_a_sweep_killed_at_every_point_reruns_to_the_same_complete_study(tmp_path):
    # Points are independent (a sweep directory each): three at a time, one thread per process, to fit CI's time.
    with ThreadPoolExecutor(max_workers=3) as pool:
        outcomes = list(pool.map(lambda point: _kill_and_rerun(tmp_path, point), KILLS))
    table = format_table([row for row, _ in outcomes])
    print("\n" + table)
    failures = [failure for _, problems in outcomes for failure in problems]
    assert not failures, table + "\n\n" + "\n".join(failures)


def test_two_journal_workers_killed_mid_sweep_rerun_to_a_complete_study(tmp_path):
    # Worker a dies with its results.json written, before tell; worker b at its second ask. A third run (one
    # worker) finishes the study: each configuration once, the finished work of the dead worker kept.
    global CONFIGS
    journal = tmp_path / "study.log"
    args = [*SWEEP_ARGS[:-2], "sweep.space.lora_r=[1,2,4]", f"sweep.storage=journal://{journal}",
            f"sweep.sweeps_dir={tmp_path / 'sweeps'}", f"hydra.run.dir={tmp_path / 'hydra'}", SWEEP_ARGS[-1]]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    workers = [subprocess.Popen([sys.executable, "-m", "harness", *args], cwd=REPO_ROOT,
                                env={**env, "HARNESS_KILL_AT": kill}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
               for kill in ("after_results", "after_ask@2")]
    codes = [w.wait(timeout=300) for w in workers]
    assert codes[0] == -signal.SIGKILL, workers[0].stderr.read()[-2000:]
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    before = {t.number for t in optuna.load_study(study_name="rank", storage=storage).get_trials(
        states=(optuna.trial.TrialState.COMPLETE,))}
    rerun = run_cli(args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    saved, CONFIGS = CONFIGS, [1, 2, 4]
    try:
        counts, problems = check_sweep(tmp_path, storage, before)
    finally:
        CONFIGS = saved
    print(f"\njournal, 2 workers (a: after_results, b: after_ask@2 -> exit {codes[1]}): {counts}")
    assert not problems, problems
    assert counts["from results.json"] >= 1, "worker a's finished trial was completed from its results.json"


def _mount_tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, check=False).returncode == 0


def _fill(path: Path) -> None:
    with open(path, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError as err:
            assert err.errno == errno.ENOSPC


def test_a_full_or_read_only_disk_stops_the_sweep_and_keeps_every_finished_trial(tmp_path):
    # A real small filesystem: filled to the last byte, then remounted read-only (root: chmod would not stop us).
    disk = tmp_path / "disk"
    disk.mkdir()
    if not _mount_tmpfs(disk, "16m"):
        pytest.skip("needs root and mount -t tmpfs")
    try:
        args = [*SWEEP_ARGS, f"sweep.sweeps_dir={disk / 'sweeps'}", f"hydra.run.dir={tmp_path / 'hydra'}"]
        storage = f"sqlite:///{disk / 'sweeps' / 'rank' / 'study.db'}"
        first = run_cli(args, kill_at="after_pid@2")  # trial 0 complete, trial 1's worker dead
        assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
        trial0 = disk / "sweeps" / "rank" / "trials" / "000"
        finished = {p: p.read_bytes() for p in trial0.rglob("*") if p.is_file()}
        assert trial0 / "results.json" in finished

        _fill(disk / "filler")
        full = run_cli(args)
        assert full.returncode == 3, full.stderr[-3000:]
        assert "No space left on device" in full.stderr or "disk is full" in full.stderr, full.stderr[-3000:]
        assert "rerun the same command" in full.stderr and "Traceback" not in full.stderr, full.stderr[-3000:]

        (disk / "filler").unlink()
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        read_only = run_cli(args)
        subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
        assert read_only.returncode == 3, read_only.stderr[-3000:]
        assert "read-only" in read_only.stderr.lower() or "readonly" in read_only.stderr, read_only.stderr[-3000:]

        assert {p: p.read_bytes() for p in trial0.rglob("*") if p.is_file()} == finished, "trial 0 intact"
        assert complete_numbers(storage) == {0}, "the study still holds the finished trial"
        last = run_cli(args)
        assert last.returncode == 0, last.stderr[-3000:]
        _, problems = check_sweep(disk, storage, {0})
        assert not problems, problems
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
