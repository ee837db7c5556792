"""Does pruning pay for itself? The same search, same seeds, with and without its pruner.

    python tests/benchmarks/bench_pruning.py --out /tmp/bench-pruning                   # +sweep=search, default model
    python tests/benchmarks/bench_pruning.py --out /tmp/bp model=hf model.name_or_path=... # another model
    python tests/benchmarks/bench_pruning.py --quick --out /tmp/bp-quick                # tiny model, ~2 min: plumbing

Runs `+sweep=search` (or --sweep) twice through harness.sweep.run_sweep, each a complete sweep with its own study,
its reporting-split verdicts and report: `<out>/sweeps/<name>` with the YAML's pruner, `<out>/sweeps/<name>_unpruned`
with sweep.pruner=none. Trial n samples with seed sweep.seed + n in both, so the random startup trials are the same
configurations; after them TPE's proposals may differ, because it sees pruned trials as pruned. Then every pruned
trial is replayed: its configuration's unpruned selection score is read from the unpruned sweep when that sweep ran
the same configuration, otherwise its recorded command is run to the end here. Prints:

- trial-steps trained with pruning / without (target <= 0.5, stretch <= 0.2);
- the best configuration each way with its reporting-split score and 95% interval, and whether the two bests are
  within one standard error of each other;
- for each pruned trial, its replayed selection score against the pruned sweep's best: whether pruning stopped a
  trial that would have become the best (a strictly higher selection score; on a tie the finished trial stands).

Trailing arguments are Hydra overrides applied to both sweeps (model=..., train.sft.max_steps=..., sweep.*).
--quick runs the tiny random model with a threshold pruner so that pruning must happen (it scores 0 everywhere,
which no ranking pruner can tell apart): it checks that every line is produced, not what pruning saves.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from harness.recordio import read_record
from harness.records import RunResults, SweepVerdicts, TrialRecord
from harness.reproduce import compose_run_config

QUICK = [
    "model=tiny", "quant=nf4", "run_regression=false", "train.sft.batch_size=4", "data.max_sft_examples=16",
    "eval.max_examples=4", "eval.canary_examples=2", "sweep.tracking=none", "sweep.seed=2", "sweep.n_trials=3",
    "sweep.n_startup_trials=2", "sweep.space.lora_r=[2,4]", "sweep.space.sft_max_steps=[2,6]",
    "sweep.pruner=threshold", "sweep.prune_threshold=0.5", "sweep.prune_every_steps=3", "sweep.prune_eval_examples=2",
]


def run(sweep_option: str, name: str, sweeps_dir: Path, overrides: list[str]) -> Path:
    from harness.sweep import run_sweep

    task = [f"+sweep={sweep_option}", *overrides, f"sweep.name={name}", f"sweep.sweeps_dir={sweeps_dir}"]
    run_sweep(compose_run_config(task), task)
    return sweeps_dir / name


def records(sweep_dir: Path) -> list[TrialRecord]:
    return [read_record(TrialRecord, p) for p in sorted(sweep_dir.glob("trials/*/trial.json"))]


def steps(sweep_dir: Path) -> int:
    return sum(r.steps_trained or 0 for r in records(sweep_dir))


def best_line(label: str, sweep_dir: Path):
    """The best trial's configuration and its reporting-split score, or None when no trial completed."""
    path = sweep_dir / "verdicts.json"
    if not path.is_file():
        print(f"{label}: no complete trial, no best configuration")
        return None
    verdicts = read_record(SweepVerdicts, path)
    score = next(s for s in verdicts.scores if s.number == verdicts.best)
    params = next(r.params for r in records(sweep_dir) if r.number == verdicts.best)
    reporting = score.reporting
    print(f"{label}: best trial {verdicts.best} {json.dumps(params)}: reporting split {reporting.score:.3f} "
          f"[{reporting.ci_low:.3f}, {reporting.ci_high:.3f}] ± {reporting.stderr:.3f} (n={reporting.n}); "
          f"selection split {score.selection.score:.3f}")
    return reporting


