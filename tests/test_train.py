"""QLoRA on the tiny model: real bitsandbytes NF4 layers, a real trl SFT step, adapters that round-trip."""

from __future__ import annotations

import bitsandbytes as bnb
import pytest
import torch

from harness.config import LoraConfig, ModelConfig, QuantConfig, SFTStageConfig
from harness.data import Conversation, tokenize_sft
from harness.model import attach_lora, load_adapter, load_base_model
from harness.sft import train_sft

CONVERSATIONS = [
    Conversation([{"role": "user", "content": f"Say the number {i}."}, {"role": "assistant", "content": str(i)}],
                 f"mem:{i}")
    for i in range(8)
]


def _train(model, tokenizer, tmp_path, **stage_overrides):
    stage = SFTStageConfig(**{"max_steps": 2, "batch_size": 4, "warmup_ratio": 0.0, **stage_overrides})
    examples = tokenize_sft(tokenizer, CONVERSATIONS, stage.max_length)
    return train_sft(model, tokenizer, examples, stage, tmp_path, seed=0, device="cpu",
                     compute_dtype=torch.float32)


def test_nf4_layers_are_bitsandbytes_4bit():
    base = load_base_model(ModelConfig(kind="tiny"), QuantConfig(method="nf4"), "cpu")
    layer = base.model.model.layers[0].self_attn.q_proj
    assert isinstance(layer, bnb.nn.Linear4bit)
    assert layer.weight.quant_state.quant_type == "nf4"
    assert layer.weight.quant_state.nested, "double quantization should be on"
    assert layer.weight.dtype == torch.uint8
    assert base.quantized and base.compute_dtype == torch.float32  # fp32 compute on CPU


def test_compute_dtype_is_chosen_by_device():
    from harness.model import compute_dtype_for

    assert compute_dtype_for(QuantConfig(), "cpu") == torch.float32
    assert compute_dtype_for(QuantConfig(compute_dtype="bfloat16"), "cpu") == torch.bfloat16


def test_two_step_qlora_sft_changes_lora_only(tmp_path):
    base = load_base_model(ModelConfig(kind="tiny"), QuantConfig(method="nf4"), "cpu")
    model = attach_lora(base.model, LoraConfig(r=4, alpha=8))
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    assert lora_before and all(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)

    result = _train(model, base.tokenizer, tmp_path, learning_rate=1e-2)

    assert result.steps == 2 and torch.isfinite(torch.tensor(result.final_loss))
    assert result.tokens_seen > 0 and result.tokens_per_s > 0
    after = dict(model.named_parameters())
    assert any(not torch.equal(lora_before[n], after[n]) for n in lora_before if "lora_B" in n)
    assert all(torch.equal(frozen_before[n], after[n]) for n in frozen_before)
    assert (tmp_path / "loss.jsonl").read_text().count("\n") == 2


def test_sft_loss_goes_down_when_overfitting_a_few_examples(tmp_path, tiny_base):
    model = attach_lora(tiny_base.model, LoraConfig(r=8, alpha=16, dropout=0.0, target_modules=["all-linear"]))
    result = _train(model, tiny_base.tokenizer, tmp_path, max_steps=10, learning_rate=3e-2)
    losses = [row["loss"] for row in result.loss_log]
    # A random 2-layer model starts near ln(vocab) = 10.8; a working loop pulls the answers' loss well below.
    assert min(losses[-3:]) < losses[0] - 0.3, losses


def test_saved_adapter_reloads_with_identical_logits(tmp_path, tiny_base):
    model = attach_lora(tiny_base.model, LoraConfig(r=4, alpha=8, dropout=0.0))
    _train(model, tiny_base.tokenizer, tmp_path, learning_rate=1e-2)
    model.save_pretrained(tmp_path / "adapter", safe_serialization=True)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    batch = tiny_base.tokenizer(["Say the number 3."], return_tensors="pt")
    model.eval()
    with torch.no_grad():
        expected = model(**batch).logits

    fresh = load_base_model(ModelConfig(kind="tiny"), QuantConfig(method="none"), "cpu", for_training=False)
    reloaded = load_adapter(fresh.model, tmp_path / "adapter")
    reloaded.eval()
    with torch.no_grad():
        actual = reloaded(**batch).logits
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_adapter_without_safetensors_is_refused(tmp_path, tiny_base):
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="safetensors only"):
        load_adapter(tiny_base.model, tmp_path)


def test_hf_kind_loads_a_local_directory_through_the_same_path(tiny_base):
    # model=hf serves users' own models; a local safetensors directory stands in for a hub id here.
    base = load_base_model(ModelConfig(kind="hf", name_or_path=str(tiny_base.model_dir)), QuantConfig(method="nf4"),
                           "cpu")
    assert isinstance(base.model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    assert base.model_hash == tiny_base.model_hash and base.tokenizer.chat_template


def test_a_diverging_stage_stops_at_the_first_non_finite_step(tmp_path, tiny_base):
    from harness.trainer import NonFiniteTrainingError

    model = attach_lora(tiny_base.model, LoraConfig(r=4, alpha=8))
    with pytest.raises(NonFiniteTrainingError, match=r"sft: non-finite (loss|grad_norm|weight).* step \d+"):
        _train(model, tiny_base.tokenizer, tmp_path, max_steps=6, learning_rate=1e30)
    rows = (tmp_path / "loss.jsonl").read_text().splitlines()
    assert len(rows) < 6, "training stopped at the first non-finite step, not at the end"
