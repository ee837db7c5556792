"""The typed, versioned records the harness writes and reads: a run's results, a sweep trial, a sweep, the best
trial, the gate baseline, the baseline cache.

One builder writes each record (`harness.run.build_results` for results, `harness.gate_baseline.make_baseline` for the
baseline, `harness.sweep` for trial/sweep/best); everything else reads them by attribute:

    results = read_record(RunResults, run_dir / "results.json")   # RecordError naming the file and field
    results.final.heldout.score
    write_record(run_dir / "results.json", results)                # atomic: temp file + rename

JSON exists only at the edges (`harness.recordio`: `to_json` / `from_json`). Each top-level record carries a
`format` string; a reader refuses another format, a missing field, a field of the wrong type or a key it does
not know, naming the file and the dotted field (`stages.sft.heldout.score`). Fields with a default may be
absent. This module imports nothing heavy (no torch), so reports and gates read records without a model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from harness.recordio import RecordError, from_json, read_record, to_json, write_record

__all__ = ["RecordError", "from_json", "read_record", "to_json", "write_record"]  # the codec, re-exported

RESULTS_FORMAT = "harness.results/v5"  # v5: StageRecord.shared_from / adapter_hash (a shared SFT)
TRIAL_FORMAT = "harness.trial/v3"
SWEEP_FORMAT = "harness.sweep/v2"
BEST_FORMAT = "harness.best/v1"
BASELINE_FORMAT = "harness.gate/baseline-v4"
BASELINE_CACHE_FORMAT = "harness.baseline-cache/v2"
VERDICTS_FORMAT = "harness.verdicts/v2"  # v2: SweepVerdicts.dpo (after SFT vs after DPO)
SHARED_SFT_FORMAT = "harness.shared-sft/v1"
MINED_PAIRS_FORMAT = "harness.pairs/mined-v1"


# ---------------------------------------------------------------------------------------------------------
# Scores


@dataclass
class GradeResult:
    """One grader's verdict on one output."""

    score: float
    details: dict[str, Any]  # grader-specific, e.g. json_fields: {"valid_json", "fields": {name: 0/1}}


@dataclass
class ExampleResult:
    """One held-out example: what the model said and how each grader scored it."""

    source: str  # file:line of the eval row
    prompt: str  # the last user turn
    output: str
    reference: Any  # the gold answer, as in the eval file
    score: float  # the first grader's score: the headline
    grades: dict[str, GradeResult]  # grader name (the type; later ones <type>_<index>) -> its verdict


@dataclass
class HeldoutResult:
    """Scores of one model on one eval set, with every example kept."""

    score: float  # mean of the first grader's per-example scores
    stderr: float
    ci_low: float
    ci_high: float
    n: int
    metrics: dict[str, float]  # every grader's aggregates, e.g. "json_fields/field/age"
    per_example: list[ExampleResult] = field(default_factory=list)
    seconds: float = 0.0
    batch_size: int = 0
    max_new_tokens: int = 0
    grader_versions: dict[str, str] = field(default_factory=dict)

    @property
    def scores(self) -> list[float]:
        return [row.score for row in self.per_example]

    def summary(self) -> ScoreSummary:
        return ScoreSummary(self.score, self.stderr, self.ci_low, self.ci_high, self.n)


@dataclass
class ScoreSummary:
    """A score with its error bar, without the examples."""

    score: float
    stderr: float
    ci_low: float
    ci_high: float
    n: int


@dataclass
class RegressionSummary:
    """One lm-eval task for one model: the metric its limit applies to, every metric it reported, and the settings
    that decide the numbers (the same settings give `lm_eval run`'s numbers; see docs/benchmarks.md)."""

    task: str
    metric: str  # the chosen metric (benchmark `metric`; default acc for multiple-choice tasks, else the first)
    score: float
    stderr: float  # as lm-eval reports it; NaN when it computed none
    n: int  # docs scored (after `limit`)
    task_version: str  # the task YAML's metadata.version: scores compare only at equal versions
    batch_size: int = 0  # some tasks' scores change with it
    limit: int | None = None
    # every metric lm-eval reported for the task, keyed as in its results ("acc,none", "exact_match,strict-match")
    metrics: dict[str, float] = field(default_factory=dict)
    filter: str = "none"  # the lm-eval filter `metric` was read under (gsm8k: strict-match / flexible-extract)
    apply_chat_template: bool = True
    num_fewshot: int = 0  # as evaluated (the benchmark's, else the task's own)
    max_gen_toks: int | None = None  # as evaluated, for generation tasks; None for log-likelihood tasks
    seed: int = 0  # lm-eval's four seeds (python, numpy, torch, few-shot), set as `lm_eval run --seed` does
    # what decides the task's numbers besides the model, as content hashes (harness.benchmarks.task_identity)
    task_identity: dict[str, str] = field(default_factory=dict)


