"""The GPU code paths that can run on CPU: the attention choice, k-bit preparation as a bf16 GPU load does it,
and trl's own (non-CPU) trainer classes, on the tiny model with real bitsandbytes NF4 layers."""

from __future__ import annotations

import importlib.util
import math

import bitsandbytes as bnb
import torch

import harness.dpo
import harness.sft
from harness.config import DPOStageConfig, LoraConfig, ModelConfig, QuantConfig, SFTStageConfig
from harness.data import Conversation, PreferencePair, tokenize_sft
from harness.dpo import train_dpo
from harness.model import attach_lora, attention_implementation_for, load_adapter, load_base_model
from harness.sft import train_sft

CONVERSATIONS = [
    Conversation([{"role": "user", "content": f"Say the number {i}."}, {"role": "assistant", "content": str(i)}],
                 f"mem:{i}")
    for i in range(8)
]
PAIRS = [PreferencePair(f"Say the number {i}.", str(i), str(i + 1), f"pairs:{i}") for i in range(4)]


def test_attention_is_sdpa_unless_flash_attn_can_run(monkeypatch):
    find_spec = importlib.util.find_spec

    def flash_attn_installed(installed: bool):
        flash_attn = object() if installed else None
        monkeypatch.setattr(importlib.util, "find_spec", lambda name: flash_attn if name == "flash_attn"
                            else find_spec(name))

    assert attention_implementation_for("cpu", torch.float32) == "sdpa"
    flash_attn_installed(False)
    assert attention_implementation_for("cuda", torch.bfloat16) == "sdpa"

    flash_attn_installed(True)
    assert attention_implementation_for("cuda", torch.bfloat16) == "flash_attention_2"
    assert attention_implementation_for("cuda", torch.float16) == "flash_attention_2"
    assert attention_implementation_for("cuda", torch.float32) == "sdpa"  # flash-attn has no fp32 kernels
    assert attention_implementation_for("cpu", torch.bfloat16) == "sdpa"


def test_loaded_model_records_the_attention_it_dispatches_to():
    base = load_base_model(ModelConfig(kind="tiny"), QuantConfig(method="nf4"), "cpu")
    assert base.attn_implementation == "sdpa" == base.model.config._attn_implementation


def test_kbit_preparation_of_a_bf16_load_as_on_a_gpu():
    # A GPU load: bf16 compute, gradient checkpointing on. peft's prepare_model_for_kbit_training must leave the
    # base frozen, the non-quantized parameters (norms, embeddings) in fp32, and the embeddings' output requiring
    # grad, without which no gradient flows back through (reentrant) checkpointed layers to the LoRA inside.
    base = load_base_model(ModelConfig(kind="tiny"), QuantConfig(method="nf4", compute_dtype="bfloat16"), "cpu",
                           gradient_checkpointing=True)
    model = base.model
    assert base.compute_dtype == torch.bfloat16 and base.quantized
    assert model.is_loaded_in_4bit  # what trl and peft branch on
    assert model.is_gradient_checkpointing
    assert not any(p.requires_grad for p in model.parameters())
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(layer.compute_dtype == torch.bfloat16 for layer in layers)
    others = {name: p.dtype for name, p in model.named_parameters() if p.dtype != torch.uint8}
    assert any("norm" in name for name in others), others
    assert all(dtype == torch.float32 for dtype in others.values()), others
    assert model.get_input_embeddings()(torch.tensor([[1, 2, 3]])).requires_grad


def test_gradients_reach_every_lora_layer_under_gradient_checkpointing():
    base = _nf4_base_with_checkpointing()
    model = attach_lora(base.model, LoraConfig(r=4, alpha=8, dropout=0.0))
    model.train()
    batch = base.tokenizer(["Say the number 3. 3"], return_tensors="pt")
    model(**batch, labels=batch["input_ids"], use_cache=False).loss.backward()
    lora_b = {name: p.grad for name, p in model.named_parameters() if "lora_B" in name}
    assert len(lora_b) == 4 * 2  # q, k, v, o in both layers
    assert all(grad is not None and grad.abs().sum() > 0 for grad in lora_b.values()), lora_b.keys()


def test_trl_own_trainer_classes_train_the_nf4_model_with_checkpointing(tmp_path, monkeypatch):
    # On CUDA the harness hands training to trl's SFTTrainer and DPOTrainer as they are (tiled LM head, trl's
    # QLoRA casts); on CPU it swaps in plainer subclasses. Run trl's own classes here, so that their plumbing with
    # the harness's arguments, NF4 layers and gradient checkpointing runs without a GPU (the Triton kernels not).
    monkeypatch.setattr(harness.sft, "_model_loss_sft_trainer", lambda: __import__("trl").SFTTrainer)
    monkeypatch.setattr(harness.dpo, "_plain_head_fits", lambda model: False)
    base = _nf4_base_with_checkpointing()
    model = attach_lora(base.model, LoraConfig(r=4, alpha=8))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    stage = SFTStageConfig(max_steps=2, batch_size=4, warmup_ratio=0.0, learning_rate=1e-2)
    sft = train_sft(model, base.tokenizer, tokenize_sft(base.tokenizer, CONVERSATIONS, stage.max_length), stage,
                    tmp_path, seed=0, device="cpu", compute_dtype=torch.float32, gradient_checkpointing=True,
                    progress=False)
    assert sft.steps == 2 and math.isfinite(sft.final_loss)
    after = dict(model.named_parameters())
    assert all(not torch.equal(before[n], after[n].to(before[n].dtype)) for n in before)

    model.save_pretrained(tmp_path / "adapter_sft", safe_serialization=True)
    base_model = model.unload()
    policy = load_adapter(base_model, tmp_path / "adapter_sft", trainable=True)
    dpo = train_dpo(policy, base.tokenizer, PAIRS, DPOStageConfig(max_steps=2, batch_size=2), tmp_path, seed=0,
                    device="cpu", compute_dtype=torch.float32, gradient_checkpointing=True,
                    reference_adapter=tmp_path / "adapter_sft", progress=False)
    assert dpo.steps == 2
    assert abs(dpo.first_loss - math.log(2)) < 1e-3  # the reference is the SFT policy DPO starts from


def _nf4_base_with_checkpointing():
    return load_base_model(ModelConfig(kind="tiny"), QuantConfig(method="nf4"), "cpu", gradient_checkpointing=True)
