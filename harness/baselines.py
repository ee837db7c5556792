"""Baselines, computed once per key (`baseline_key`: everything that changes their numbers) and cached on disk.

"Should you fine-tune at all?" needs two numbers before any training: the base model zero-shot, and the base
model with a prompt-engineered baseline (a system instruction + k few-shot examples from the *training* split).
Both, and the base model's regression scores, are cached under `$HARNESS_CACHE/baselines/`, so a sweep pays for
them once, not once per trial.

    baselines = get_baselines(base, cfg, eval_set_hash, heldout, fewshot_pool)

Which held-out baselines are computed is the caller's choice (`which`): a single run computes both; a sweep's
trials compute the zero-shot one on the selection split only (for orientation: no verdict reads the selection
split's baselines), and the reporting split only the one its "was fine-tuning needed?" verdict reads
(`verdict_baseline`). A cache entry holds what has been computed under its key; what a later caller needs and it
lacks is computed then and added to it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, replace

from harness.config import RunConfig
from harness.data import Conversation
from harness.evaluate import HeldoutExample, evaluate_heldout
from harness.model import BaseModel, cache_root
from harness.records import (
    BaselineCache,
    BaselineScores,
    RecordError,
    RegressionScore,
    read_record,
    write_record,
)

log = logging.getLogger(__name__)

HELDOUT_BASELINES = ("zero_shot", "prompt_baseline")
# What a sweep scores on the selection split, where no verdict reads a baseline: zero-shot, for the report's
# orientation (fixed/broken examples). The prompt baseline, the expensive one (few-shot prompts), is scored once,
# on the reporting split (`verdict_baseline`, harness.reporting).
SELECTION_BASELINES = ("zero_shot",)


def baseline_key(base: BaseModel, cfg: RunConfig, eval_set_hash: str, fewshot: list[Conversation]) -> str:
    """Everything that changes the base model's scores, hashed: a cache hit is the same numbers, never stale ones.

    The base model's content, quantization and kernels; the tokenizer and chat template; the eval set and split
    (`eval_set_hash`: data, graders, generation, prompt baseline, split); the few-shot examples actually used
    (taken from the training file, so a new training file is a new key; none for train=dpo); the generation
    settings; each regression benchmark's settings and its task's version, YAML, code and data hashes; and the
    library versions.
    """
    from harness.artifacts import library_versions
    from harness.run import tokenizer_identity

    regression = []
    if cfg.run_regression:
        regression = [_benchmark_identity(b, f"eval.regression[{i}]") for i, b in enumerate(cfg.eval.regression)]
    identity = {
        "model_hash": base.model_hash,
        "quantized": base.quantized,
        "compute_dtype": str(base.compute_dtype),
        "attn_implementation": base.attn_implementation,
        "tokenizer": asdict(tokenizer_identity(base.tokenizer)),
        "eval_set_hash": eval_set_hash,
        "fewshot": [[asdict(m) for m in shot.messages] for shot in fewshot],
        "prompt_baseline": asdict(cfg.eval.prompt_baseline),
        "generation": asdict(cfg.eval.generation),
        "regression": regression,
        "regression_batch_size": cfg.eval.regression_batch_size,
        "library_versions": library_versions(),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _benchmark_identity(benchmark, key: str) -> dict:
    """A benchmark's settings and its task's content hashes; the paths it names (data_files, include_path) are left
    out, so the same files spelled another way are the same key, and edited files are another."""
    from harness.benchmarks import check_benchmark, task_identity

    # checked, not only resolved: a missing task requirement fails here, before the baselines generate anything
    settings = {name: value for name, value in asdict(benchmark).items() if name not in ("data_files", "include_path")}
    return {**settings, "identity": task_identity(check_benchmark(benchmark, key))}


def fewshot_examples(cfg: RunConfig, fewshot_pool: list[Conversation]) -> list[Conversation]:
    """The prompt baseline's few-shot examples: the first num_fewshot training conversations (none if disabled)."""
    if not cfg.eval.prompt_baseline.enabled:
        return []
    return fewshot_pool[: cfg.eval.prompt_baseline.num_fewshot]


