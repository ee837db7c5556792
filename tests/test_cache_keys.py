"""The baseline cache key: every ingredient that changes the base model's numbers changes the key, so a cache hit
is never a stale number (one test per ingredient)."""

from __future__ import annotations

import copy
import shutil
from dataclasses import replace

import pytest

import harness.baselines
import harness.benchmarks
from harness.artifacts import REPO_ROOT
from harness.baselines import baseline_key, fewshot_examples
from harness.data import Conversation
from harness.model import BaseModel
from tests.conftest import make_config

SHOTS = [Conversation([{"role": "user", "content": "Text: Ann, 30."}, {"role": "assistant", "content": "{}"}], "t:1")]


@pytest.fixture
def base(tokenizer) -> BaseModel:
    return BaseModel(model=None, tokenizer=tokenizer, model_dir=REPO_ROOT, model_id="tiny", model_hash="m" * 16,
                     device="cpu", compute_dtype="torch.float32", quantized=True, attn_implementation="sdpa")


@pytest.fixture
def cfg():
    return make_config(["model=tiny", "run_regression=false"])


def test_same_ingredients_same_key(base, cfg):
    assert baseline_key(base, cfg, "h-selection", SHOTS) == baseline_key(base, cfg, "h-selection", list(SHOTS))


def test_base_model_content_changes_the_key(base, cfg):
    assert baseline_key(replace(base, model_hash="n" * 16), cfg, "h", SHOTS) != baseline_key(base, cfg, "h", SHOTS)


def test_chat_template_changes_the_key(base, cfg):
    other = copy.deepcopy(base.tokenizer)
    other.chat_template = base.tokenizer.chat_template.replace("<|im_start|>", "<|im_begin|>")
    assert baseline_key(replace(base, tokenizer=other), cfg, "h", SHOTS) != baseline_key(base, cfg, "h", SHOTS)


def test_eval_set_split_changes_the_key(base, cfg):
    assert baseline_key(base, cfg, "h-selection", SHOTS) != baseline_key(base, cfg, "h-reporting", SHOTS)


def test_fewshot_examples_change_the_key(base, cfg):
    edited = [Conversation([{"role": "user", "content": "Text: Ann, 31."}, {"role": "assistant", "content": "{}"}],
                           "t:1")]
    assert baseline_key(base, cfg, "h", edited) != baseline_key(base, cfg, "h", SHOTS)
    # train=dpo has no SFT file to take shots from: its prompt baseline is zero-shot, and so is its key.
    assert fewshot_examples(cfg, []) == []
    assert baseline_key(base, cfg, "h", []) != baseline_key(base, cfg, "h", SHOTS)


def test_generation_settings_change_the_key(base, cfg):
    longer = replace(cfg, eval=replace(cfg.eval, generation=replace(cfg.eval.generation, max_new_tokens=99)))
    assert baseline_key(base, longer, "h", SHOTS) != baseline_key(base, cfg, "h", SHOTS)


def test_library_versions_change_the_key(base, cfg, monkeypatch):
    before = baseline_key(base, cfg, "h", SHOTS)
    real = harness.artifacts.library_versions
    monkeypatch.setattr("harness.artifacts.library_versions", lambda: {**real(), "lm_eval": "0.0.1"})
    assert baseline_key(base, cfg, "h", SHOTS) != before


