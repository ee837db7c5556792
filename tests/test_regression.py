"""harness.regression: the project's lm-eval tasks, their rule checkers, and run_regression's numbers."""

from __future__ import annotations

import copy
import importlib.util
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from harness.regression import REGRESSION_TASKS_DIR, RegressionScore, regression_task_versions, run_regression


# --- fixtures: the real SmolLM2 tokenizer (tests/conftest.py) and a tiny random llama ---------------------
@pytest.fixture(scope="module")
def tiny_model(tokenizer):
    torch.manual_seed(0)
    config = LlamaConfig(
        num_hidden_layers=2,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
    )
    return LlamaForCausalLM(config).eval()


# ---------------------------------------------------------------------------------------------------------
MC_TASK_DIR = REGRESSION_TASKS_DIR / "harness_general_mc"


def _load_instruct_follow_utils():
    path = REGRESSION_TASKS_DIR / "harness_instruct_follow" / "utils.py"
    spec = importlib.util.spec_from_file_location("harness_instruct_follow_utils", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


follow_utils = _load_instruct_follow_utils()


def test_run_regression_matches_lm_eval_called_directly(tiny_model, tokenizer, tmp_path, monkeypatch):
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    # run_regression from an unrelated cwd: the task's relative data_files must still resolve.
    monkeypatch.chdir(tmp_path)
    scores = run_regression(tiny_model, tokenizer, ["harness_general_mc"], batch_size=4, limit=20)
    score = scores["harness_general_mc"]

    # lm-eval itself reads data_files relative to the cwd, so call it from the task's folder.
    monkeypatch.chdir(MC_TASK_DIR)
    direct = lm_eval.simple_evaluate(
        model=HFLM(pretrained=tiny_model, tokenizer=tokenizer, batch_size=4),
        tasks=["harness_general_mc"],
        task_manager=TaskManager(include_path=str(REGRESSION_TASKS_DIR)),
        limit=20,
        log_samples=True,
        apply_chat_template=True,
    )
    expected = direct["results"]["harness_general_mc"]
    direct_samples = sorted(direct["samples"]["harness_general_mc"], key=lambda s: s["doc_id"])
    expected_per_doc = [s["acc"] for s in direct_samples]

    assert isinstance(score, RegressionScore)
    assert score.metric == "acc"
    assert score.n == 20
    assert score.score == expected["acc,none"]
    assert score.stderr == expected["acc_stderr,none"]
    assert score.per_example == expected_per_doc
    assert math.isclose(sum(score.per_example) / score.n, score.score)
    assert score.task_version == "1.0" == str(direct["versions"]["harness_general_mc"])


@pytest.mark.parametrize(
    ("rule", "params", "good", "bad"),
    [
        ("one_word", {}, "Blue.", "The sky is blue."),
        ("one_word", {}, "**Paris**", ""),
        ("uppercase", {}, "I LIKE APPLES!", "I like apples"),
        ("uppercase", {}, "HELLO, FRIEND", "123"),
        ("lowercase", {}, "tokyo is the capital.", "Tokyo"),
        ("yes_no_start", {}, "No, the Moon is smaller.", "The Moon is not bigger."),
        ("list_n", {"n": 3}, "Fruits:\n1. apple\n2. banana\n\n3. cherry\n", "1. apple\n2. banana"),
        ("list_n", {"n": 2}, "- soccer\n- tennis", "soccer, tennis"),
        ("one_sentence", {}, "A dog is a loyal animal.", "A dog is loyal. It barks."),
        ("one_sentence", {}, "Rain is water that falls from clouds!", "Rain is water that falls from"),
        ("include_word", {"word": "river"}, "We swam in the River.", "We swam in the riverbank pool."),
        ("repeat_exact", {"text": "The cat sat."}, " The cat sat.\n", "The cat sat down."),
        ("end_with_word", {"word": "DONE"}, "Rome is the capital. DONE", "DONE. Rome is the capital."),
        ("end_with_word", {"word": "END"}, "The sun rises in the east END.", "The sun rises in the east."),
        ("start_with_word", {"word": "Certainly"}, "Certainly! Madrid.", "The answer is Madrid. Certainly"),
        ("yes_no", {}, "Yes.", "Yes, the sun is hot."),
        ("yes_no", {}, "no", "maybe"),
        ("max_words", {"n": 5}, "A rock orbiting Earth.", "The Moon is a large rock that orbits the Earth."),
        ("number_only", {}, "8", "Eight"),
        ("number_only", {}, " 12.", "12 months"),
        ("wrap_in_quotes", {}, '"Berlin"', "Berlin"),
        ("wrap_in_quotes", {}, "“Good morning!”", '"Good morning!" she said.'),
    ],
)
def test_instruct_follow_rules(rule, params, good, bad):
    doc = {"rule": rule, "params": params}
    assert follow_utils.process_results(doc, [good]) == {"follow": 1}
    assert follow_utils.process_results(doc, [bad]) == {"follow": 0}


def test_instruct_follow_data_uses_only_known_rules():
    import json

    path = REGRESSION_TASKS_DIR / "harness_instruct_follow" / "harness_instruct_follow.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(rows) >= 60
    assert {row["rule"] for row in rows} <= set(follow_utils.CHECKS)
    with pytest.raises(ValueError, match="no_such_rule"):
        follow_utils.follows_rule("no_such_rule", {}, "anything")


def test_general_mc_data_is_well_formed():
    import json

    rows = [json.loads(line) for line in (MC_TASK_DIR / "harness_general_mc.jsonl").read_text().splitlines()]
    assert len(rows) >= 150
    for row in rows:
        assert len(row["choices"]) == 4 == len(set(row["choices"])), row["id"]
        assert 0 <= row["label"] < 4, row["id"]


def test_unknown_task_raises_naming_it(tiny_model, tokenizer):
    with pytest.raises(ValueError, match="harness_no_such_task"):
        run_regression(tiny_model, tokenizer, ["harness_no_such_task"], limit=2)


def test_regression_task_versions():
    versions = regression_task_versions(["harness_general_mc", "harness_instruct_follow"])
    assert versions == {"harness_general_mc": "1.0", "harness_instruct_follow": "1.0"}


def test_peft_model_runs_and_keeps_training_mode(tiny_model, tokenizer):
    from peft import LoraConfig, get_peft_model

    base = run_regression(tiny_model, tokenizer, ["harness_general_mc"], batch_size=4, limit=8)
    # A fresh LoRA adapter starts as a no-op (B = 0), so it must score exactly like its base model.
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    peft_model = get_peft_model(copy.deepcopy(tiny_model), lora)
    peft_model.train()
    adapted = run_regression(peft_model, tokenizer, ["harness_general_mc"], batch_size=4, limit=8)

    assert adapted["harness_general_mc"].per_example == base["harness_general_mc"].per_example
    assert peft_model.training, "run_regression must leave the caller's train/eval mode as it was"
