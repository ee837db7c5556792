"""+sweep=search: the real search composes and validates, runs with pruning on the tiny model, and its report says
what mattered (parameter importance, parallel coordinates) and what pruning spent and saved."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import optuna
import pytest

from harness.records import TrialRecord, read_record
from harness.report import Sweep, Trial, build_report, load_sweep
from harness.report_search import param_importances, pruning_budget
from harness.sweep import apply_params, run_sweep, search_space
from tests.conftest import TINY_OVERRIDES, make_config

SEARCH_PARAMS = {"lora_r", "lora_alpha_ratio", "sft_learning_rate", "lora_dropout", "lora_target_modules"}


def test_the_search_composes_and_every_choice_builds_a_valid_trial():
    from harness.reproduce import trial_overrides, verify_overrides

    cfg = make_config(["+sweep=search"])
    sweep = cfg.sweep
    assert set(search_space(sweep.space)) == SEARCH_PARAMS
    assert sweep.sampler == "tpe" and 1 <= sweep.startup_trials() < sweep.n_trials
    assert sweep.pruner in ("successive_halving", "hyperband") and sweep.prune_every_steps < cfg.train.sft.max_steps
    for choice in sweep.space.lora_target_modules:
        params = {"lora_r": 8, "lora_alpha_ratio": 2.0, "sft_learning_rate": 1e-3, "lora_dropout": 0.1,
                  "lora_target_modules": choice}
        trial_cfg = apply_params(cfg, params)
        assert trial_cfg.lora.target_modules == [m.strip() for m in choice.split(",")]
        assert trial_cfg.lora.dropout == 0.1 and trial_cfg.lora.alpha == 16.0
        verify_overrides(trial_overrides(cfg, params, ["+sweep=search"]), trial_cfg)
    dpo = make_config(["+sweep=search_sft_dpo"])
    assert dpo.train.stages == ["sft", "dpo"] and "dpo_beta" in search_space(dpo.sweep.space)


@pytest.mark.parametrize("override, key", [
    ("sweep.space.lora_target_modules=[' , ']", "sweep.space.lora_target_modules"),
    ("sweep.space.lora_dropout=[0.0,1.0]", "sweep.space.lora_dropout"),
    ("sweep.n_startup_trials=12", "sweep.n_startup_trials"),
    ("sweep.prune_reduction_factor=1", "sweep.prune_reduction_factor"),
    ("sweep.space.sft_learning_rate=[1.0e-3]", "sweep.space.sft_learning_rate"),
])
def test_a_bad_search_setting_is_refused_at_compose_time_naming_its_key(override, key):
    with pytest.raises(Exception, match=re.escape(key)):
        make_config(["+sweep=search", override])


# Four tiny trials of the search itself. The random tiny model scores 0, so a threshold pruner at 0.5 must prune
# every trial that reports; trials drawn with sft_max_steps=2 never report (step 2 < 3) and complete. Seed 2
# draws 6, 2, 6, 2 steps: two pruned trials and two complete ones.
RUN_OVERRIDES = [
    *TINY_OVERRIDES, "eval.max_examples=4", "eval.canary_examples=2", "sweep.tracking=none", "+sweep=search",
    "sweep.seed=2", "sweep.n_trials=4", "sweep.n_startup_trials=3", "sweep.space.lora_r=[2,4]", "sweep.space.sft_max_steps=[2,6]",
    "sweep.pruner=threshold", "sweep.prune_threshold=0.5", "sweep.prune_every_steps=3",
    "sweep.prune_eval_examples=2",
]


@pytest.fixture(scope="module")
def search_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("search")
    overrides = [*RUN_OVERRIDES, f"sweep.sweeps_dir={root / 'sweeps'}"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HARNESS_CACHE", str(root / "cache"))
        run_sweep(make_config(overrides), overrides)
    return root / "sweeps" / "search"  # the report goes to root/reports/search


def _records(sweep_dir: Path) -> list[TrialRecord]:
    return [read_record(TrialRecord, p) for p in sorted(sweep_dir.glob("trials/*/trial.json"))]


def test_the_search_prunes_and_records_the_step(search_dir):
    records = _records(search_dir)
    assert len(records) == 4 and all(set(r.params) == SEARCH_PARAMS | {"sft_max_steps"} for r in records)
    assert len({json.dumps(r.params, sort_keys=True) for r in records}) == 4, "the sampler searched"
    pruned = [r for r in records if r.state == "PRUNED"]
    complete = [r for r in records if r.state == "COMPLETE"]
    assert pruned and len(complete) >= 2
    for record in pruned:
        assert record.params["sft_max_steps"] == 6 and record.steps_budget == 6 and record.steps_trained == 3
        assert record.intermediate[-1].step == 3 and "at step 3" in record.fail_reason
    for record in complete:
        assert record.params["sft_max_steps"] == 2 and record.steps_trained == record.steps_budget == 2
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{search_dir / 'study.db'}")
    by_number = {t.number: t for t in study.trials}
    for record in pruned:
        assert by_number[record.number].state == optuna.trial.TrialState.PRUNED
        assert by_number[record.number].last_step == 3


def test_the_search_report_shows_importance_parallel_coordinates_and_the_pruning_budget(search_dir):
    records = _records(search_dir)
    trained = sum(r.steps_trained for r in records)
    budget = sum(r.steps_budget for r in records)
    page = (search_dir.parent.parent / "reports" / "search" / "report.html").read_text(encoding="utf-8")
    assert ">What mattered</h2>" in page
    assert f"{trained} of {budget} trial-steps trained" in page
    assert (search_dir.parent.parent / "reports" / "search" / "images" / "parallel_coordinates.png").is_file()
    section = page.split(">What mattered</h2>")[1].split("<h2")[0]
    shares = [float(s) for s in re.findall(r"<td>(\d\.\d{3})</td>", section)]
    assert len(shares) == len(SEARCH_PARAMS | {"sft_max_steps"}) and sum(shares) == pytest.approx(1.0, abs=0.01)
    # The same sweep seen as a one-parameter study: no importance section, the budget line stays.
    sweep = load_sweep(search_dir)
    sweep.meta.space = {"lora_r": sweep.meta.space["lora_r"]}
    report = build_report([sweep])
    assert "What mattered" not in report.markdown and "trial-steps trained" in report.markdown
    assert not any(name.startswith("parallel_coordinates") for name in report.images)


def _synthetic_sweep(n: int, score) -> Sweep:
    """A sweep's records only (what importance reads): params drawn at random, the objective `score(params)`."""
    meta = load_sweep_meta()
    rng = random.Random(0)
    trials = []
    for number in range(n):
        params = {"lora_r": rng.choice([4, 8, 16, 32]), "sft_learning_rate": 10 ** rng.uniform(-3.69, -2.53),
                  "lora_target_modules": rng.choice(["q_proj,v_proj", "all-linear"])}
        record = TrialRecord(number=number, state="COMPLETE", params=params, command="", trial_dir="", host="",
                             pid=0, started_at="", values=[score(params)], steps_trained=40, steps_budget=40)
        trials.append(Trial("search", record, 2.0, None, []))
    return Sweep("search", Path("."), meta, trials, None)