def replay(pruned_dir: Path, unpruned_dir: Path, replay_dir: Path) -> list[tuple[TrialRecord, float, str]]:
    """Each pruned trial's selection score had it run to the end: from the unpruned sweep, or trained here."""
    import shlex

    from harness.run import prepare_inputs, run_experiment
    from harness.worker import WorkerBase

    unpruned = {json.dumps(r.params, sort_keys=True): r for r in records(unpruned_dir) if r.state == "COMPLETE"}
    worker, inputs, replayed = WorkerBase(), None, []
    for record in (r for r in records(pruned_dir) if r.state == "PRUNED"):
        twin = unpruned.get(json.dumps(record.params, sort_keys=True))
        if twin is not None:
            replayed.append((record, twin.values[0], f"unpruned sweep trial {twin.number}"))
            continue
        cfg = compose_run_config(shlex.split(record.command)[3:])  # the trial alone: no sweep, no pruner
        inputs = inputs or prepare_inputs(cfg, show_card=False)
        results: RunResults = run_experiment(cfg, replay_dir / f"{record.number:03d}", inputs, progress=False,
                                             base=worker.base_for(cfg))
        replayed.append((record, results.final.heldout.score, "replayed here"))
    return replayed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The same search with and without pruning: steps, bests, "
                                                 "and whether pruning ever stopped the eventual winner.")
    parser.add_argument("--out", type=Path, required=True, help="directory for both sweeps, reports and replays")
    parser.add_argument("--sweep", default="search", help="the sweep config (conf/sweep/<name>.yaml)")
    parser.add_argument("--quick", action="store_true", help="tiny model, tiny budgets: checks the plumbing")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for both sweeps")
    args = parser.parse_args(argv)
    overrides = [*(QUICK if args.quick else []), *args.overrides]
    sweeps_dir = args.out / "sweeps"
    pruned_dir = run(args.sweep, args.sweep, sweeps_dir, overrides)
    unpruned_dir = run(args.sweep, f"{args.sweep}_unpruned", sweeps_dir, [*overrides, "sweep.pruner=none"])

    pruned_steps, unpruned_steps = steps(pruned_dir), steps(unpruned_dir)
    n_pruned = sum(r.state == "PRUNED" for r in records(pruned_dir))
    print(f"\n=== pruning benchmark: +sweep={args.sweep} {' '.join(overrides)}")
    ratio = pruned_steps / unpruned_steps if unpruned_steps else float("nan")
    print(f"trial-steps with pruning / without: {pruned_steps} / {unpruned_steps} = {ratio:.2f} "
          f"({n_pruned} of {len(records(pruned_dir))} trials pruned; target <= 0.5, stretch <= 0.2)")
    best_pruned = best_line("with pruning", pruned_dir)
    best_unpruned = best_line("without pruning", unpruned_dir)
    if best_pruned and best_unpruned:
        gap = best_pruned.score - best_unpruned.score
        within = abs(gap) <= max(best_pruned.stderr, best_unpruned.stderr)
        print(f"best with - best without, reporting split: {gap:+.3f}: "
              f"{'equal within one standard error' if within else 'NOT within one standard error'}")
    best_selection = max((r.values[0] for r in records(pruned_dir) if r.state == "COMPLETE" and r.values),
                         default=None)
    stopped_winner = False
    for record, score, source in replay(pruned_dir, unpruned_dir, args.out / "replay"):
        would_win = best_selection is None or score > best_selection
        stopped_winner |= would_win
        print(f"pruned trial {record.number} at step {record.steps_trained} {json.dumps(record.params)}: unpruned "
              f"selection score {score:.3f} ({source}) vs the pruned sweep's best "
              f"{'-' if best_selection is None else f'{best_selection:.3f}'}: "
              f"{'WOULD HAVE BECOME THE BEST' if would_win else 'would not have become the best'}")
    print(f"pruning stopped a trial that would have become the best: {'yes' if stopped_winner else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
