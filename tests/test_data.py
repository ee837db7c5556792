"""Training data checks: file:line errors, the chat-template guard, and the assistant-only loss mask."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from harness.artifacts import REPO_ROOT
from harness.config import DataConfig
from harness.data import (
    LOSS_CLOSE,
    LOSS_OPEN,
    Conversation,
    DataError,
    check_chat_template,
    load_sft_data,
    render_loss_sample,
    tokenize_conversation,
)

GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}


def _write(tmp_path, lines: list[str]):
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_malformed_jsonl_fails_naming_file_and_line(tmp_path):
    path = _write(tmp_path, [json.dumps(GOOD), json.dumps(GOOD), '{"messages": [oops'])
    with pytest.raises(DataError, match=rf"{path}:3: malformed JSON"):
        load_sft_data(DataConfig(sft_file=str(path)))


@pytest.mark.parametrize(
    "row, message",
    [
        ({"text": "hi"}, "missing field 'messages'"),
        ({"messages": []}, "non-empty list"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "unknown role 'robot'"),
        ({"messages": [{"role": "user", "content": "x"}]}, "no assistant message"),
        ({"messages": [{"role": "user"}]}, "'role' and 'content'"),
    ],
)
def test_bad_rows_fail_naming_the_line(tmp_path, row, message):
    path = _write(tmp_path, [json.dumps(GOOD), json.dumps(row)])
    with pytest.raises(DataError) as err:
        load_sft_data(DataConfig(sft_file=str(path)))
    assert f"{path}:2" in str(err.value) and message in str(err.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: file not found"):
        load_sft_data(DataConfig(sft_file=str(tmp_path / "nope.jsonl")))


def test_duplicates_are_removed_and_counted(tmp_path):
    path = _write(tmp_path, [json.dumps(GOOD)] * 3)
    data = load_sft_data(DataConfig(sft_file=str(path)))
    assert len(data.conversations) == 1 and data.duplicates_removed == 2 and data.rows_read == 3


def test_loss_mask_covers_assistant_tokens_only(tokenizer):
    messages = [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "six"},
    ]
    example = tokenize_conversation(tokenizer, messages, max_length=512)
    masked = [t for t, m in zip(example.input_ids, example.assistant_masks) if m]
    unmasked = [t for t, m in zip(example.input_ids, example.assistant_masks) if not m]
    assert tokenizer.decode(masked) == "4<|im_end|>\nsix<|im_end|>\n"
    assert "What is 2+2?" in tokenizer.decode(unmasked) and "<|im_start|>assistant" in tokenizer.decode(unmasked)
    sample = render_loss_sample(tokenizer, example)
    assert sample.count(LOSS_OPEN) == 2 and sample.count(LOSS_CLOSE) == 2
    assert f"{LOSS_OPEN}4<|im_end|>\n{LOSS_CLOSE}" in sample


def test_truncation_keeps_the_mask_aligned(tokenizer):
    messages = [{"role": "user", "content": "word " * 50}, {"role": "assistant", "content": "ok"}]
    example = tokenize_conversation(tokenizer, messages, max_length=20)
    assert len(example.input_ids) == len(example.assistant_masks) == 20
    assert example.truncated and not any(example.assistant_masks)


@pytest.mark.parametrize("marker", ["[INST]", "<|start_header_id|>", "<start_of_turn>"])
def test_chat_template_check_refuses_foreign_role_markers(tokenizer, marker):
    bad = Conversation(
        [{"role": "user", "content": f"{marker} hello"}, {"role": "assistant", "content": "hi"}], "x.jsonl:7"
    )
    with pytest.raises(DataError, match=r"x\.jsonl:7: .*another model family"):
        check_chat_template(tokenizer, [Conversation(GOOD["messages"], "x.jsonl:1"), bad])


def test_chat_template_check_refuses_pretemplated_text(tokenizer):
    bad = Conversation([{"role": "user", "content": "<|im_start|>user\nhi"}, {"role": "assistant", "content": "x"}],
                       "x.jsonl:2")
    with pytest.raises(DataError, match="this model's own role marker"):
        check_chat_template(tokenizer, [bad])


def test_chat_template_check_refuses_a_tokenizer_without_template(tokenizer):
    import copy

    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    with pytest.raises(DataError, match="no chat template"):
        check_chat_template(plain, [Conversation(GOOD["messages"], "x.jsonl:1")])


def test_default_task_data_is_regenerated_identically():
    script = REPO_ROOT / "evals" / "json_extract" / "generate.py"
    result = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_training_entities_never_appear_in_the_heldout_set():
    sys.path.insert(0, str(REPO_ROOT / "evals" / "json_extract"))
    try:
        import generate
    finally:
        sys.path.pop(0)
    assert not set(generate.TRAIN_FIRST) & set(generate.HELDOUT_FIRST)
    assert not set(generate.TRAIN_LAST) & set(generate.HELDOUT_LAST)
    assert not set(generate.TRAIN_CITIES) & set(generate.HELDOUT_CITIES)
    heldout_names = {
        json.loads(line)["reference"]["name"]
        for line in (REPO_ROOT / "evals/json_extract/heldout.jsonl").read_text().splitlines()
    }
    train_text = (REPO_ROOT / "evals/json_extract/sft_train.jsonl").read_text()
    assert len(heldout_names) > 100
    assert not [name for name in heldout_names if name in train_text]
