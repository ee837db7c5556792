"""DPO stage: trl's DPOTrainer on the adapter the previous stage trained, against an explicit reference.

    stage = train_dpo(model, tokenizer, preference.pairs, cfg.train.dpo, run_dir, seed=cfg.seed,
                      device="cpu", compute_dtype=torch.float32, reference_adapter=run_dir / "adapter_sft")

The reference policy is the base model plus `reference_adapter` (a saved PEFT adapter, frozen), or the base model
alone when it is None. After SFT the run passes the saved SFT adapter, so DPO starts at its reference: the first
step's loss is ln 2 and its reward margins are 0. With the base as the reference after SFT they are not, and DPO
would be rewarded for staying close to the base model instead of improving on the SFT policy.

How the reference reaches trl 1.16: its DPOTrainer has no `ref_adapter_name`. Given a PeftModel, it copies the
adapter named "default" into a frozen adapter "ref" while it is built (and, with `precompute_ref_log_probs`, scores
every pair with it right then), and activates "ref" whenever it needs reference log-probs. So the trainer is built
while "default" holds the reference's weights, then the policy's weights are put back. "ref" is compared with the
reference before and after training and deleted at the end, so the saved adapter is the policy alone.

Each logged step (loss, rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies, logps/*, ...) is
added to `<run_dir>/loss.jsonl` with stage "dpo", after the rows of earlier stages.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import TrainerCallback

from harness.config import DPOStageConfig
from harness.data import PREFERENCE_FIELDS, PreferencePair
from harness.trainer import LossLogger, StageResult, build_trainer, run_stage, trainer_arguments

log = logging.getLogger(__name__)

POLICY_ADAPTER = "default"  # the adapter being trained: attach_lora's name, and the one trl copies
REFERENCE_ADAPTER = "ref"  # the name trl 1.16 gives its frozen copy


def train_dpo(
    model,
    tokenizer,
    pairs: list[PreferencePair],
    stage: DPOStageConfig,
    run_dir: Path,
    *,
    seed: int,
    device: str,
    compute_dtype: torch.dtype,
    gradient_checkpointing: bool = False,
    reference_adapter: Path | None = None,
    previous_loss_log: list[dict] | None = None,
    callbacks: list[TrainerCallback] | None = None,
    progress: bool = True,
) -> StageResult:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    if REFERENCE_ADAPTER in model.peft_config:
        raise ValueError(f"the model already has an adapter {REFERENCE_ADAPTER!r}, trl's name for the reference")
    rows = [pair.as_trl_row() for pair in pairs]
    dataset = Dataset.from_dict({key: [row[key] for row in rows] for key in PREFERENCE_FIELDS})
    args = DPOConfig(
        output_dir=str(run_dir / "trainer_dpo"),
        beta=stage.beta,
        loss_type=[stage.loss_type],
        label_smoothing=stage.label_smoothing,
        precompute_ref_log_probs=stage.precompute_ref_log_probs,
        max_length=stage.max_length,
        disable_dropout=True,  # with dropout the policy and its reference copy would differ at step 0
        **trainer_arguments(stage, seed, device, compute_dtype, gradient_checkpointing, progress),
    )
    loss_logger = LossLogger(run_dir / "loss.jsonl", "dpo", previous_loss_log)
    trainer_class = _plain_head_dpo_trainer() if device == "cpu" and _plain_head_fits(model) else DPOTrainer

    # 1. Build the trainer while the adapter holds the reference: trl copies it into the frozen "ref" adapter.
    # Train mode first (trl disables dropout): trl's reference pass runs inside the constructor, and a no-grad
    # forward through bitsandbytes' NF4 layers in eval mode, on a CPU with AVX512-BF16 (as after a held-out
    # evaluation), repacks their weights for a bf16 inference kernel that training would then backpropagate
    # through without an autograd formula.
    model.train()
    policy = _adapter_weights(model, POLICY_ADAPTER)
    reference = _reference_weights(model, policy, reference_adapter)
    started = time.perf_counter()
    _load_adapter_weights(model, POLICY_ADAPTER, reference)
    try:
        trainer = build_trainer(trainer_class, model, tokenizer, args, dataset, [loss_logger, *(callbacks or [])],
                                progress)
    finally:
        # 2. The policy starts where the previous stage ended. trl casts a quantized model's trainable adapter
        # to bf16 after copying it into the fp32 "ref"; loading fp32 weights undoes that, so that policy and
        # reference compute identically at step 0 (and CPU bf16 matmuls are slow).
        _load_adapter_weights(model, POLICY_ADAPTER, policy)
    scored = " and scored by the reference" if stage.precompute_ref_log_probs else ""
    log.info("dpo: %d pairs tokenized%s in %.1f s", len(trainer.train_dataset), scored, time.perf_counter() - started)
    _check_reference(model, reference, "before training")

    # 3. Train, then make sure the reference did not move and remove it, so the saved adapter is the policy.
    result = run_stage(trainer, "dpo", loss_logger, device)
    _check_reference(model, reference, "after training")
    model.delete_adapter(REFERENCE_ADAPTER)
    shutil.rmtree(args.output_dir, ignore_errors=True)  # nothing is saved there (save_strategy="no")
    return result


def start_from_adapter(model, adapter_dir: Path) -> None:
    """Put a saved adapter's weights into the model's fresh adapter, after the same strict layout check as the
    reference gets (r, alpha, tensor names and shapes): a shared SFT's trials start from its exact tensors."""
    policy = _adapter_weights(model, POLICY_ADAPTER)
    _load_adapter_weights(model, POLICY_ADAPTER, _reference_weights(model, policy, adapter_dir))


