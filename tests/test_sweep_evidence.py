"""Sweep evidence on the tiny model: a recorded trial command reproduces the trial alone; selection never reads
the reporting split; the chosen trials are judged on it; a diverging trial is FAIL."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import torch

import harness.evaluate
import harness.reporting
from harness.evaluate import load_heldout
from harness.records import RunResults, SweepVerdicts, TrialRecord, read_record
from harness.sweep import run_sweep
from tests.conftest import make_config
from tests.test_reproducibility import adapter_tensors, assert_same_tensors, outputs, run_trial_alone

# NF4 and a pruner that scores the selection subset every step but never prunes: neither the CPU inference swap
# nor the intermediate evaluations may change what the trial trains (the command alone has no pruner).
OVERRIDES = [
    "model=tiny", "quant=nf4", "run_regression=false", "train.sft.max_steps=3", "train.sft.batch_size=4",
    "data.max_sft_examples=16", "eval.max_examples=6", "eval.canary_examples=2", "sweep.tracking=none",
    "+sweep=rank", "sweep.space.lora_r=[1,2]", "sweep.pruner=threshold", "sweep.prune_threshold=-1.0",
    "sweep.prune_every_steps=1", "sweep.prune_eval_examples=2",
]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A two-trial sweep run once, with every graded example recorded by phase (trials, then reporting)."""
    root = tmp_path_factory.mktemp("evidence")
    overrides = [*OVERRIDES, f"sweep.sweeps_dir={root}"]
    graded: list[tuple[str, list[str]]] = []
    phase = ["trials"]
    real_grade, real_reporting = harness.evaluate.grade_outputs, harness.reporting.evaluate_reporting

    def grade_spy(eval_cfg, examples, outputs, seconds=0.0):
        graded.append((phase[0], [e.source for e in examples]))
        return real_grade(eval_cfg, examples, outputs, seconds)

    def reporting_spy(trial_dir, results, bases=None):
        phase[0] = "reporting"
        return real_reporting(trial_dir, results, bases)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HARNESS_CACHE", str(root / "cache"))
        patch.setattr(harness.evaluate, "grade_outputs", grade_spy)
        patch.setattr(harness.reporting, "evaluate_reporting", reporting_spy)
        summary = run_sweep(make_config(overrides), overrides)
    return root / "rank", summary, graded


def test_selection_never_reads_the_reporting_split_and_verdicts_use_only_it(sweep):
    sweep_dir, summary, graded = sweep
    assert summary.n_complete == 2
    cfg = make_config(["model=tiny"])
    selection = {e.source for e in load_heldout(cfg.eval)}
    reporting = {e.source for e in load_heldout(make_config(["model=tiny", "eval.split=reporting"]).eval)}
    trials_phase = [sources for phase, sources in graded if phase == "trials"]
    reporting_phase = [sources for phase, sources in graded if phase == "reporting"]
    # Every stage, baseline and pruning evaluation while trials ran: selection examples only.
    assert len(trials_phase) >= 2 * 3 + 1  # per trial: 2 pruning evaluations + the stage; zero-shot baseline once
    assert all(set(sources) <= selection for sources in trials_phase)
    assert any(len(sources) == 2 for sources in trials_phase), "the pruning subset was scored"
    # After: the candidates and the base model's baselines on the reporting split only.
    assert reporting_phase and all(set(sources) <= reporting for sources in reporting_phase)

    for trial in (read_record(TrialRecord, p) for p in sorted(sweep_dir.glob("trials/*/trial.json"))):
        results = read_record(RunResults, Path(trial.trial_dir) / "results.json")
        assert results.eval_set.split == "selection" and results.eval_set.hash.endswith("-selection-first6")
        assert trial.values == [results.final.heldout.score], "the objective is the selection score"
        # No verdict reads a selection-split baseline: zero-shot only (the report's orientation), no prompt baseline.
        assert results.baselines.zero_shot.n == results.final_stage.heldout.n
        assert results.baselines.prompt_baseline is None
    verdicts = read_record(SweepVerdicts, sweep_dir / "verdicts.json")
    assert {v.question for v in verdicts.verdicts} >= {"min_score", "finetuning_needed", "best_vs_runner_up"}
    assert all(v.state in {"meets", "below", "inconclusive", "yes", "no", "better", "worse", "cheaper", "best"}
               for v in verdicts.verdicts)
    best = json.loads((sweep_dir / "best.json").read_text())
    assert verdicts.best == best["number"] and verdicts.scores[0].number == best["number"]
    for score in verdicts.scores:
        judged = read_record(RunResults, score.results)
        assert judged.kind == "reporting_evaluation" and judged.eval_set.split == "reporting"
        assert {r.source for r in judged.final_stage.heldout.per_example} <= reporting
        # Only the baseline the "was fine-tuning needed?" verdict reads, on the same reporting examples.
        assert judged.baselines.prompt_baseline.n == judged.final_stage.heldout.n
        assert judged.baselines.zero_shot is None
        assert score.optimism_gap == pytest.approx(score.selection.score - score.reporting.score)