def get_baselines(
    base: BaseModel,
    cfg: RunConfig,
    eval_set_hash: str,
    heldout: list[HeldoutExample],
    fewshot_pool: list[Conversation],
    known_regression: dict[str, RegressionScore] | None = None,
    which: tuple[str, ...] = HELDOUT_BASELINES,
) -> BaselineScores:
    """The base model's scores: computed and cached on a miss, read from the cache on a hit.

    `known_regression`: the base model's regression scores already measured under the same key ingredients (a
    sweep's trials, when its chosen adapters are scored on the reporting split): reused instead of lm-eval.
    `which`: the held-out baselines wanted, of HELDOUT_BASELINES (the prompt baseline only if the eval set enables
    it); the others are None unless the cache already holds them.
    """
    unknown = set(which) - set(HELDOUT_BASELINES)
    if unknown:
        raise ValueError(f"unknown baselines {sorted(unknown)}: expected some of {HELDOUT_BASELINES}")
    shots = fewshot_examples(cfg, fewshot_pool)
    key = baseline_key(base, cfg, eval_set_hash, shots)
    path = cache_root() / "baselines" / f"{cfg.eval.name}-{key}.json"
    record = _read_cache(path)
    wanted = [name for name in which if name == "zero_shot" or cfg.eval.prompt_baseline.enabled]
    missing = [name for name in wanted if record is None or getattr(record, name) is None]
    cached = record is not None and not missing
    if cached:
        log.info("Baselines for eval set %s read from cache %s", eval_set_hash, path)
    else:
        log.info("Computing baselines %s for eval set %s (cached afterwards in %s)",
                 ", ".join(missing) or "regression", eval_set_hash, path)
        record = _compute_baselines(base, cfg, key, eval_set_hash, heldout, shots, known_regression, missing, record)
        write_record(path, record)
    # Exactly what was asked for, whatever else the cache holds: a record does not depend on what ran before it.
    zero_shot = record.zero_shot if "zero_shot" in wanted else None
    prompt = record.prompt_baseline if "prompt_baseline" in wanted else None
    return BaselineScores(
        key=key, cached=cached, zero_shot=zero_shot, prompt_baseline=prompt,
        prompting_meets_min_score=bool(prompt and prompt.score >= cfg.eval.min_score),
        regression=record.regression,
    )


def _read_cache(path) -> BaselineCache | None:
    if not path.is_file():
        return None
    try:
        return read_record(BaselineCache, path)
    except RecordError as err:  # a cache entry of another harness version: recompute it (we wrote it)
        log.warning("Ignoring unreadable baseline cache entry (%s); recomputing", err)
        return None


def verdict_baseline(cfg: RunConfig) -> tuple[str, ...]:
    """The held-out baseline "was fine-tuning needed?" compares with: the prompt baseline, or zero-shot without it."""
    return ("prompt_baseline",) if cfg.eval.prompt_baseline.enabled else ("zero_shot",)


def _compute_baselines(base, cfg, key, eval_set_hash, heldout, shots, known_regression, missing,
                       cached: BaselineCache | None) -> BaselineCache:
    """The `missing` held-out baselines, and the regression scores unless `cached` has them; the rest from `cached`."""
    model, tokenizer = base.model, base.tokenizer
    zero_shot = cached.zero_shot if cached else None
    prompt_baseline = cached.prompt_baseline if cached else None
    if "zero_shot" in missing:
        zero_shot = evaluate_heldout(model, tokenizer, cfg.eval, heldout)
    if "prompt_baseline" in missing:
        prompt_baseline = evaluate_heldout(
            model, tokenizer, cfg.eval, heldout, cfg.eval.prompt_baseline.system_prompt, shots
        )
    if cached is not None:
        return replace(cached, zero_shot=zero_shot, prompt_baseline=prompt_baseline)
    regression = dict(known_regression or {})
    if cfg.run_regression and cfg.eval.regression and known_regression is None:
        from harness.regression import score_regression

        regression = score_regression(model, tokenizer, cfg.eval)
    return BaselineCache(key=key, eval_set_hash=eval_set_hash, model_id=base.model_id, model_hash=base.model_hash,
                         zero_shot=zero_shot, prompt_baseline=prompt_baseline, regression=regression)