@dataclass
class RegressionScore(RegressionSummary):
    """A regression score with the metric of every doc, in doc_id order (its mean is `score`)."""

    per_example: list[float] = field(default_factory=list)

    def summary(self) -> RegressionSummary:
        return RegressionSummary(**{f.name: getattr(self, f.name) for f in dataclasses.fields(RegressionSummary)})


@dataclass
class RegressionDelta:
    """Adapter minus base on one benchmark, and whether the drop stays within its max_regression."""

    base: float
    adapter: float
    delta: float
    max_regression: float
    ok: bool


@dataclass
class CanaryResult:
    """Proof that the adapter is applied: outputs with and without it differ."""

    max_logit_diff: float  # largest |adapter - base| logit over the canary prompts
    outputs_changed: int  # canary prompts whose greedy output differs from the base model's
    n: int


# ---------------------------------------------------------------------------------------------------------
# Identities


@dataclass
class EvalSetIdentity:
    name: str
    hash: str  # content hash of the frozen eval set and the split: <hash>-<split> (subsets: <hash>-<split>-firstN)
    n: int | None  # examples scored; None in a sweep record before any trial finished
    min_score: float
    split: str  # selection (sweeps choose on it) or reporting (verdicts and the gate; nothing chooses on it)


@dataclass
class ModelIdentity:
    id: str  # what the user asked for (hub id, path, or the embedded model's name)
    hash: str | None  # content identity of the weights; None in a sweep record before any trial finished
    quantized: bool
    compute_dtype: str | None = None
    attn_implementation: str | None = None  # sdpa, eager, flash_attention_2: what transformers dispatched to


@dataclass
class TokenizerIdentity:
    name: str
    vocab_size: int
    chat_template_sha256: str  # a new template changes every prompt


@dataclass
class AdapterIdentity:
    path: str
    hash: str  # of the weight tensors and LoRA hyperparameters (see model.adapter_hash), never of paths
    r: int
    alpha: float
    target_modules: list[str] | str


# ---------------------------------------------------------------------------------------------------------
# A run's results


@dataclass
class TrainingStats:
    """What one training stage measured (the loss curve itself is in loss.jsonl)."""

    stage: str
    steps: int
    train_runtime_s: float
    tokens_seen: int  # non-padding tokens through the model
    tokens_per_s: float
    first_loss: float
    final_loss: float
    peak_memory_mb: float


@dataclass
class DpoReference:
    """The policy DPO's reference model was: the SFT adapter after SFT, otherwise the base."""

    policy: str  # sft | base
    adapter: str | None
    adapter_hash: str | None


@dataclass
class StageRecord:
    """Scores after one stage (or, in a gate evaluation, of the loaded adapter)."""

    heldout: HeldoutResult
    regression: dict[str, RegressionScore]
    train: TrainingStats | None = None  # None: scored, not trained (a gate evaluation)
    reference: DpoReference | None = None  # DPO stages only
    # An SFT stage a sft_dpo sweep trained once for all its trials (sweeps/<name>/sft): that run directory, and
    # the hash of the adapter the trial started from. The trial did not train this stage; its record is a copy.
    shared_from: str | None = None
    adapter_hash: str | None = None


@dataclass
class LeakageReport:
    n_train: int
    n_heldout: int
    exact_overlaps: int
    ngram_overlaps: int  # held-out prompts sharing a non-template n-gram with some training prompt
    ngram: int
    overlap_fraction: float
    examples: list[dict[str, Any]] = field(default_factory=list)  # overlapping held-out prompts + a training match


@dataclass
class DataWarning:
    """A change the harness made to the user's data (or something it ignored), shown on the console and kept."""

    source: str  # file:line of the row concerned (or the file)
    message: str


