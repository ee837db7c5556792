"""Eval sets first: frozen hashes, leakage refusal, batched generation, the adapter canary, cached baselines."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from harness.artifacts import REPO_ROOT
from harness.config import EvalConfig, LeakageConfig, LoraConfig
from harness.data import DataError
from harness.evalset import EvalSetChangedError, freeze, verify_frozen
from harness.evaluate import (
    AdapterInactiveError,
    HeldoutExample,
    check_adapter_active,
    generate,
    grade_outputs,
    load_heldout,
)
from harness.graders import GraderConfig
from harness.leakage import LeakageError, check_leakage
from harness.model import attach_lora
from tests.conftest import TINY_OVERRIDES, make_config


@pytest.fixture
def eval_copy(tmp_path) -> EvalConfig:
    """The default eval set's first rows, copied and frozen in a temp dir."""
    rows = (REPO_ROOT / "evals/json_extract/heldout.jsonl").read_text().splitlines()
    rows = rows[:6] + rows[-6:]  # selection rows, then reporting rows
    data = tmp_path / "heldout.jsonl"
    data.write_text("\n".join(rows) + "\n")
    cfg = EvalConfig(name="copy", data_file=str(data), manifest=str(tmp_path / "manifest.json"))
    freeze(cfg)
    return cfg


def test_shipped_eval_set_matches_its_manifest():
    cfg = make_config()
    assert verify_frozen(cfg.eval).endswith("-selection") and len(verify_frozen(cfg.eval)) == 16 + len("-selection")
    assert len(load_heldout(cfg.eval)) == 100
    reporting = load_heldout(replace(cfg.eval, split="reporting"))
    assert len(reporting) == 160
    assert not {e.source for e in reporting} & {e.source for e in load_heldout(cfg.eval)}


def test_each_split_has_its_own_identity_and_moving_a_row_changes_the_hash(eval_copy):
    selection, reporting = verify_frozen(eval_copy), verify_frozen(replace(eval_copy, split="reporting"))
    assert selection.rsplit("-", 1) == [reporting.rsplit("-", 1)[0], "selection"] and reporting.endswith("-reporting")
    path = Path(eval_copy.data_file)
    lines = path.read_text().splitlines()
    lines[0] = lines[0].replace('"split": "selection"', '"split": "reporting"')
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(EvalSetChangedError, match="changed: data_sha256, splits"):
        verify_frozen(eval_copy)


def test_heldout_row_without_a_split_names_the_line(tmp_path):
    path = tmp_path / "h.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "x"}], "reference": {"a": 1}}) + "\n")
    with pytest.raises(DataError, match=r"h\.jsonl:1: missing field 'split'"):
        load_heldout(EvalConfig(data_file=str(path)))
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "x"}], "reference": {"a": 1},
                                "split": "selection"}) + "\n")
    with pytest.raises(DataError, match="has no reporting rows"):
        load_heldout(EvalConfig(data_file=str(path)))


def test_changed_eval_file_is_refused_until_refrozen(eval_copy):
    frozen_hash = verify_frozen(eval_copy)
    path = Path(eval_copy.data_file)
    lines = path.read_text().splitlines()
    lines[3] = lines[3].replace('"age": ', '"age": 1')
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(EvalSetChangedError, match=r"manifest\.json: eval set 'copy' differs .*changed: data_sha256"):
        verify_frozen(eval_copy)
    freeze(eval_copy)  # the deliberate re-freeze
    assert verify_frozen(eval_copy) != frozen_hash


def test_changed_grader_changes_the_hash(eval_copy):
    with pytest.raises(EvalSetChangedError, match="changed: graders"):
        verify_frozen(replace(eval_copy, graders=[GraderConfig(type="json_fields", fields=["name"])]))


def test_subset_has_its_own_identity(eval_copy):
    assert verify_frozen(replace(eval_copy, max_examples=5)) == verify_frozen(eval_copy) + "-first5"


def test_missing_manifest_and_empty_set_are_refused(eval_copy, tmp_path):
    with pytest.raises(EvalSetChangedError, match="has no manifest; freeze it first"):
        verify_frozen(replace(eval_copy, manifest=str(tmp_path / "none.json")))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="empty.jsonl: no rows"):
        verify_frozen(replace(eval_copy, data_file=str(empty)))
    with pytest.raises(DataError, match="missing.jsonl: file not found"):
        verify_frozen(replace(eval_copy, data_file=str(tmp_path / "missing.jsonl")))


def test_heldout_row_without_reference_names_the_line(tmp_path):
    path = tmp_path / "h.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n")
    with pytest.raises(DataError, match=r"h\.jsonl:1: missing field 'reference'"):
        load_heldout(EvalConfig(data_file=str(path)))


