"""SFT -> DPO on one adapter: the reference is the SFT policy, preference data is checked, DPO trains the adapter."""

from __future__ import annotations

import json
import math

import bitsandbytes as bnb
import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from harness.config import DataConfig, DPOStageConfig, LoraConfig, ModelConfig, QuantConfig, SFTStageConfig
from harness.data import Conversation, DataError, Message, PreferencePair, chat, load_preference_data, tokenize_sft
from harness.dpo import _adapter_weights, _plain_lm_head, train_dpo
from harness.model import adapter_hash, attach_lora, load_adapter, load_base_model
from harness.sft import train_sft
from tests.conftest import TINY_OVERRIDES, make_config

LN2 = math.log(2)
PROMPT = [{"role": "user", "content": "Give the number as JSON."}]
PAIRS = [
    PreferencePair(
        [{"role": "user", "content": f"Give the number {i} as JSON."}],
        [{"role": "assistant", "content": f'{{"n": {i}}}'}],
        [{"role": "assistant", "content": f"Sure! The number is {i}."}],
        f"mem:{i}",
    )
    for i in range(8)
]
SFT_CONVERSATIONS = [Conversation(pair.prompt + pair.chosen, pair.source) for pair in PAIRS]
DPO_METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


@pytest.fixture(scope="module")
def sft_adapter(tmp_path_factory):
    """A QLoRA adapter that SFT moved away from zero (so base != SFT policy), saved once for the module."""
    run_dir = tmp_path_factory.mktemp("sft")
    base = load_base_model(ModelConfig(kind="tiny"), QuantConfig(method="nf4"), "cpu")
    model = attach_lora(base.model, LoraConfig(r=4, alpha=8))
    stage = SFTStageConfig(max_steps=2, batch_size=4, warmup_ratio=0.0, learning_rate=1e-2)
    train_sft(model, base.tokenizer, tokenize_sft(base.tokenizer, SFT_CONVERSATIONS, 256), stage, run_dir,
              seed=0, device="cpu", compute_dtype=torch.float32, progress=False)
    model.save_pretrained(run_dir / "adapter_sft", safe_serialization=True)
    return run_dir / "adapter_sft"


@pytest.fixture
def sft_model(sft_adapter):
    """A fresh NF4 base with the SFT adapter loaded as the trainable "default" adapter."""
    base = load_base_model(ModelConfig(kind="tiny"), QuantConfig(method="nf4"), "cpu")
    return load_adapter(base.model, sft_adapter, trainable=True), base.tokenizer


def _dpo(model, tokenizer, run_dir, reference_adapter=None, callbacks=None, **stage_overrides):
    stage = DPOStageConfig(**{"max_steps": 2, "batch_size": 4, **stage_overrides})
    return train_dpo(model, tokenizer, PAIRS, stage, run_dir, seed=0, device="cpu", compute_dtype=torch.float32,
                     reference_adapter=reference_adapter, callbacks=callbacks, progress=False)


# ---------------------------------------------------------------------------------------------------------
# The reference


