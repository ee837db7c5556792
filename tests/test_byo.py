"""Bring your own data: every failure class of issue 14 on a small fixture, and each format accepted.

Tokenizer only (no model weights) except where a CLI is started; each CLI test asserts exit 2, one `error:` line
naming the file:line or dotted key, no traceback and nothing written.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace

import pytest

from harness.config import DataConfig, EvalConfig, LeakageConfig
from harness.data import (
    Conversation,
    DataError,
    load_preference_data,
    load_sft_data,
    read_jsonl,
    tokenize_conversation,
)
from harness.eval_data import load_eval_rows
from harness.graders import GraderConfig
from harness.leakage import check_leakage
from tests.conftest import make_config

USER, ASSISTANT = {"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}
GOOD = {"messages": [USER, ASSISTANT]}


def _jsonl(tmp_path, rows, name="train.jsonl"):
    if name == "eval.jsonl":  # every eval row names its split; alternate so that both splits have rows
        rows = [{**row, "split": ("selection", "reporting")[index % 2]} if isinstance(row, dict) else row
                for index, row in enumerate(rows)]
    path = tmp_path / name
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows),
                    encoding="utf-8")
    return path


def _sft(path, **kwargs):
    return load_sft_data(DataConfig(sft_file=str(path), **kwargs))


def _cli(args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, check=False)


def _assert_clean_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


# ---------------------------------------------------------------------------------------------------------
# Training numbers, unknown keys, dotted keys, valid input that was refused


@pytest.mark.parametrize("override, key", [
    ("train.sft.learning_rate=0", "train.sft.learning_rate"),
    ("train.sft.learning_rate=-1e-4", "train.sft.learning_rate"),
    ("train.sft.learning_rate=nan", "train.sft.learning_rate"),
    ("train.sft.learning_rate=inf", "train.sft.learning_rate"),
    ("train.sft.epochs=0", "train.sft.epochs"),
    ("train.sft.batch_size=0", "train.sft.batch_size"),
    ("train.sft.grad_accum=0", "train.sft.grad_accum"),
    ("train.sft.max_length=-5", "train.sft.max_length"),
    ("train.sft.warmup_ratio=1.5", "train.sft.warmup_ratio"),
    ("train.dpo.learning_rate=nan", "train.dpo.learning_rate"),
    ("train.dpo.max_length=0", "train.dpo.max_length"),
    ("train.dpo.beta=inf", "train.dpo.beta"),
])
def test_training_numbers_out_of_range_name_the_dotted_key(override, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.") + "="):
        make_config([override])


@pytest.mark.parametrize("override, key", [("+lora.pork=1", "lora.pork"), ("++train.sft.lr=1", "train.sft.lr"),
                                           ("+pork=1", "pork")])
def test_added_unknown_keys_are_refused_naming_the_dotted_key(override, key):
    with pytest.raises(ValueError, match="^" + re.escape(key) + ": unknown key"):
        make_config([override])


def test_target_modules_as_a_plain_string_is_accepted():
    assert make_config(["lora.target_modules=all-linear"]).lora.target_modules == ["all-linear"]
    assert make_config(["lora.target_modules=q_proj"]).lora.target_modules == ["q_proj"]


def test_name_or_path_without_model_hf_is_refused():
    with pytest.raises(ValueError, match=r"model\.name_or_path='/models/mine' is only loaded with model=hf"):
        make_config(["model.name_or_path=/models/mine"])


# ---------------------------------------------------------------------------------------------------------
# Encodings and characters: file:line errors (physical lines), valid input accepted


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n")
    assert len(_sft(path).conversations) == 1


def test_utf16_is_refused(tmp_path):
    path = tmp_path / "u16.jsonl"
    path.write_bytes((json.dumps(GOOD) + "\n").encode("utf-16"))
    with pytest.raises(DataError, match=rf"{path}:1: .*UTF-16"):
        read_jsonl(path)


def test_invalid_utf8_names_the_physical_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    # line 2 is blank, line 3 holds a string containing U+2028 (not a JSONL line break), line 4 is not UTF-8
    line3 = json.dumps({"messages": [{"role": "user", "content": "a\u2028b"}, ASSISTANT]}, ensure_ascii=False)
    path.write_bytes(json.dumps(GOOD).encode() + b"\n\n" + line3.encode() + b"\n" + b'{"x": "\xff"}\n')
    with pytest.raises(DataError, match=rf"{path}:4: invalid UTF-8"):
        read_jsonl(path)


@pytest.mark.parametrize("content, message", [
    ("a\\u0000b", "NUL"), ("a\\u0007b", "control character"), ("a\\ud800b", "lone surrogate"),
])
def test_bad_characters_are_refused(tmp_path, content, message):
    line = '{"messages": [{"role": "user", "content": "CONTENT"}, {"role": "assistant", "content": "x"}]}'
    path = _jsonl(tmp_path, [GOOD, line.replace("CONTENT", content)])
    with pytest.raises(DataError, match=rf"{path}:2: messages\[0\]\.content contains .*{message}"):
        read_jsonl(path)


def test_tabs_and_newlines_in_text_are_kept(tmp_path):
    row = {"messages": [{"role": "user", "content": "a\tb\nc\r\nd"}, ASSISTANT]}
    assert _sft(_jsonl(tmp_path, [row])).conversations[0].messages[0].content == "a\tb\nc\r\nd"


@pytest.mark.parametrize("line, message", [
    ('{"messages": [], "messages": []}', "key 'messages' appears twice"),
    ('{"x": NaN}', "NaN is not valid JSON"),
])
def test_duplicate_keys_and_nan_are_refused(tmp_path, line, message):
    path = _jsonl(tmp_path, [GOOD, line])
    with pytest.raises(DataError, match=rf"{path}:2: {message}"):
        read_jsonl(path)


# ---------------------------------------------------------------------------------------------------------
# Rows without a training signal; silent data changes now warned


@pytest.mark.parametrize("messages, message", [
    ([USER, ASSISTANT, USER], "ends with a user turn"),
    ([USER, {"role": "assistant", "content": ""}], "empty or whitespace only"),
    ([USER, {"role": "assistant", "content": "  \n"}], "empty or whitespace only"),
    ([{"role": "system", "content": "s"}, ASSISTANT], "no user turn"),
])
def test_rows_without_training_signal_are_refused(tmp_path, messages, message):
    path = _jsonl(tmp_path, [GOOD, {"messages": messages}])
    with pytest.raises(DataError, match=rf"{path}:2: .*{message}"):
        _sft(path)


def test_duplicates_are_removed_with_a_warning_naming_the_kept_copy(tmp_path):
    path = _jsonl(tmp_path, [GOOD, {"messages": [USER, {"role": "assistant", "content": "other"}]}, GOOD])
    data = _sft(path)
    assert data.duplicates_removed == 1 and len(data.conversations) == 2
    expected = f"duplicate of {path}:1, removed (data.dedupe=true)"
    assert [(w.source, w.message) for w in data.warnings] == [(f"{path}:3", expected)]


def test_truncated_and_dropped_rows_are_warned_in_the_card(tmp_path, tokenizer, capsys):
    from harness.run import prepare_inputs

    long_prompt = {"messages": [{"role": "user", "content": "word " * 300}, ASSISTANT]}
    long_answer = {"messages": [USER, {"role": "assistant", "content": "word " * 300}]}
    path = _jsonl(tmp_path, [GOOD, long_prompt, long_answer])
    inputs = prepare_inputs(make_config(["model=tiny", f"data.sft_file={path}", "train.sft.max_length=64"]))
    card = inputs.card
    assert card.sft_rows == 3 and card.sft_examples == 2 and card.sft_dropped_for_length == 1
    assert card.sft_truncated == 1
    messages = {w.source: w.message for w in card.warnings}
    assert messages[f"{path}:2"].startswith("dropped: no assistant token within train.sft.max_length=64")
    assert messages[f"{path}:3"] == "truncated to train.sft.max_length=64 tokens"
    printed = capsys.readouterr().out  # a normal run prints the card before any weight loads
    assert "data card" in printed and f"warning: {path}:2: dropped" in printed


def test_chat_template_rejection_is_a_file_line_error(tokenizer):
    import copy

    strict = copy.deepcopy(tokenizer)
    strict.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' and not loop.first %}"
                            "{{ raise_exception('system only first') }}{% endif %}{{ m['content'] }}{% endfor %}")
    messages = [USER, {"role": "system", "content": "late"}, ASSISTANT]
    with pytest.raises(DataError, match=r"x\.jsonl:4: the model's chat template rejects this conversation: "
                                        "system only first"):
        tokenize_conversation(strict, Conversation(messages, "x").messages, 64, "x.jsonl:4")


# ---------------------------------------------------------------------------------------------------------
# Formats


FORMAT_ROWS = {
    "messages": {"messages": [USER, ASSISTANT]},
    "sharegpt": {"conversations": [{"from": "human", "value": "Hi there"}, {"from": "gpt", "value": "Hello!"}]},
    "alpaca": {"instruction": "Hi there", "input": "", "output": "Hello!"},
    "prompt_completion": {"prompt": "Hi there", "completion": "Hello!"},
}


@pytest.mark.parametrize("fmt", list(FORMAT_ROWS))
def test_each_format_is_detected_and_gives_the_same_conversation(tmp_path, fmt):
    data = _sft(_jsonl(tmp_path, [FORMAT_ROWS[fmt]]))
    assert data.format == fmt
    assert [(m.role, m.content) for m in data.conversations[0].messages] == [("user", "Hi there"),
                                                                             ("assistant", "Hello!")]
    assert _sft(_jsonl(tmp_path, [FORMAT_ROWS[fmt]]), format=fmt).format == fmt


def test_alpaca_input_and_conversational_prompt_completion(tmp_path):
    alpaca = _sft(_jsonl(tmp_path, [{"instruction": "Translate", "input": "chat", "output": "cat"}]))
    assert alpaca.conversations[0].messages[0].content == "Translate\n\nchat"
    pc = _sft(_jsonl(tmp_path, [{"prompt": [USER], "completion": [ASSISTANT]}]))
    assert [m.role for m in pc.conversations[0].messages] == ["user", "assistant"]


def test_mixed_formats_in_one_file_are_refused(tmp_path):
    path = _jsonl(tmp_path, [FORMAT_ROWS["messages"], FORMAT_ROWS["alpaca"]])
    with pytest.raises(DataError, match=rf"{path}:2: missing field 'messages' .*looks like alpaca"):
        _sft(path)


def test_explicit_format_that_does_not_match_names_the_field(tmp_path):
    path = _jsonl(tmp_path, [FORMAT_ROWS["messages"]])
    with pytest.raises(DataError, match=rf"{path}:1: missing field 'conversations' for data.format=sharegpt"):
        _sft(path, format="sharegpt")


def test_unknown_format_and_sharegpt_speaker_are_refused(tmp_path):
    with pytest.raises(DataError, match="cannot tell the row format"):
        _sft(_jsonl(tmp_path, [{"text": "hello"}]))
    bad = {"conversations": [{"from": "human", "value": "a"}, {"from": "robot", "value": "b"}]}
    with pytest.raises(DataError, match=r":1: conversations\[1\]\.from is 'robot'"):
        _sft(_jsonl(tmp_path, [bad]))
    with pytest.raises(ValueError, match="data.format='csv'"):
        DataConfig(format="csv")


def test_unused_fields_are_warned_once(tmp_path):
    path = _jsonl(tmp_path, [{**FORMAT_ROWS["alpaca"], "inpt": "typo"}, {**FORMAT_ROWS["alpaca"], "output": "x"}])
    assert [w.message for w in _sft(path).warnings] == [
        "field 'inpt' is not part of data.format=alpaca and is ignored"]


@pytest.mark.parametrize("row", [
    {"prompt": "Q?", "chosen": "good", "rejected": "bad"},
    {"prompt": [{"role": "user", "content": "Q?"}], "chosen": [{"role": "assistant", "content": "good"}],
     "rejected": [{"role": "assistant", "content": "bad"}]},
    {"chosen": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "good"}],
     "rejected": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "bad"}]},
], ids=["plain", "conversational", "implicit_prompt"])
def test_preference_forms_are_accepted(tmp_path, row):
    data = load_preference_data(DataConfig(preference_file=str(_jsonl(tmp_path, [row, row]))))
    assert len(data.pairs) == 1 and data.duplicates_removed == 1 and data.warnings
    assert data.pairs[0].prompt_messages[-1].content == "Q?"


# ---------------------------------------------------------------------------------------------------------
# Eval rows: configurable fields, gold answers checked at load time, duplicates and conflicts


def test_eval_fields_are_configurable(tmp_path):
    path = _jsonl(tmp_path, [{"question": "2+2?", "answer": "4"}], "eval.jsonl")
    rows = load_eval_rows(EvalConfig(data_file=str(path), prompt_field="question", reference_field="answer",
                                     graders=[GraderConfig(type="numeric")]))
    assert rows.examples[0].messages[0].content == "2+2?" and rows.examples[0].reference == "4"


def test_eval_rows_in_a_training_format_take_the_last_answer_as_gold(tmp_path):
    path = _jsonl(tmp_path, [{"instruction": "2+2?", "output": "4"}], "eval.jsonl")
    rows = load_eval_rows(EvalConfig(data_file=str(path), graders=[GraderConfig(type="exact_match")]))
    assert rows.examples[0].reference == "4" and rows.examples[0].messages[-1].role == "user"


@pytest.mark.parametrize("grader, good, gold, message", [
    (GraderConfig(type="json_fields", fields=["name"]), {"name": "x"}, '{"name": ', "not valid JSON"),
    (GraderConfig(type="json_fields", fields=["name"]), '{"name": "x"}', {"nom": "x"}, "missing from the reference"),
    (GraderConfig(type="multiple_choice", choices="ABCD"), "B", "E", "not in GraderConfig.choices"),
    (GraderConfig(type="numeric"), "1,000", "four", "is not a number"),
    (GraderConfig(type="exact_match"), "A", {"a": 1}, "cannot compare with text"),
    (GraderConfig(type="exact_match"), 7, None, "is null"),
    (GraderConfig(type="numeric"), 7, "", "is not a number"),
])
def test_malformed_gold_answers_fail_at_load_naming_the_line(tmp_path, grader, good, gold, message):
    path = _jsonl(tmp_path, [{"messages": [USER], "reference": good},
                             {"messages": [{"role": "user", "content": "q2"}], "reference": gold}], "eval.jsonl")
    with pytest.raises(DataError, match=rf"{path}:2: .*{message}"):
        load_eval_rows(EvalConfig(data_file=str(path), graders=[grader]))


def test_mistyped_gold_field_is_refused_and_extra_fields_warned(tmp_path):
    path = _jsonl(tmp_path, [{"messages": [USER], "refernce": "x"}], "eval.jsonl")
    with pytest.raises(DataError, match=rf"{path}:1: missing field 'reference'"):
        load_eval_rows(EvalConfig(data_file=str(path), graders=[GraderConfig()]))
    path = _jsonl(tmp_path, [{"messages": [USER], "reference": "x", "refrence_alt": "y"}], "eval.jsonl")
    rows = load_eval_rows(EvalConfig(data_file=str(path), graders=[GraderConfig()]))
    assert "field 'refrence_alt' is ignored" in rows.warnings[0].message


def test_eval_duplicates_are_removed_and_conflicting_golds_refused(tmp_path):
    row = {"messages": [USER], "reference": "x"}
    path = _jsonl(tmp_path, [row, {"messages": [{"role": "user", "content": "q"}], "reference": "y"}, row],
                  "eval.jsonl")
    rows = load_eval_rows(EvalConfig(data_file=str(path), graders=[GraderConfig()]))
    assert len(rows.examples) == 2 and rows.duplicates_removed == 1
    assert rows.warnings[0].source == f"{path}:3" and f"of {path}:1" in rows.warnings[0].message
    path = _jsonl(tmp_path, [row, row], "eval.jsonl")  # one in each split: kept, with a warning
    rows = load_eval_rows(EvalConfig(data_file=str(path), graders=[GraderConfig()]))
    assert len(rows.examples) == 2 and "in both the selection and the reporting split" in rows.warnings[0].message
    path = _jsonl(tmp_path, [row, {**row, "reference": "z"}], "eval.jsonl")
    with pytest.raises(DataError, match=rf"{path}:2: the same prompt as {path}:1 with a different gold answer"):
        load_eval_rows(EvalConfig(data_file=str(path), graders=[GraderConfig()]))


# ---------------------------------------------------------------------------------------------------------
# Leakage


def test_short_prompts_and_small_eval_sets_still_detect_leakage():
    cfg = LeakageConfig(max_overlap_fraction=1.0)
    heldout = [("h:1", "Name a red fruit please."), ("h:2", "How many legs has a spider?")]
    report = check_leakage([("t:1", "Question: name a red fruit, please!")], heldout, cfg)
    assert [(e["heldout"], e["train"]) for e in report.examples] == [("h:1", "t:1")]
    words = [" ".join(f"w{i}x{j}" for j in range(20)) for i in range(3)]
    report = check_leakage([("t:1", "intro " + " ".join(words[1].split()[2:17]))],
                           [(f"h:{i}", w) for i, w in enumerate(words)], cfg)
    assert report.ngram_overlaps == 1


def test_system_turn_does_not_hide_an_exact_copy(tmp_path):
    from harness.data import Message
    from harness.run import _prompt_text

    train = _prompt_text([Message("system", "You are helpful."), Message("user", "What is the capital of Peru?")])
    report = check_leakage([("t:1", train)], [("h:1", _prompt_text([Message("user", "What is the capital of Peru?")])),
                                              ("h:2", "Something else entirely here")],
                           LeakageConfig(max_overlap_fraction=1.0))
    assert report.exact_overlaps == 1


# ---------------------------------------------------------------------------------------------------------
# The validate command and the run's precheck: exit codes, one error line, nothing written


@pytest.fixture
def frozen_eval(tmp_path):
    from harness.evalset import freeze

    path = _jsonl(tmp_path, [{"question": f"What is {i}+{i}?", "answer": str(2 * i),
                              "split": "selection" if i < 2 else "reporting"} for i in range(4)], "eval.jsonl")
    overrides = [f"eval.data_file={path}", f"eval.manifest={tmp_path / 'manifest.json'}", "eval.prompt_field=question",
                 "eval.reference_field=answer", "eval.graders=[{type: numeric}]"]
    freeze(make_config(overrides).eval)
    return overrides


def test_validate_prints_the_card_and_writes_nothing(tmp_path, frozen_eval):
    sharegpt = _jsonl(tmp_path, [FORMAT_ROWS["sharegpt"], FORMAT_ROWS["sharegpt"]])
    before = sorted(p.name for p in tmp_path.iterdir())
    result = _cli(["validate", "model=tiny", f"data.sft_file={sharegpt}", *frozen_eval], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "(format sharegpt): 2 rows read, 1 duplicates removed" in result.stdout
    assert f"warning: {sharegpt}:2: duplicate of {sharegpt}:1" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_validate_bad_gold_exits_2_naming_the_line(tmp_path, frozen_eval):
    eval_path = tmp_path / "eval.jsonl"
    eval_path.write_text(eval_path.read_text() + json.dumps({"question": "q", "answer": "many", "split": "reporting"})
                         + "\n")
    _assert_clean_error(_cli(["validate", "model=tiny", *frozen_eval], tmp_path), f"{eval_path}:5: ")


@pytest.mark.parametrize("args, fragment", [
    (["validate", "lora.r=["], "cannot parse override 'lora.r=['"),
    (["validate", "+lora.pork=1"], "lora.pork: unknown key"),
    (["validate", "model=hf", "model.name_or_path=/no/such/model"], "model.name_or_path='/no/such/model': no such"),
    (["validate", "model=tiny", "--with-model", "lora.target_modules=[q_proj,qkv]"], "['qkv'] not in the model"),
    (["lora.r=["], "cannot parse override"),
    (["model=hf", "model.name_or_path=/no/such/model"], "no such directory"),
    (["eval.max_examples=-1"], "eval.max_examples=-1"),
    (["eval.generation.batch_size=0"], "eval.generation.batch_size=0"),
    (["train.sft.epochs=0"], "train.sft.epochs=0"),
    (["hydra.run.dir=RUNFILE/sub"], "is a file, so the directory cannot be created"),
])
def test_config_errors_are_one_clean_line_and_no_run_dir(tmp_path, args, fragment):
    (tmp_path / "RUNFILE").write_text("not a directory")
    args = [arg.replace("RUNFILE", str(tmp_path / "RUNFILE")) for arg in args]
    _assert_clean_error(_cli(args, tmp_path), fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RUNFILE"]


def test_replace_keeps_eval_config_fields():
    cfg = replace(EvalConfig(), prompt_field="q")
    assert cfg.prompt_field == "q" and cfg.reference_field == "reference"


def test_openai_text_parts_and_capitalised_sharegpt_speakers_are_accepted(tmp_path):
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
                          ASSISTANT]}
    assert _sft(_jsonl(tmp_path, [parts])).conversations[0].messages[0].content == "Hi there"
    image = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}, ASSISTANT]}
    with pytest.raises(DataError, match=r":1: messages\[0\]\.content: only text content parts"):
        _sft(_jsonl(tmp_path, [image]))
    sharegpt = {"conversations": [{"from": "Human", "value": "a"}, {"from": "GPT", "value": "b"}]}
    assert [m.role for m in _sft(_jsonl(tmp_path, [sharegpt])).conversations[0].messages] == ["user", "assistant"]


def test_a_directory_or_unreadable_path_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="is a directory, not a JSONL file"):
        read_jsonl(tmp_path)
    fifo = tmp_path / "link"
    fifo.symlink_to(tmp_path / "loop")
    (tmp_path / "loop").symlink_to(fifo)
    with pytest.raises(DataError, match="cannot read the file|file not found"):
        read_jsonl(fifo)


def test_preference_pairs_over_max_length_are_warned(tmp_path, capsys):
    from harness.run import prepare_inputs

    rows = [{"prompt": "Q?", "chosen": "good", "rejected": "bad"},
            {"prompt": "long " * 100, "chosen": "good", "rejected": "bad"}]
    path = _jsonl(tmp_path, rows, "prefs.jsonl")
    card = prepare_inputs(make_config(["model=tiny", "train=dpo", f"data.preference_file={path}",
                                       "train.dpo.max_length=32"])).card
    assert [(w.source, w.message.endswith("truncated to train.dpo.max_length=32")) for w in card.warnings] == [
        (f"{path}:2", True)]
    assert f"warning: {path}:2: prompt + chosen is" in capsys.readouterr().out


def test_local_model_directory_must_hold_config_and_safetensors(tmp_path):
    from harness.validate import check_model_source

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    cfg = make_config(["model=hf", f"model.name_or_path={model_dir}"])
    with pytest.raises(ValueError, match="has no config.json"):
        check_model_source(cfg)
    (model_dir / "config.json").write_text("{}")
    (model_dir / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"no \*\.safetensors weights"):
        check_model_source(cfg)


def test_eval_rows_must_name_their_split(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text(json.dumps({"messages": [USER], "reference": "x", "split": "train"}) + "\n")
    from harness.evaluate import load_heldout

    with pytest.raises(DataError, match=rf"{path}:1: split 'train': expected one of selection, reporting"):
        load_heldout(EvalConfig(data_file=str(path), graders=[GraderConfig()]))
