"""Per-trial overhead of a sweep: seconds from a trial's start to its first training step, with the base model
loaded (and NF4-quantized) for every trial as before, and loaded once per worker (harness.worker) as now.

    python tests/benchmarks/bench_trial_overhead.py                          # tiny model, NF4, 3 trials each way
    python tests/benchmarks/bench_trial_overhead.py --trials 2 model=smollm2-135m    # the default model

Both ways run the sweep's trial path (run_experiment on prepared inputs, baselines from the cache, a fresh adapter)
with the same configuration; only where the base comes from differs. An untimed trial first fills the baseline
cache, so neither way pays for baselines. Trailing arguments are Hydra overrides (model=..., quant=...).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from transformers import TrainerCallback

from harness.reproduce import compose_run_config
from harness.run import prepare_inputs, run_experiment
from harness.worker import WorkerBase

DEFAULTS = ["model=tiny", "quant=nf4", "run_regression=false", "train.sft.max_steps=2", "train.sft.batch_size=4",
            "data.max_sft_examples=16", "eval.max_examples=4", "eval.canary_examples=2"]


class FirstStep(TrainerCallback):
    """The moment the first optimizer step begins."""

    at: float | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.at is None:
            self.at = time.perf_counter()


def trial_overhead(cfg, inputs, run_dir: Path, worker: WorkerBase | None) -> float:
    started = time.perf_counter()
    first = FirstStep()
    base = worker.base_for(cfg) if worker else None
    run_experiment(cfg, run_dir, inputs, callbacks=[first], progress=False, base=base)
    return first.at - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3, help="timed trials each way")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides on top of the tiny defaults")
    args = parser.parse_args(argv)
    cfg = compose_run_config([*DEFAULTS, *args.overrides])
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        out = Path(tmp)
        inputs = prepare_inputs(cfg, show_card=False)
        run_experiment(cfg, out / "warmup", inputs, progress=False)  # fills the baseline cache; untimed
        per_trial = [trial_overhead(cfg, inputs, out / f"per_trial_{n}", None) for n in range(args.trials)]
        worker = WorkerBase()
        shared = [trial_overhead(cfg, inputs, out / f"shared_{n}", worker) for n in range(args.trials)]
        assert worker.loads == 1
    later = shared[1:] or shared
    print(f"per-trial overhead (trial start -> first training step), model {cfg.model.name_or_path} "
          f"(kind {cfg.model.kind}), quant {cfg.quant.method}, {args.trials} trials each way")
    print(f"  base loaded per trial (before): mean {statistics.mean(per_trial):.2f} s  "
          f"[{', '.join(f'{s:.2f}' for s in per_trial)}]")
    print(f"  one base per worker (after):    mean {statistics.mean(shared):.2f} s  "
          f"[{', '.join(f'{s:.2f}' for s in shared)}]; trials after the first {statistics.mean(later):.2f} s")
    print(f"  ratio after / before (trials after the first): {statistics.mean(later) / statistics.mean(per_trial):.2f}"
          f"; saved per trial {statistics.mean(per_trial) - statistics.mean(later):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