def test_leakage_over_threshold_is_refused_naming_the_example():
    instruction = "Extract the fields as JSON from the following text please and reply with only the object."
    heldout = [(f"heldout.jsonl:{i}", f"{instruction} Text: person number {i} lives in town {i} and works there")
               for i in range(1, 21)]
    train = [(f"train.jsonl:{i}", f"{instruction} Text: somebody else {i} is elsewhere") for i in range(1, 30)]
    report = check_leakage(train, heldout, LeakageConfig())
    assert report.exact_overlaps == 0 and report.ngram_overlaps == 0, "the shared instruction is not leakage"

    leaked = [*train, ("train.jsonl:99", heldout[6][1])]
    with pytest.raises(LeakageError, match=r"1 of 20 held-out prompts .*heldout\.jsonl:7 ~ train\.jsonl:99 \(exact\)"):
        check_leakage(leaked, heldout, LeakageConfig())
    near_copy = [*train, ("train.jsonl:98", heldout[2][1] + " every single day of the week")]
    with pytest.raises(LeakageError, match=r"heldout\.jsonl:3 ~ train\.jsonl:98 \(8-gram\)"):
        check_leakage(near_copy, heldout, LeakageConfig(ngram=8))
    tolerated = check_leakage(leaked, heldout, LeakageConfig(max_overlap_fraction=0.1))
    assert tolerated.exact_overlaps == 1 and tolerated.examples[0]["heldout"] == "heldout.jsonl:7"


def test_default_training_data_does_not_leak_into_the_heldout_set():
    from harness.run import prepare_inputs

    inputs = prepare_inputs(make_config(["model=tiny"]))
    # Both splits are checked, whichever one the run scores.
    assert inputs.leakage.n_heldout == 260 and inputs.leakage.exact_overlaps == inputs.leakage.ngram_overlaps == 0


def test_grading_keeps_every_example():
    examples = [HeldoutExample([{"role": "user", "content": "q"}], {"a": 1}, "f:1"),
                HeldoutExample([{"role": "user", "content": "q"}], {"a": 2}, "f:2")]
    result = grade_outputs(EvalConfig(graders=[GraderConfig(type="json_fields")]), examples, ['{"a": 1}', '{"a": 3}'])
    assert result.score == 0.5 and result.n == 2 and [r.score for r in result.per_example] == [1.0, 0.0]
    assert result.metrics["json_fields/field/a"] == 0.5 and result.ci_low < 0.5 < result.ci_high


def test_batched_left_padded_generation_equals_one_by_one(tiny_base):
    prompts = [[{"role": "user", "content": text}] for text in ("Hi", "A much longer prompt than the first one", "x")]
    batched = generate(tiny_base.model, tiny_base.tokenizer, prompts, max_new_tokens=6, batch_size=3)
    single = [generate(tiny_base.model, tiny_base.tokenizer, [p], max_new_tokens=6, batch_size=1)[0] for p in prompts]
    assert batched == single
    assert tiny_base.tokenizer.padding_side == "right", "the tokenizer's padding side is restored"


def test_canary_fails_on_an_adapter_whose_lora_b_is_zero(tiny_base):
    model = attach_lora(tiny_base.model, LoraConfig(r=4, alpha=8))  # LoRA B starts at zero: a no-op adapter
    examples = load_heldout(EvalConfig(max_examples=2))
    with pytest.raises(AdapterInactiveError, match="adapter is not applied"):
        check_adapter_active(model, tiny_base.tokenizer, examples, max_new_tokens=4)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    canary = check_adapter_active(model, tiny_base.tokenizer, examples, max_new_tokens=4)
    assert canary.max_logit_diff > 1e-3


def test_canary_refuses_a_plain_model(tiny_base):
    with pytest.raises(AdapterInactiveError, match="not a PeftModel"):
        check_adapter_active(tiny_base.model, tiny_base.tokenizer, [], max_new_tokens=4)


def test_baselines_are_computed_once_per_eval_hash(tmp_path, monkeypatch, tiny_base):
    import harness.baselines as baselines

    monkeypatch.setattr(baselines, "cache_root", lambda: tmp_path)
    cfg = make_config(TINY_OVERRIDES)
    heldout = load_heldout(cfg.eval)
    first = baselines.get_baselines(tiny_base, cfg, "hash-a", heldout, [])
    assert first.cached is False and first.zero_shot.n == len(heldout)

    def no_model_allowed(*args, **kwargs):
        raise AssertionError("a cached baseline must not run the model")

    monkeypatch.setattr(baselines, "evaluate_heldout", no_model_allowed)
    second = baselines.get_baselines(tiny_base, cfg, "hash-a", heldout, [])
    assert second.cached is True and second.zero_shot == first.zero_shot
    with pytest.raises(AssertionError, match="must not run the model"):
        baselines.get_baselines(tiny_base, cfg, "hash-b", heldout, [])  # another eval hash is another baseline