@dataclass
class DataCard:
    """What training data went in: files, rows read and kept, and the checks' findings."""

    sft_file: str | None
    sft_rows: int
    sft_examples: int
    sft_truncated: int
    duplicates_removed: int
    leakage: LeakageReport
    chat_template_sample: str
    preference_file: str | None = None
    preference_rows: int | None = None
    preference_pairs: int | None = None
    preference_duplicates_removed: int | None = None
    preference_sha256: str | None = None  # of the pairs file DPO trained on (its identity; the path is not)
    preference_provenance: str | None = None  # mined pairs: their provenance record (harness.pairs)
    sft_format: str | None = None  # the detected (or configured) data.format
    sft_dropped_for_length: int = 0  # rows left without an assistant token within train.sft.max_length
    eval_file: str | None = None
    eval_rows: int = 0
    eval_examples: int = 0
    eval_duplicates_removed: int = 0
    warnings: list[DataWarning] = field(default_factory=list)


@dataclass
class BaselineScores:
    """The base model zero-shot, with a prompt baseline, and on the regression benchmarks."""

    key: str  # baseline cache key
    cached: bool
    zero_shot: HeldoutResult | None  # None: not computed for this record (harness.baselines: a sweep's reporting split)
    prompt_baseline: HeldoutResult | None
    prompting_meets_min_score: bool
    regression: dict[str, RegressionScore]


@dataclass
class FinalScores:
    """The headline of a run: its last stage's scores and their verdicts."""

    stage: str
    heldout: ScoreSummary
    meets_min_score: bool
    regression: dict[str, RegressionSummary]
    regression_delta: dict[str, RegressionDelta]  # vs the base model; empty without base scores
    worst_regression: float  # largest drop vs the base over the benchmarks (0 when none dropped)
    regression_ok: bool  # every drop within its max_regression


@dataclass
class RunMetrics:
    device: str
    compute_dtype: str
    library_versions: dict[str, str]
    seed: int  # python, numpy and torch are seeded from it at the start and right before the adapter is created
    git_revision: str
    wall_time_s: float
    torch_threads: int = 0  # CPU results are bit-identical only at the same thread count
    reproducibility: str = ""  # what a rerun of the same command reproduces here (see run.reproducibility_note)
    train_runtime_s: float = 0.0
    tokens_per_s: dict[str, float] = field(default_factory=dict)
    peak_memory_mb: float = 0.0
    stages: dict[str, TrainingStats] = field(default_factory=dict)


@dataclass
class RunResults:
    """Everything one evaluated adapter produced (a run, a sweep trial, or a gate evaluation)."""

    status: str  # complete
    kind: str  # run | gate_evaluation
    run_dir: str | None
    config: dict[str, Any]  # the resolved RunConfig as JSON; `run_config()` rebuilds it
    eval_set: EvalSetIdentity
    model: ModelIdentity
    tokenizer: TokenizerIdentity
    adapter: AdapterIdentity
    stages: dict[str, StageRecord]
    final: FinalScores
    canary: CanaryResult
    metrics: RunMetrics
    data: DataCard | None = None  # None for a gate evaluation (no training data)
    baselines: BaselineScores | None = None  # None for a gate evaluation
    format: str = RESULTS_FORMAT

    @property
    def final_stage(self) -> StageRecord:
        return self.stages[self.final.stage]

    def run_config(self):
        """The RunConfig this record was made with (typed, validated as at compose time)."""
        from omegaconf import OmegaConf

        from harness.config import RunConfig

        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), self.config))


# ---------------------------------------------------------------------------------------------------------
# Sweeps


@dataclass
class SftIdentity:
    """What decides a shared SFT adapter's tensors and its selection-split scores."""

    config_hash: str  # of SharedSft.config: the run config without the DPO stage, preference data or sweep
    data_hash: str  # of the tokenized SFT examples trained on
    eval_set_hash: str
    seed: int
    model_hash: str  # the base model's content identity


@dataclass
class SharedSft:
    """sweeps/<name>/sft/shared_sft.json, written last: the SFT an sft_dpo sweep trained once for every trial."""

    identity: SftIdentity
    identity_hash: str
    run_dir: str  # a normal run directory: adapter/, results.json (scored on the selection split), loss.jsonl
    adapter_hash: str
    config: dict[str, Any]  # the SFT-relevant config that config_hash is of (to name what changed on resume)
    created_at: str
    format: str = SHARED_SFT_FORMAT


@dataclass
class IntermediateScore:
    step: int
    score: float  # on the pruning subset of the selection examples