def _adapter_weights(model, adapter: str) -> dict[str, torch.Tensor]:
    """An adapter's LoRA weights, keyed as in a saved adapter_model.safetensors (without the adapter name)."""
    marker = f".{adapter}."
    return {
        name.replace(marker, "."): param.detach().clone()
        for name, param in model.named_parameters()
        if marker in name
    }


def _load_adapter_weights(model, adapter: str, weights: dict[str, torch.Tensor]) -> None:
    marker = f".{adapter}."
    with torch.no_grad():
        for name, param in model.named_parameters():
            if marker in name:
                weight = weights[name.replace(marker, ".")]
                # a copy: the trained parameter must never alias the reference's weights
                param.data = weight.to(device=param.device, dtype=torch.float32, copy=True)


def _reference_weights(model, policy: dict[str, torch.Tensor], reference_adapter: Path | None) -> dict:
    """The reference as weights in the policy's adapter layout: a saved adapter, or the base (a zero update)."""
    if reference_adapter is None:
        # lora_B = 0 makes the adapter's update exactly zero, so base + this adapter computes the base model.
        return {key: torch.zeros_like(w) if ".lora_B." in key else w for key, w in policy.items()}
    from peft import LoraConfig
    from safetensors.torch import load_file

    reference_adapter = Path(reference_adapter)
    saved_config = LoraConfig.from_pretrained(str(reference_adapter))
    config = model.peft_config[POLICY_ADAPTER]
    if (saved_config.r, saved_config.lora_alpha) != (config.r, config.lora_alpha):
        raise ValueError(
            f"{reference_adapter}: r={saved_config.r}, alpha={saved_config.lora_alpha} differ from the "
            f"adapter being trained (r={config.r}, alpha={config.lora_alpha}); the reference needs its layout"
        )
    weights = load_file(reference_adapter / "adapter_model.safetensors")
    mismatched = sorted(set(weights) ^ set(policy)) or [
        key for key in policy if weights[key].shape != policy[key].shape
    ]
    if mismatched:
        raise ValueError(f"{reference_adapter}: its weights do not match the trained adapter's: {mismatched[:3]}")
    return weights


def _check_reference(model, reference: dict[str, torch.Tensor], when: str) -> None:
    """trl's frozen "ref" adapter must hold exactly the reference's weights."""
    if REFERENCE_ADAPTER not in model.peft_config:
        raise RuntimeError(f"DPO {when}: trl made no {REFERENCE_ADAPTER!r} adapter; its reference is unknown")
    actual = _adapter_weights(model, REFERENCE_ADAPTER)
    for key, weight in reference.items():
        if not torch.equal(actual[key].float(), weight.to(actual[key].device).float()):
            raise RuntimeError(f"DPO {when}: the reference adapter differs from the intended one at {key}")
    marker = f".{REFERENCE_ADAPTER}."
    trainable = [name for name, param in model.named_parameters() if marker in name and param.requires_grad]
    if trainable:
        raise RuntimeError(f"DPO {when}: the reference adapter is trainable ({trainable[0]})")


def _plain_head_dpo_trainer():
    from trl import DPOTrainer

    class PlainHeadDPOTrainer(DPOTrainer):
        """DPOTrainer whose per-token log-probs come from the plain LM head, on the answer tokens only.

        trl 1.16 computes them through a tiled LM head: Triton kernels on GPU, but on CPU the tiles are folded
        by Python-level torch ops over every position, prompt included (~4x slower per DPO step on the tiny
        model; see tests/benchmarks/bench_dpo_throughput.py). Same log-probs, and the same logged entropy, mean
        logit and top-1 accuracy, for the policy and for the reference pass.
        """

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            with _plain_lm_head(self.model):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

        def compute_ref_log_probs(self, model, inputs):
            with _plain_lm_head(self.model):
                return super().compute_ref_log_probs(model, inputs)

    return PlainHeadDPOTrainer


def _plain_head_fits(model) -> bool:
    """The plain head computes the model's own logits unless the model scales or soft-caps them (Gemma 2...)."""
    config = model.config.get_text_config()
    scalers = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
               "logits_scaling")
    return all(getattr(config, name, None) is None for name in scalers)


@contextmanager
def _plain_lm_head(peft_model) -> Iterator[None]:
    """Answer trl's fused_lm_head=True calls (per-token outputs, zero where the label is -100) plainly."""
    from trl.trainer.utils import FusedCausalLMOutput

    causal_lm = peft_model.get_base_model()
    tiled_forward = causal_lm.forward  # trl's patch; it runs the model's own forward when fused_lm_head=False

    def forward(*args, fused_lm_head=False, labels=None, **kwargs):
        if not fused_lm_head:
            return tiled_forward(*args, labels=labels, **kwargs)
        kwargs["use_cache"] = False
        hidden = causal_lm.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        targets = labels[:, 1:]
        mask = targets != -100
        logits = causal_lm.get_output_embeddings()(hidden[mask]).float()
        log_softmax = logits.log_softmax(-1)
        target_ids = targets[mask]
        token_log_probs = log_softmax.gather(-1, target_ids.unsqueeze(-1)).squeeze(-1)
        with torch.no_grad():  # logged only
            entropy = -(log_softmax.exp() * log_softmax).sum(-1)
            mean_logits = logits.mean(-1)
            is_top1 = logits.argmax(-1) == target_ids

        def per_position(values: torch.Tensor) -> torch.Tensor:
            return values.new_zeros(mask.shape).masked_scatter(mask, values)

        return FusedCausalLMOutput(
            loss=-token_log_probs.sum() / mask.sum().clamp(min=1),
            log_probs=per_position(token_log_probs),
            entropy=per_position(entropy),
            mean_logits=per_position(mean_logits),
            is_top1=per_position(is_top1),
            label_mask=mask,
        )

    causal_lm.forward = forward
    try:
        yield
    finally:
        causal_lm.forward = tiled_forward
