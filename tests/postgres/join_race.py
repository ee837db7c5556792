"""Workers joining one PostgreSQL database at the same instant: each round creates a database (even rounds empty,
odd rounds with Optuna's tables already made), starts two processes that create-or-join the grid study on one
start signal, and checks that neither failed and the grid was enqueued exactly once.

    python tests/postgres/join_race.py postgresql://user@host:port ROUNDS WORKDIR

Without a database-wide lock this fails within a few rounds: both workers enqueue the grid (every configuration
would run twice), or one dies creating Optuna's tables ("relation studies already exists").
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import optuna
import sqlalchemy

GRID = {"lora_r": [1, 2, 4, 8]}
JOIN = """
import sys, time
from pathlib import Path
from harness.config import SearchSpace, SweepConfig
from harness.sweep_storage import load_study
# Imports take seconds; line both workers up on a start signal so they really join at the same instant.
Path(sys.argv[2] + ".ready").touch()
while not Path(sys.argv[3]).exists():
    time.sleep(0.001)
space = {"lora_r": [1, 2, 4, 8]}
load_study(SweepConfig(name="rank", sampler="grid", n_trials=0, space=SearchSpace(**space)), sys.argv[1], space,
           Path(sys.argv[2]), {"space": space})
"""


def main(server_url: str, rounds: int, workdir: Path) -> None:
    admin = sqlalchemy.create_engine(f"{server_url}/postgres", isolation_level="AUTOCOMMIT")
    for round_ in range(rounds):
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f"CREATE DATABASE race{round_}"))
        url = f"{server_url}/race{round_}"
        if round_ % 2:
            # Odd rounds: Optuna's tables already exist, so the workers collide on the study and its grid.
            optuna.storages.RDBStorage(url).engine.dispose()
        go = workdir / f"race{round_}.go"
        dirs = [workdir / f"race{round_}-{name}" for name in "ab"]
        workers = [
            subprocess.Popen([sys.executable, "-c", JOIN, url, str(path), str(go)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for path in dirs
        ]
        deadline = time.monotonic() + 300
        while not all(Path(f"{path}.ready").exists() for path in dirs) and time.monotonic() < deadline:
            time.sleep(0.01)
        go.touch()
        for worker in workers:
            output, _ = worker.communicate(timeout=300)
            assert worker.returncode == 0, f"round {round_}: a joining worker failed:\n{output[-2000:]}"
        queued = len(optuna.load_study(study_name="rank", storage=url).trials)
        assert queued == len(GRID["lora_r"]), f"round {round_}: {queued} queued trials for a grid of 4"
    print(f"OK: {rounds} rounds of two workers joining one database at once; the grid was queued once each time")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]))