@dataclass
class TrialRecord:
    """trial.json: one sweep trial's state, written when it starts and when it ends."""

    number: int
    state: str  # RUNNING, COMPLETE, PRUNED, FAIL
    params: dict[str, Any]
    command: str  # re-runs this trial alone: `python -m harness` + overrides (verified to rebuild its config)
    trial_dir: str
    host: str
    pid: int
    started_at: str
    fail_reason: str | None = None
    intermediate: list[IntermediateScore] = field(default_factory=list)
    values: list[float] | None = None
    feasible: bool | None = None
    duration_s: float | None = None
    finished_at: str | None = None
    retry_of: int | None = None
    # the sweep YAML's settings, the sweep command's Hydra overrides, the trial's params: `command` is
    # `python -m harness` + these, checked by composing them before the trial trains
    overrides: list[str] = field(default_factory=list)
    # optimizer steps the trial trained, all stages (a pruned trial: up to the step it was stopped at), and the
    # steps it trains when nothing stops it (None: a stage trains for epochs): the report's pruning budget
    steps_trained: int | None = None
    steps_budget: int | None = None
    format: str = TRIAL_FORMAT


@dataclass
class SweepRecord:
    """sweep.json: what the sweep is and how it was run."""

    name: str
    question: str
    command: str
    storage: str
    sampler: str
    pruner: str
    objective: str
    n_trials: int
    space: dict[str, list[Any]]
    eval_set: EvalSetIdentity
    model: ModelIdentity
    price_per_gpu_hour: float
    config: dict[str, Any]
    started_at: str
    servable_ranks_only: bool = True  # the space was checked against the LoRA ranks vLLM can serve
    finished_at: str | None = None
    wall_time_s: float | None = None
    format: str = SWEEP_FORMAT


@dataclass
class Verdict:
    """One decision the report states, on the reporting split, in one of three states with its evidence."""

    question: str  # min_score | finetuning_needed | best_vs_runner_up | cheaper_alternative | dpo_vs_sft |
    #                dpo_improves_sft
    state: str  # min_score: meets|below|inconclusive; finetuning_needed: yes|no|inconclusive;
    #             best_vs_runner_up, dpo_vs_sft: better|worse|inconclusive; cheaper_alternative: cheaper|best;
    #             dpo_improves_sft: yes|no|inconclusive
    text: str  # one line: the numbers, the method, and why this state
    method: str  # the interval or test, named
    estimate: float  # the score (min_score) or the paired difference (B - A)
    ci_low: float
    ci_high: float
    n: int
    p_value: float | None = None
    p_adjusted: float | None = None  # Holm over the sweep's paired comparisons (see SweepVerdicts.correction)
    examples_to_decide: int | None = None  # for an inconclusive state: examples that would decide it


@dataclass
class ReportingScore:
    """A trial evaluated on the reporting split, beside its selection-split score."""

    number: int
    results: str  # its reporting evaluation's results.json
    selection: ScoreSummary
    reporting: ScoreSummary
    optimism_gap: float  # selection - reporting: how much choosing on the selection split flattered it


@dataclass
class SweepVerdicts:
    """verdicts.json: the sweep's verdicts on the reporting split, which no selection has touched."""

    best: int  # best on the selection split (selection.rank_key): best.json
    recommended: int  # the trial to ship: best, or a cheaper one not distinguishable from it
    reasons: list[str]
    scores: list[ReportingScore]  # best first, then the runner-up and the cheaper alternative where evaluated
    verdicts: list[Verdict]
    correction: str  # how the p-values of several comparisons were adjusted
    equivalence_margin: float
    alpha: float
    dpo: DpoVerdicts | None = None  # sft_dpo sweeps with a shared SFT only
    format: str = VERDICTS_FORMAT


@dataclass
class DpoTrialVerdict:
    """One DPO trial of an sft_dpo sweep on the reporting split, against the SFT it started from."""

    number: int
    params: dict[str, Any]
    results: str  # its reporting evaluation's results.json
    reporting: ScoreSummary
    verdict: Verdict  # dpo_vs_sft: better | worse | inconclusive (after DPO vs after SFT, paired, Holm-adjusted)
    # the smallest true DPO - SFT difference these examples detect with 80% power (stats.paired_mde, alpha 0.05)
    detectable: float


@dataclass
class DpoVerdicts:
    """Does DPO improve on this SFT? Every complete DPO trial and the shared SFT, scored on the reporting split."""

    sft_results: str  # the shared SFT adapter's reporting evaluation (sweeps/<name>/sft/reporting/results.json)
    sft_adapter_hash: str
    sft_selection: ScoreSummary
    sft_reporting: ScoreSummary
    trials: list[DpoTrialVerdict]
    chosen: int  # the DPO trial chosen on the selection split (the sweep's best)
    verdict: Verdict  # dpo_improves_sft: yes | no | inconclusive, for the chosen trial (one test, unadjusted)
    correction: str