@pytest.mark.parametrize("precompute", [True, False], ids=["precomputed-reference", "reference-per-step"])
def test_sft_policy_as_reference_gives_ln2_and_zero_margins_at_step_0(sft_model, sft_adapter, tmp_path, precompute):
    model, tokenizer = sft_model
    result = _dpo(model, tokenizer, tmp_path, reference_adapter=sft_adapter, precompute_ref_log_probs=precompute)

    first = result.loss_log[0]  # logged at step 1: the loss of the first batch, computed before any update
    assert first["stage"] == "dpo" and first["step"] == 1
    assert first["loss"] == pytest.approx(LN2, abs=1e-3)
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert first["rewards/chosen"] == pytest.approx(0.0, abs=1e-6)
    assert first["rewards/rejected"] == pytest.approx(0.0, abs=1e-6)
    rows = [json.loads(line) for line in (tmp_path / "loss.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(row["stage"] == "dpo" and set(DPO_METRICS) <= set(row) for row in rows)


def test_base_as_reference_after_sft_is_not_at_ln2(sft_model, tmp_path):
    model, tokenizer = sft_model
    result = _dpo(model, tokenizer, tmp_path, reference_adapter=None)

    first = result.loss_log[0]
    assert abs(first["loss"] - LN2) > 1e-3, first
    assert abs(first["rewards/margins"]) > 1e-3, first


@pytest.mark.parametrize("loss_type, step0_loss", [("sigmoid", LN2), ("ipo", (1 / (2 * 0.1)) ** 2), ("hinge", 1.0)])
def test_dpo_alone_starts_at_the_base_for_each_loss_type(tmp_path, loss_type, step0_loss):
    """A fresh adapter is the base model, so policy = reference: each loss at a zero margin."""
    base = load_base_model(ModelConfig(kind="tiny"), QuantConfig(method="none"), "cpu")
    model = attach_lora(base.model, LoraConfig(r=4, alpha=8))
    result = _dpo(model, base.tokenizer, tmp_path, loss_type=loss_type, beta=0.1)
    assert result.loss_log[0]["loss"] == pytest.approx(step0_loss, rel=1e-4)
    assert result.loss_log[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)


class _CaptureReference(TrainerCallback):
    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.reference = _adapter_weights(model, "ref")


def test_two_dpo_steps_change_the_adapter_but_not_the_sft_reference(sft_model, sft_adapter, tmp_path):
    model, tokenizer = sft_model
    model.eval()
    policy_before = _adapter_weights(model, "default")
    saved_hash = adapter_hash(sft_adapter)
    capture = _CaptureReference()

    result = _dpo(model, tokenizer, tmp_path, reference_adapter=sft_adapter, callbacks=[capture], learning_rate=1e-3)

    assert result.steps == 2 and all(math.isfinite(row["loss"]) for row in result.loss_log)
    policy_after = _adapter_weights(model, "default")
    assert any(not torch.equal(policy_before[k].float(), policy_after[k].float()) for k in policy_before)
    saved = load_file(sft_adapter / "adapter_model.safetensors")
    assert capture.reference.keys() == saved.keys()
    assert all(torch.equal(capture.reference[k].float(), saved[k].float()) for k in saved)
    assert adapter_hash(sft_adapter) == saved_hash
    assert set(model.peft_config) == {"default"}  # the reference copy is gone: the saved adapter is the policy
    assert all(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)
    # The model came in eval mode (as after a held-out evaluation): trl's reference pass must not have repacked
    # the NF4 weights for bitsandbytes' CPU inference kernel, which has no backward.
    packed = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)
              and getattr(m.weight.quant_state, "packing_format_for_cpu", False)]
    assert not packed