def test_editing_a_regression_tasks_data_changes_the_key(base, tmp_path, monkeypatch):
    tasks = tmp_path / "regression"
    shutil.copytree(REPO_ROOT / "evals" / "regression" / "harness_general_mc", tasks / "harness_general_mc")
    monkeypatch.setattr(harness.benchmarks, "REGRESSION_TASKS_DIR", tasks)
    harness.benchmarks.task_manager.cache_clear()
    try:
        cfg = make_config(["model=tiny", "run_regression=true", "eval.regression=[{task: harness_general_mc}]"])
        before = baseline_key(base, cfg, "h", SHOTS)
        data = tasks / "harness_general_mc" / "harness_general_mc.jsonl"
        lines = data.read_text().splitlines()
        data.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")  # same rows, another order
        assert baseline_key(base, cfg, "h", SHOTS) != before
        edited = baseline_key(base, cfg, "h", SHOTS)
        yaml = tasks / "harness_general_mc" / "harness_general_mc.yaml"
        yaml.write_text(yaml.read_text().replace('Answer:"', 'Answer :"'))
        assert baseline_key(base, cfg, "h", SHOTS) != edited, "a prompt edit changes it too"
        assert baseline_key(base, replace(cfg, run_regression=False), "h", SHOTS) != before
    finally:
        harness.benchmarks.task_manager.cache_clear()


def test_local_benchmark_data_changes_the_key_and_its_path_spelling_does_not(base, tmp_path, monkeypatch):
    data = tmp_path / "arc.jsonl"
    shutil.copy(REPO_ROOT / "tests" / "benchmarks_local" / "arc_easy_test.jsonl", data)
    monkeypatch.chdir(tmp_path)

    def key(path: str, **settings) -> str:
        benchmark = {"task": "arc_easy", "data_files": {"test": path}, **settings}
        cfg = make_config(["model=tiny", "run_regression=true", f"eval.regression=[{benchmark}]".replace("'", "")])
        return baseline_key(base, cfg, "h", SHOTS)

    before = key(str(data))
    assert key("arc.jsonl") == key("./arc.jsonl") == before, "the same file spelled another way is the same key"
    assert key(str(data), num_fewshot=0) != before and key(str(data), apply_chat_template=False) != before
    assert key(str(data), max_gen_toks=9) != before and key(str(data), batch_size=3) != before
    lines = data.read_text().splitlines()
    data.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")  # same rows, another order
    assert key(str(data)) != before


def test_a_cache_entry_gains_the_baselines_a_later_caller_needs_and_returns_only_what_was_asked(
        tiny_base, monkeypatch, tmp_path):
    # A sweep asks for zero-shot on the selection split; a single run on the same key asks for both. The second
    # computes only the prompt baseline, the zero-shot result comes from the cache, and a record never carries a
    # baseline its caller did not ask for (so it does not depend on what ran before).
    from harness.baselines import SELECTION_BASELINES, get_baselines
    from harness.evaluate import load_heldout

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    cfg = make_config(["model=tiny", "run_regression=false", "eval.max_examples=4"])
    heldout = load_heldout(cfg.eval)[:4]
    computed = []
    real = harness.baselines.evaluate_heldout

    def counting(model, tokenizer, eval_cfg, examples, system_prompt="", fewshot=None):
        computed.append("prompt_baseline" if fewshot else "zero_shot")
        return real(model, tokenizer, eval_cfg, examples, system_prompt, fewshot)

    monkeypatch.setattr(harness.baselines, "evaluate_heldout", counting)
    first = get_baselines(tiny_base, cfg, "h-selection", heldout, list(SHOTS), which=SELECTION_BASELINES)
    assert computed == ["zero_shot"] and first.prompt_baseline is None and not first.cached
    both = get_baselines(tiny_base, cfg, "h-selection", heldout, list(SHOTS))
    assert computed == ["zero_shot", "prompt_baseline"] and not both.cached
    assert both.zero_shot == first.zero_shot and both.prompt_baseline.n == 4
    again = get_baselines(tiny_base, cfg, "h-selection", heldout, list(SHOTS), which=SELECTION_BASELINES)
    assert computed == ["zero_shot", "prompt_baseline"] and again.cached
    assert again.prompt_baseline is None and again.zero_shot == first.zero_shot
    with pytest.raises(ValueError, match="unknown baselines"):
        get_baselines(tiny_base, cfg, "h-selection", heldout, list(SHOTS), which=("zero-shot",))