def test_one_run_writes_a_complete_results_record(tmp_path, monkeypatch):
    from harness.run import run_experiment, summary_table

    monkeypatch.setattr("harness.baselines.cache_root", lambda: tmp_path / "cache")
    results = run_experiment(make_config(TINY_OVERRIDES), tmp_path / "run")
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    assert record["status"] == "complete" and record["eval_set"]["hash"].endswith("-first8")
    assert record["adapter"]["hash"] and record["model"]["hash"] and record["metrics"]["library_versions"]["trl"]
    assert len(record["stages"]["sft"]["heldout"]["per_example"]) == 8
    assert record["canary"]["max_logit_diff"] > 0
    assert "⟦" in (tmp_path / "run" / "chat_template_sample.txt").read_text()
    assert "base zero-shot" in summary_table(results)


def _cli(args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, env=env, capture_output=True, text=True)


def test_cli_bad_data_exits_2_naming_the_line_and_leaves_no_run_dir(tmp_path):
    bad = tmp_path / "train.jsonl"
    good = json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})
    bad.write_text(good + "\n" + '{"messages": [}\n')
    runs = tmp_path / "runs"
    result = _cli(["model=tiny", f"data.sft_file={bad}", f"hydra.run.dir={runs}/x"], cwd=REPO_ROOT)
    assert result.returncode == 2
    assert f"{bad}:2: malformed JSON" in result.stderr
    assert not runs.exists() or not any(runs.iterdir())


def test_cli_unknown_key_fails_naming_it(tmp_path):
    result = _cli(["model=tiny", "lora.rank=8", f"hydra.run.dir={tmp_path}/x"], cwd=REPO_ROOT)
    assert result.returncode != 0 and "rank" in result.stderr
    assert not (tmp_path / "x").exists()


def test_evalset_cli_check_exits_2_on_a_changed_set(tmp_path):
    shutil.copytree(REPO_ROOT / "evals" / "json_extract", tmp_path / "json_extract")
    path = tmp_path / "json_extract" / "heldout.jsonl"
    overrides = [f"eval.data_file={path}", f"eval.manifest={tmp_path / 'json_extract' / 'manifest.json'}"]
    # A copied eval set (data and manifest) re-freezes where it is; then only the content edit below can make the
    # check fail.
    eval_cfg = make_config(overrides).eval
    freeze(eval_cfg)
    verify_frozen(eval_cfg)
    text = path.read_text()
    assert "Bruges" in text
    path.write_text(text.replace("Bruges", "Brugge", 1))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "harness.evalset", "check", *overrides],
        check=False, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
    )
    assert result.returncode == 2, result.stderr
    assert "differs from its frozen manifest (changed: data_sha256;" in result.stderr


@pytest.mark.parametrize("case", ["input_error", "sweep", "dot_with_chdir", "sweep_with_chdir"])
def test_cli_never_removes_a_users_files_from_the_run_dir(tmp_path, case):
    # The run directory as an existing folder, as `.` (the directory the user is in, e.g. the checkout) with
    # hydra.job.chdir=true, and for an input error and a whole sweep: the user's file survives every one.
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "important.txt").write_text("precious")
    sweep = [*TINY_CLI, "+sweep=rank", "sweep.space.lora_r=[2]", "sweep.tracking=none",
             f"sweep.sweeps_dir={tmp_path / 'sweeps'}"]
    if case == "input_error":
        result = _cli(["model=tiny", "lora.r=0", f"hydra.run.dir={victim}"], cwd=REPO_ROOT)
    elif case == "dot_with_chdir":
        result = _cli(["model=tiny", "lora.r=0", "hydra.run.dir=.", "hydra.job.chdir=true"], cwd=victim)
    elif case == "sweep_with_chdir":
        result = _cli([*sweep, f"hydra.run.dir={victim}", "hydra.job.chdir=true"], cwd=REPO_ROOT)
    else:
        result = _cli([*sweep, f"hydra.run.dir={victim}"], cwd=REPO_ROOT)
    if case in ("input_error", "dot_with_chdir"):
        assert result.returncode == 2 and "lora.r" in result.stderr, result.stderr[-2000:]
    else:
        assert result.returncode == 0, result.stderr[-2000:]
    assert (victim / "important.txt").read_text() == "precious"
    assert sorted(p.name for p in victim.iterdir()) == ["important.txt"]  # what Hydra wrote is cleaned up


TINY_CLI = ["model=tiny", "quant=none", "run_regression=false", "train.sft.max_steps=2", "train.sft.batch_size=4",
            "data.max_sft_examples=16", "eval.max_examples=8"]