def test_a_recorded_trial_command_alone_reproduces_its_adapter_and_scores(sweep, tmp_path):
    sweep_dir, _, _ = sweep
    trial = read_record(TrialRecord, sweep_dir / "trials" / "001" / "trial.json")
    assert trial.command == shlex.join(["python", "-m", "harness", *trial.overrides])
    assert not any(o.startswith(("+sweep", "sweep.", "hydra.")) for o in trial.overrides)
    assert "lora.r=2" in trial.overrides and "lora.alpha=4.0" in trial.overrides
    run_trial_alone(trial.command, tmp_path)
    assert_same_tensors(adapter_tensors(Path(trial.trial_dir)), adapter_tensors(tmp_path / "alone"))
    assert outputs(Path(trial.trial_dir)) == outputs(tmp_path / "alone")
    inside = read_record(RunResults, Path(trial.trial_dir) / "results.json")
    rerun = read_record(RunResults, tmp_path / "alone" / "results.json")
    assert rerun.final.heldout == inside.final.heldout and rerun.adapter.hash == inside.adapter.hash
    assert rerun.config == inside.config


def test_the_sweep_yamls_own_settings_are_in_the_command(tmp_path):
    # rank.yaml sets train.sft.max_steps=30 and sft_dpo.yaml switches train=sft_dpo: neither may be lost.
    from harness.reproduce import trial_overrides, verify_overrides
    from harness.sweep import apply_params

    for name, expected in (("rank", "train.sft.max_steps=30"), ("sft_dpo", "train=sft_dpo")):
        overrides = ["model=tiny", f"+sweep={name}"]
        cfg = make_config(overrides)
        params = {"lora_r": 4, "lora_alpha_ratio": 2.0} if name == "rank" else {
            "dpo_beta": 0.1, "dpo_max_steps": 10, "dpo_learning_rate": 1e-5}
        recorded = trial_overrides(cfg, params, overrides)
        assert expected in recorded
        verify_overrides(recorded, apply_params(cfg, params))
    with pytest.raises(ValueError, match=r"would not rebuild its config: train\.sft\.max_steps would be 40"):
        verify_overrides(["model=tiny"], apply_params(make_config(["model=tiny", "+sweep=rank"]), {"lora_r": 16}))


def test_a_diverging_trial_is_recorded_fail_with_the_step_and_no_adapter(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    overrides = [*OVERRIDES[:9], "+sweep=rank", "sweep.space.lora_r=[2]", "sweep.space.sft_learning_rate=[1e30]",
                 "train.sft.warmup_ratio=0.0", "train.sft.max_steps=6", f"sweep.sweeps_dir={tmp_path}"]
    summary = run_sweep(make_config(overrides), overrides)
    assert summary.n_failed == 1 and summary.n_complete == 0
    (trial_json,) = (tmp_path / "rank" / "trials").glob("*/trial.json")
    trial = read_record(TrialRecord, trial_json)
    assert trial.state == "FAIL" and "NonFiniteTrainingError" in trial.fail_reason
    assert "non-finite" in trial.fail_reason and "step" in trial.fail_reason
    assert not (trial_json.parent / "adapter").exists() and not (trial_json.parent / "results.json").exists()
    losses = [json.loads(line) for line in (trial_json.parent / "loss.jsonl").read_text().splitlines()]
    assert len(losses) < 6 and torch.isfinite(torch.tensor(losses[0]["loss"]))


def test_reporting_evaluations_on_one_shared_base_equal_a_fresh_base_each(sweep, tmp_path):
    # The sweep scored its candidates on one base model (harness.worker.WorkerBase(for_training=False)), taking each adapter off
    # again: the candidate scored last must come out exactly as on a base loaded for it alone.
    import shutil

    from harness.reporting import evaluate_reporting

    sweep_dir, _, _ = sweep
    verdicts = read_record(SweepVerdicts, sweep_dir / "verdicts.json")
    assert len(verdicts.scores) >= 2, "a second candidate ran on the shared base"
    last = verdicts.scores[-1]
    trial_dir = Path(last.results).parent.parent
    alone_dir = tmp_path / trial_dir.name
    shutil.copytree(trial_dir, alone_dir, ignore=shutil.ignore_patterns("reporting"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HARNESS_CACHE", str(sweep_dir.parent / "cache"))
        alone = evaluate_reporting(alone_dir, read_record(RunResults, alone_dir / "results.json"))
    shared = read_record(RunResults, last.results)
    assert [(r.source, r.output) for r in alone.final_stage.heldout.per_example] == \
        [(r.source, r.output) for r in shared.final_stage.heldout.per_example]
    assert alone.canary == shared.canary and alone.adapter.hash == shared.adapter.hash