@dataclass
class BestTrial:
    """best.json: the trial `best` points at (see sweep.best_trial for the rule)."""

    number: int
    trial_dir: str
    adapter: str
    params: dict[str, Any]
    score: float
    feasible: bool | None
    format: str = BEST_FORMAT


# ---------------------------------------------------------------------------------------------------------
# Gate baseline and baseline cache


@dataclass
class BaselineExample:
    source: str
    score: float
    output: str | None = None  # kept when all outputs together are small (see gate_baseline.MAX_BASELINE_OUTPUT_CHARS)


@dataclass
class BaselineHeldout:
    score: float
    stderr: float
    ci_low: float
    ci_high: float
    n: int
    grader_versions: dict[str, str]
    outputs_kept: bool
    per_example: list[BaselineExample]


@dataclass
class GatedRegression(RegressionScore):
    """A baseline's regression score with the limit it is gated at."""

    max_regression: float = 0.0


@dataclass
class GateBaseline:
    """reports/baseline.json: what ships, as the gate compares candidates with it. Self-describing: `gate check`
    rebuilds the evaluation config from `overrides`, so a CI job needs to know nothing the baseline knows."""

    created_from: str
    created_at: str
    git_revision: str
    # Hydra overrides (eval.*, model.*, quant.*, run_regression) that rebuild the evaluation config from the
    # default composition; `gate check` applies them before the user's own (eval.split=reporting always)
    overrides: list[str]
    config: dict[str, Any]  # the resolved config of the record the baseline was made from
    eval_set: EvalSetIdentity  # name, split, hash (<hash>-<split>[-first<N>]), n
    max_examples: int | None  # the subset scored (eval.max_examples), None = the whole split
    model: ModelIdentity
    tokenizer: TokenizerIdentity  # name, vocab size, chat template hash
    adapter: AdapterIdentity
    min_score: float
    min_score_verdict: str  # the baseline's own verdict, always "meets" (`gate baseline` refuses anything else)
    heldout: BaselineHeldout
    regression: dict[str, GatedRegression]  # the baseline adapter's scores: the vs_baseline/<task> reference
    base_regression: dict[str, RegressionScore]  # the base model's scores: the forgetting/<task> reference
    library_versions: dict[str, str]
    format: str = BASELINE_FORMAT


@dataclass
class BaselineCache:
    """$HARNESS_CACHE/baselines/<eval>-<key>.json: base-model scores, computed once per key."""

    key: str
    eval_set_hash: str
    model_id: str
    model_hash: str
    zero_shot: HeldoutResult | None  # each None until a caller needed it
    prompt_baseline: HeldoutResult | None
    regression: dict[str, RegressionScore]
    format: str = BASELINE_CACHE_FORMAT


# ---------------------------------------------------------------------------------------------------------
# On-policy preference pairs (harness.pairs): the provenance sidecar <pairs file>.provenance.json


@dataclass
class MiningCounts:
    pool_prompts: int  # distinct pool rows read (exact duplicates removed)
    excluded_overlap: int  # pool prompts dropped because they overlap a held-out prompt (any split)
    prompts_mined: int  # pool prompts generated for (pool_prompts - excluded_overlap)
    outputs_graded: int  # greedy + sampled outputs
    prompts_with_error: int  # prompts with at least one output below full credit
    wrong_outputs: int  # outputs below full credit
    duplicate_pairs_dropped: int  # a wrong output repeated for the same prompt
    unusable_outputs: int  # wrong outputs that cannot be a training answer (empty, or a chat role marker)
    pairs_written: int
    greedy_score: float  # the policy's mean headline grade on the mined prompts, greedy as in evaluation


@dataclass
class MinedPairsRecord:
    pairs_sha256: str  # of the pairs file's bytes
    pairs_file: str  # where it was written (informational; the hash is its identity)
    pool_sha256: str  # of the pool file's bytes
    pool_file: str
    adapter_hash: str | None  # the SFT policy's adapter (harness.model.adapter_hash); None if the caller gave none
    source: dict[str, Any]  # what the caller said the policy is (adapter path, base_model_hash, eval_set_hash ...)
    mining: dict[str, Any]  # samples, temperature, top_p, max_pairs, seed, max_new_tokens, batch_size
    grader_versions: dict[str, str]
    counts: MiningCounts
    excluded: list[str]  # file:line of the pool rows dropped for overlapping the held-out set
    device: str
    libraries: dict[str, str]
    harness_revision: str
    command: str  # rebuilds the file (bit-identical on CPU at the same thread count)
    format: str = MINED_PAIRS_FORMAT