def load_sweep_meta():
    from harness.records import EvalSetIdentity, ModelIdentity, SweepRecord

    return SweepRecord(
        name="search", question="", command="", storage="", sampler="tpe", pruner="successive_halving",
        objective="constrained", n_trials=24,
        space={"lora_r": [4, 8, 16, 32], "sft_learning_rate": [2e-4, 3e-3],
               "lora_target_modules": ["q_proj,v_proj", "all-linear"]},
        eval_set=EvalSetIdentity(name="e", hash="h", n=None, min_score=0.8, split="selection"),
        model=ModelIdentity(id="m", hash=None, quantized=True), price_per_gpu_hour=2.0, config={},
        started_at="")


def test_importance_finds_the_parameter_that_decides_the_score():
    rng = random.Random(1)
    sweep = _synthetic_sweep(24, lambda p: p["lora_r"] / 32 + 0.01 * rng.random())
    importances = param_importances(sweep)
    assert set(importances) == {"lora_r", "sft_learning_rate", "lora_target_modules"}
    assert sum(importances.values()) == pytest.approx(1.0)
    assert max(importances, key=importances.get) == "lora_r"
    # Another target: the learning rate decides.
    sweep = _synthetic_sweep(24, lambda p: -abs(p["sft_learning_rate"] - 1e-3) * 100)
    importances = param_importances(sweep)
    assert max(importances, key=importances.get) == "sft_learning_rate"
    assert pruning_budget(sweep).startswith("Pruning budget (search, pruner successive_halving): 0 of 24")
    assert param_importances(_synthetic_sweep(1, lambda p: 0.5)) is None  # one complete trial: nothing to say


@pytest.mark.slow  # two tiny sweeps, their reporting-split evaluations and a replay: about two minutes
def test_the_pruning_benchmark_quick_mode_prints_every_line(tmp_path):
    import os
    import subprocess
    import sys

    from harness.artifacts import REPO_ROOT

    env = {**os.environ, "HARNESS_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    bench = subprocess.run([sys.executable, "tests/benchmarks/bench_pruning.py", "--quick", "--out", str(tmp_path)],
                           cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False)
    assert bench.returncode == 0, bench.stderr[-3000:]
    out = bench.stdout
    assert re.search(r"trial-steps with pruning / without: \d+ / \d+ = \d\.\d\d", out)
    assert re.search(r"with pruning: (best trial \d+ .*reporting split \d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]|no complete)",
                     out)
    assert re.search(r"without pruning: best trial \d+ .*reporting split \d\.\d{3} \[", out)
    assert re.search(r"pruned trial \d+ at step 3 .*unpruned selection score \d\.\d{3}", out)
    assert re.search(r"pruning stopped a trial that would have become the best: (yes|no)", out)
