"""How often does the regression gate cry wolf, and does it catch a damaged adapter? Three figures, not a test.

    python tests/benchmarks/gate_false_alarm.py --run sweeps/rank/trials/003/reporting -K 3   # the default setup
    python tests/benchmarks/gate_false_alarm.py --quick                                      # tiny model, ~1 minute

(a) A/A: the same adapter re-evaluated from scratch K times (a fresh `python -m harness.gate check --reevaluate`
    process each time, each with an empty HARNESS_CACHE), gated against its own baseline: failures counted.
(b) The decision rule's family-wise false-alarm rate under "no change", by resampling the stored per-example
    scores: R times, the examples are resampled with replacement and each example's (baseline, candidate) pair is
    drawn from (baseline, baseline-like) with the two sides swapped at random, so candidate and baseline have the
    same distribution by construction; "baseline-like" scores are independent draws at the baseline's own rate
    (0/1 scores: Bernoulli(mean); partial credit: another example's score), the noisiest "equally good adapter"
    (errors on other examples). Base-model scores stay paired by example. Every check runs as the gate runs it
    (`harness.gate.compare`, Holm included); a replicate is a false alarm when the verdict is "fail". Target: <= alpha.
(c) Power against a known damaged adapter (its LoRA B matrices plus Gaussian noise of --damage times their own
    standard deviation): the real gate's exit code on it, and the share of R resampled replicates of the
    (baseline, damaged) pairs that fail.

Without --run, a run is trained first (`python -m harness eval.split=reporting <overrides>`, a fresh process).
Overrides after the options go to that run and to `gate check` (use them for the eval subset and model, e.g.
model=tiny). Writes everything under --out; prints the three figures last.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

QUICK_OVERRIDES = ["model=tiny", "quant=none", "run_regression=false", "train.sft.max_steps=2",
                   "train.sft.batch_size=4", "data.max_sft_examples=16", "eval.max_examples=8",
                   "eval.generation.max_new_tokens=8", "eval.prompt_baseline.enabled=false", "eval.min_score=0"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="run or trial reporting dir with adapter/ and results.json")
    parser.add_argument("-K", type=int, default=3, help="A/A re-evaluations, each a fresh process, cold cache")
    parser.add_argument("--resamples", type=int, default=2000, help="resampled replicates for (b) and (c)")
    parser.add_argument("--damage", type=float, default=1.0, help="noise added to LoRA B, in units of its std")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--out", type=Path, default=None, help="work directory (default: a new temp dir)")
    parser.add_argument("--quick", action="store_true", help="tiny model, K=2, 200 resamples: checks the script")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the run and the gate")
    args = parser.parse_args(argv)
    overrides = [*QUICK_OVERRIDES, *args.overrides] if args.quick else list(args.overrides)
    k = 2 if args.quick else args.K
    resamples = 200 if args.quick else args.resamples
    out = args.out or Path(tempfile.mkdtemp(prefix="gate-false-alarm-"))
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(REPO_ROOT)}

    # 0. The run whose adapter is gated, and its baseline. --quick shortens generation, which changes the eval
    #    set's fingerprint: it freezes its own manifest (in --out; the committed one stays as it is).
    if args.quick:
        overrides.append(f"eval.manifest={out / 'quick_manifest.json'}")
        _python(["-m", "harness.evalset", "freeze", *overrides], env, check=True)
    run_dir = args.run or _train(out / "run", overrides, env)
    baseline = out / "baseline.json"
    _python(["-m", "harness.gate", "baseline", "--from", str(run_dir), "--out", str(baseline)], env, check=True)

    # (a) A/A: fresh process, cold cache, K times.
    codes, changed = [], []
    for i in range(k):
        cache = Path(tempfile.mkdtemp(prefix=f"gate-aa-cache-{i}-"))
        gate_dir = out / f"aa-{i}"
        try:
            done = _python(["-m", "harness.gate", "check", "--candidate", str(run_dir), "--baseline", str(baseline),
                            "--out", str(gate_dir), "--alpha", str(args.alpha), "--reevaluate", *args.overrides],
                           {**env, "HARNESS_CACHE": str(cache)})
        finally:
            shutil.rmtree(cache, ignore_errors=True)  # we made it
        codes.append(done.returncode)
        notes = json.loads((gate_dir / "gate.json").read_text()).get("notes", [])
        changed += [n for n in notes if n.startswith("Held-out outputs that differ")]

    # (b) and (c) on the stored per-example scores, with the gate's own decision rule.
    from harness.gate import GateSettings, load_baseline
    from harness.records import RunResults, read_record

    base_record = load_baseline(baseline)
    aa_record = read_record(RunResults, out / "aa-0" / "candidate_results.json")
    settings = GateSettings(alpha=args.alpha)
    rng = np.random.default_rng(0)
    false_alarms = sum(_replicate(base_record, aa_record, settings, rng, null=True) for _ in range(resamples))

    damaged_dir = _damaged_adapter(run_dir, out / "damaged", args.damage)
    done = _python(["-m", "harness.gate", "check", "--candidate", str(damaged_dir), "--baseline", str(baseline),
                    "--out", str(out / "damaged-gate"), "--alpha", str(args.alpha), *args.overrides], env)
    damaged_record = read_record(RunResults, out / "damaged-gate" / "candidate_results.json") \
        if (out / "damaged-gate" / "candidate_results.json").is_file() else None
    detected = sum(_replicate(base_record, damaged_record, settings, rng, null=False) for _ in range(resamples)) \
        if damaged_record else 0

    print(f"\nGate false-alarm figures ({'--quick, tiny model' if args.quick else 'overrides: ' + ' '.join(overrides)};"
          f" baseline {baseline}, alpha {args.alpha:g}):")
    print(f"(a) A/A: {sum(c != 0 for c in codes)} of {k} fresh re-evaluations failed the gate "
          f"(exit codes {codes}; {'; '.join(c.rstrip('.') for c in changed) or 'no output comparison kept'})")
    print(f"(b) family-wise false-alarm rate under no change: {false_alarms / resamples:.3f} "
          f"({false_alarms} of {resamples} resampled replicates failed; target <= {args.alpha:g})")
    print(f"(c) power against the damaged adapter (LoRA B + {args.damage:g} std noise): real gate exit "
          f"{done.returncode}; {detected / resamples:.3f} of {resamples} resampled replicates failed")
    return 0


def _replicate(baseline, candidate, settings, rng, null: bool) -> bool:
    """One resampled replicate through the real decision rule: True when the gate's verdict is "fail".
    null=True: candidate and baseline exchangeable (see (b)); False: the (baseline, candidate) pairs resampled."""
    from harness.gate import compare

    b, c = copy.deepcopy(baseline), copy.deepcopy(candidate)
    stage = c.final_stage
    n = len(b.heldout.per_example)
    idx = rng.integers(0, n, size=n)
    ref = np.array([row.score for row in b.heldout.per_example])
    cand = _baseline_like(ref, rng) if null else np.array([row.score for row in stage.heldout.per_example])
    ref, cand = _pairs(ref[idx], cand[idx], rng, null)
    b.heldout.per_example = [copy.copy(b.heldout.per_example[i]) for i in idx]
    stage.heldout.per_example = [copy.copy(stage.heldout.per_example[i]) for i in idx]
    for row, score in zip(b.heldout.per_example, ref):
        row.score = float(score)
    for row, score in zip(stage.heldout.per_example, cand):
        row.score = float(score)
    for task, scores in b.regression.items():
        m = len(scores.per_example)
        tidx = rng.integers(0, m, size=m)
        ref_t = np.array(scores.per_example)
        cand_t = _baseline_like(ref_t, rng) if null else np.array(stage.regression[task].per_example)
        ref_t, cand_t = _pairs(ref_t[tidx], cand_t[tidx], rng, null)
        scores.per_example = [float(s) for s in ref_t]
        stage.regression[task].per_example = [float(s) for s in cand_t]
        b.base_regression[task].per_example = [float(b.base_regression[task].per_example[i]) for i in tidx]
    return compare(b, c, settings).verdict == "fail"


def _baseline_like(scores: np.ndarray, rng) -> np.ndarray:
    if np.all((scores == 0) | (scores == 1)):
        return (rng.random(len(scores)) < scores.mean()).astype(float)
    return scores[rng.permutation(len(scores))]


def _pairs(ref: np.ndarray, cand: np.ndarray, rng, swap: bool) -> tuple[np.ndarray, np.ndarray]:
    if not swap:
        return ref, cand
    flip = rng.random(len(ref)) < 0.5
    return np.where(flip, cand, ref), np.where(flip, ref, cand)


def _damaged_adapter(run_dir: Path, out_dir: Path, scale: float) -> Path:
    import torch
    from safetensors.torch import load_file, save_file

    adapter = run_dir / "adapter"
    tensors = load_file(adapter / "adapter_model.safetensors")
    generator = torch.Generator().manual_seed(0)
    damaged = {name: t + torch.randn(t.shape, generator=generator) * scale * (t.float().std() + 1e-3)
               if "lora_B" in name else t for name, t in tensors.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(damaged, out_dir / "adapter_model.safetensors", metadata={"format": "pt"})
    shutil.copy(adapter / "adapter_config.json", out_dir / "adapter_config.json")
    return out_dir


def _train(run_dir: Path, overrides: list[str], env: dict) -> Path:
    _python(["-m", "harness", f"hydra.run.dir={run_dir}", "eval.split=reporting", *overrides], env, check=True)
    return run_dir


def _python(args: list[str], env: dict, check: bool = False) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False)
    print(f"$ python {' '.join(args)}\n  -> exit {done.returncode}: {(done.stdout.splitlines() or [''])[0]}",
          flush=True)
    if check and done.returncode != 0:
        sys.exit(f"failed: python {' '.join(args)}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return done


if __name__ == "__main__":
    sys.exit(main())