def test_plain_cpu_lm_head_matches_trls_tiled_head(tmp_path):
    from trl.trainer.utils import add_fused_lm_head

    base = load_base_model(ModelConfig(kind="tiny"), QuantConfig(method="nf4"), "cpu")
    model = attach_lora(base.model, LoraConfig(r=4, alpha=8, dropout=0.0))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    add_fused_lm_head(model.get_base_model(), outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    batch = base.tokenizer(["Give the number 3 as JSON. {\"n\": 3}", "Short."], return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    labels[:, :4] = -100

    def forward():
        outputs = model(**batch, labels=labels, fused_lm_head=True, use_cache=False)
        outputs.log_probs.sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad()
        return outputs, grads

    tiled, tiled_grads = forward()
    with _plain_lm_head(model):
        plain, plain_grads = forward()
    for field in ("log_probs", "entropy", "mean_logits"):
        torch.testing.assert_close(getattr(plain, field), getattr(tiled, field), rtol=1e-4, atol=1e-4)
    assert torch.equal(plain.is_top1, tiled.is_top1)
    assert tiled_grads and tiled_grads.keys() == plain_grads.keys()
    for name in tiled_grads:
        torch.testing.assert_close(plain_grads[name], tiled_grads[name], rtol=1e-3, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Preference data

GOOD = {
    "prompt": PROMPT,
    "chosen": [{"role": "assistant", "content": '{"n": 1}'}],
    "rejected": [{"role": "assistant", "content": "The number is 1."}],
}


def _write(tmp_path, lines: list[str]):
    path = tmp_path / "prefs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    "line, message",
    [
        (json.dumps({k: v for k, v in GOOD.items() if k != "rejected"}), "missing field 'rejected'"),
        (json.dumps({**GOOD, "chosen": [{"role": "assistant", "content": "  "}]}), "'chosen' is empty"),
        (json.dumps({**GOOD, "chosen": "", "prompt": "p", "rejected": "r"}), "'chosen' is empty"),
        (json.dumps({**GOOD, "rejected": GOOD["chosen"]}), "identical"),
        (json.dumps({**GOOD, "prompt": PROMPT + [{"role": "assistant", "content": '{"n": 1}'}]}),
         "'prompt' ends with a turn by 'assistant'"),
        (json.dumps({**GOOD, "chosen": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]}),
         "'chosen' must be a single assistant turn"),
        (json.dumps({**GOOD, "prompt": "plain text"}), "all be message lists or all be strings"),
        (json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"}), "one preference file must use one format"),
        ('{"prompt": [oops', "malformed JSON"),
    ],
)
def test_invalid_preference_rows_are_refused_naming_the_line(tmp_path, line, message):
    path = _write(tmp_path, [json.dumps(GOOD), line])
    with pytest.raises(DataError) as err:
        load_preference_data(DataConfig(preference_file=str(path)))
    assert f"{path}:2" in str(err.value) and message in str(err.value)


def test_multi_turn_prompt_ending_with_the_user_is_one_prompt(tmp_path):
    turns = PROMPT + [{"role": "assistant", "content": "Which number?"}, {"role": "user", "content": "One."}]
    path = _write(tmp_path, [json.dumps({**GOOD, "prompt": turns}), json.dumps(GOOD), json.dumps(GOOD)])
    data = load_preference_data(DataConfig(preference_file=str(path)))
    assert len(data.pairs) == 2 and data.duplicates_removed == 1 and chat(data.pairs[0].prompt) == turns


def test_plain_string_rows_load(tmp_path):
    rows = [{"prompt": f"Number {i}?", "chosen": f'{{"n": {i}}}', "rejected": f"It is {i}."} for i in range(3)]
    path = _write(tmp_path, [json.dumps(row) for row in rows])
    data = load_preference_data(DataConfig(preference_file=str(path)))
    assert [pair.conversational for pair in data.pairs] == [False] * 3
    assert data.pairs[0].prompt_messages == [Message("user", "Number 0?")]


def test_default_preference_data_is_valid():
    data = load_preference_data(DataConfig(preference_file="evals/json_extract/dpo_train.jsonl"))
    assert len(data.pairs) == 160 and all(pair.conversational for pair in data.pairs)


@pytest.mark.parametrize(
    "content, error",
    [
        (None, "LeakageError"),  # a held-out prompt reused as a preference prompt
        ("<|start_header_id|>user<|end_header_id|>Hi", "DataError"),  # another family's role markers
    ],
)
def test_preference_prompts_go_through_leakage_and_chat_template_checks(tmp_path, content, error):
    from harness.evaluate import load_heldout
    from harness.run import prepare_inputs

    cfg = make_config([*TINY_OVERRIDES, "train=dpo", f"data.preference_file={tmp_path / 'prefs.jsonl'}"])
    heldout_prompt = chat([m for m in load_heldout(cfg.eval)[0].messages if m.role != "assistant"])
    prompt = heldout_prompt if content is None else [{"role": "user", "content": content}]
    _write(tmp_path, [json.dumps(GOOD), json.dumps({**GOOD, "prompt": prompt})])
    with pytest.raises(DataError) as err:
        prepare_inputs(cfg)
    assert type(err.value).__name__ == error and "prefs.jsonl:2" in str(err.value)


def test_unknown_loss_type_is_refused_naming_the_field():
    with pytest.raises(ValueError, match=r"train\.dpo\.loss_type='dpo'"):
        make_config(["train.dpo.loss_type=dpo"])
    with pytest.raises(ValueError, match=r"train\.dpo\.label_smoothing"):
        make_config(["train.dpo.loss_type=exo_pair"])


def test_loss_types_are_the_ones_trl_documents():
    from trl import DPOConfig

    from harness.config import DPO_LOSS_TYPES

    documented = DPOConfig.__dataclass_fields__["loss_type"].metadata["help"]
    assert all(f"'{name}'" in documented for name in DPO_LOSS_TYPES)
    assert documented.count("`'") == len(DPO_LOSS_TYPES)


# ---------------------------------------------------------------------------------------------------------
# End to end


def test_sft_then_dpo_run_scores_both_stages(tmp_path):
    from harness.run import run_experiment

    cfg = make_config([*TINY_OVERRIDES, "train=sft_dpo", "train.sft.max_steps=2", "train.dpo.max_steps=2",
                       "train.dpo.batch_size=4", "data.max_preference_examples=8"])
    results = run_experiment(cfg, tmp_path / "run", progress=False)

    run_dir = tmp_path / "run"
    assert set(results.stages) == {"sft", "dpo"} and results.final.stage == "dpo"
    reference = results.stages["dpo"].reference
    assert reference.policy == "sft" and reference.adapter_hash == adapter_hash(run_dir / "adapter_sft")
    assert results.adapter.hash != reference.adapter_hash  # DPO moved the adapter
    assert results.data.preference_pairs == 8
    assert (run_dir / "samples_sft.jsonl").exists() and (run_dir / "samples_dpo.jsonl").exists()
    assert not (run_dir / "adapter" / "ref").exists()  # only the policy adapter is saved
    rows = [json.loads(line) for line in (run_dir / "loss.jsonl").read_text().splitlines()]
    assert [row["stage"] for row in rows] == ["sft", "sft", "dpo", "dpo"]
    assert rows[2]["loss"] == pytest.approx(LN2, abs=1e-3) and rows[2]["rewards/margins"] == pytest.approx(0, abs=1e-6)
