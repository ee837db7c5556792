#!/usr/bin/env bash
# Two sweep workers, each with its own sweep directory (as on two machines), sharing one Optuna study in a
# real PostgreSQL server on loopback. Installs PostgreSQL from Debian's packages if needed, and psycopg 3.
#   bash tests/postgres/two_workers.sh            (from the repository root, after `make setup`)
# Passes when workers joining a fresh database at once queue the grid once (join_race.py), and the 4 grid
# configurations each complete exactly once across the two workers, although both are first killed -9
# (harness.faults: worker a after writing results.json, worker b right after a tell) and then rerun; the
# storage URL's password appears in no file the workers wrote.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
PG_VERSION=${PG_VERSION:-15}
PG_BIN=/usr/lib/postgresql/$PG_VERSION/bin
if [ ! -x "$PG_BIN/initdb" ]; then
  apt-get update -qq && apt-get install -y -qq "postgresql-$PG_VERSION" >/dev/null
fi
$PY -c "import psycopg" 2>/dev/null || $PY -m pip install -q "psycopg[binary]"

WORK=$(mktemp -d); PORT=$((20000 + RANDOM % 20000))
chown postgres "$WORK"
cleanup() { su postgres -c "$PG_BIN/pg_ctl -D $WORK/db -m immediate stop" >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT
su postgres -c "$PG_BIN/initdb -D $WORK/db -A trust -U postgres" >/dev/null
su postgres -c "$PG_BIN/pg_ctl -D $WORK/db -l $WORK/pg.log -o '-h 127.0.0.1 -p $PORT -k $WORK' -w start" >/dev/null
su postgres -c "psql -q -h 127.0.0.1 -p $PORT -c \"CREATE ROLE harness LOGIN PASSWORD 'pg-s3cret'\""
su postgres -c "$PG_BIN/createdb -h 127.0.0.1 -p $PORT -O harness harness"
URL="postgresql://harness:pg-s3cret@127.0.0.1:$PORT/harness"
echo "PostgreSQL $PG_VERSION on 127.0.0.1:$PORT"
HF_HUB_OFFLINE=1 $PY tests/postgres/join_race.py "postgresql://postgres@127.0.0.1:$PORT" "${RACE_ROUNDS:-10}" "$WORK"

ARGS=(model=tiny quant=none run_regression=false train.sft.max_steps=6 train.sft.batch_size=4
      data.max_sft_examples=16 eval.max_examples=8 +sweep=rank sweep.tracking=none
      "sweep.storage=$URL" "sweep.space.lora_r=[1,2,4,8]" sweep.n_trials=4)
export HF_HUB_OFFLINE=1
# Fault injection: both workers die by SIGKILL at a point of their first trial...
HARNESS_KILL_AT=after_results $PY -m harness "${ARGS[@]}" "sweep.sweeps_dir=$WORK/machine-a" \
  "hydra.run.dir=$WORK/hydra-a" > "$WORK/killed-a.log" 2>&1 &
HARNESS_KILL_AT=after_tell $PY -m harness "${ARGS[@]}" "sweep.sweeps_dir=$WORK/machine-b" \
  "hydra.run.dir=$WORK/hydra-b" > "$WORK/killed-b.log" 2>&1 &
wait || true
# ...and the same commands, rerun, finish the study.
for worker in a b; do
  $PY -m harness "${ARGS[@]}" "sweep.sweeps_dir=$WORK/machine-$worker" "hydra.run.dir=$WORK/hydra-$worker" \
    > "$WORK/worker-$worker.log" 2>&1 &
done
wait -n && wait -n || { tail -n 30 "$WORK"/worker-*.log; exit 1; }
if grep -rl "pg-s3cret" "$WORK"/machine-* "$WORK"/reports "$WORK"/worker-*.log 2>/dev/null; then
  echo "the storage password was written to the files above"; exit 1
fi

$PY - "$URL" "$WORK" <<'PYCHECK'
import collections, json, pathlib, sys
import optuna
url, work = sys.argv[1], pathlib.Path(sys.argv[2])
study = optuna.load_study(study_name="rank", storage=url)
complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
stuck = [t.number for t in study.trials if not t.state.is_finished()]
recovered = sum(t.user_attrs.get("recovered_from") == "results.json" for t in study.trials)
assert not stuck, f"trials {stuck} left RUNNING or WAITING"
assert recovered >= 1, "the trial whose worker died after results.json was completed from it"
ranks = collections.Counter(t.params["lora_r"] for t in complete)
by_machine = collections.Counter(p.parts[-5] for p in work.glob("machine-*/rank/trials/*/trial.json"))
print(f"complete trials: {len(complete)} of {len(study.trials)}, ranks: {dict(ranks)}, completed from "
      f"results.json: {recovered}, trials per machine: {dict(by_machine)}")
assert sorted(ranks) == [1, 2, 4, 8] and set(ranks.values()) == {1}, "each configuration ran exactly once"
assert len(by_machine) == 2, "both workers took trials"
print("OK: two workers shared one PostgreSQL study with no configuration run twice, after both were killed -9")
PYCHECK
