"""lm-eval regression benchmarks on an in-memory model: did fine-tuning make the model forget?

    scores = score_regression(model, tokenizer, cfg.eval)        # one RegressionScore per task, keyed by name
    scores = run_benchmark(model, tokenizer, RegressionBenchmark(task="arc_easy", data_files={"test": "arc.jsonl"}))
    mc = scores["arc_easy"]    # .metric/.score/.stderr (the chosen metric), .metrics (every metric), .per_example

`model` is a transformers causal LM or a peft PeftModel (the adapter is evaluated as it is attached). Which task a
benchmark names and on what data: harness.benchmarks. Each benchmark is one `simple_evaluate` call, seeded on its own
exactly as lm-eval's own entry point (`lm_eval run --seed S`) seeds, so that its numbers equal lm-eval's CLI for
the same model, task, limit and settings (docs/benchmarks.md says which settings must match).
"""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path

import lm_eval
from lm_eval.models.huggingface import HFLM

from harness.benchmarks import (
    REGRESSION_TASKS_DIR,
    check_benchmark,
    task_code_files,
    task_identity,
    task_version,
)
from harness.config import RegressionBenchmark
from harness.records import RegressionScore

__all__ = ["REGRESSION_TASKS_DIR", "RegressionScore", "regression_task_versions", "run_benchmark", "run_regression",
           "score_regression"]


def run_benchmark(model, tokenizer, benchmark: RegressionBenchmark, batch_size: int = 8, seed: int = 0,
                  key: str = "benchmark") -> dict[str, RegressionScore]:
    """Score `model` on one benchmark; one RegressionScore per leaf task (a group gives several).

    batch_size: used when the benchmark sets none; recorded, because some tasks' scores change with it.
    seed: lm-eval's python, numpy, torch and few-shot seeds, all four (as `lm_eval run --seed <seed>`).
    key: the benchmark's dotted config key, named in errors (eval.regression[0]).
    """
    # 1. Resolve and check the task before any model call: unknown names, missing data files, modules, NLTK data.
    task = check_benchmark(benchmark, key)
    batch_size = benchmark.batch_size or batch_size

    # 2. Evaluate, seeded by simple_evaluate exactly as `lm_eval run --seed <seed>` seeds (all four seeds). lm-eval
    #    seeds first and builds the task afterwards, importing its code, and some scorers draw from Python's global
    #    RNG: so the task goes in by name (or as a YAML naming its local data), never built here before seeding,
    #    and its own modules are imported afresh, so that their import-time draws recur at every call as in a fresh
    #    process. HFLM switches the model to eval mode (no dropout); the caller's mode is restored.
    was_training = model.training
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        with tempfile.TemporaryDirectory(prefix="harness-task-") as folder:
            spec = task.spec(Path(folder))
            _forget_task_code(task)
            results = lm_eval.simple_evaluate(
                model=lm,
                tasks=[spec],
                task_manager=task.manager,
                limit=benchmark.limit,
                num_fewshot=benchmark.num_fewshot,
                gen_kwargs={"max_gen_toks": benchmark.max_gen_toks} if benchmark.max_gen_toks else None,
                log_samples=True,
                apply_chat_template=benchmark.apply_chat_template,
                # lm_eval run's default: few-shot examples as turns exactly when the chat template is applied
                fewshot_as_multiturn=benchmark.apply_chat_template,
                random_seed=seed,
                numpy_random_seed=seed,
                torch_random_seed=seed,
                fewshot_random_seed=seed,
            )
    finally:
        model.train(was_training)

    # 4. One score per leaf task (groups are aggregates of these and carry no per-doc scores).
    identity = task_identity(task)
    scores = {}
    for name in results["samples"]:
        score = _regression_score(results, name, benchmark.metric, key, lm.max_gen_toks)
        score.batch_size, score.limit, score.seed = batch_size, benchmark.limit, seed
        score.apply_chat_template = benchmark.apply_chat_template
        score.task_identity = identity
        scores[name] = score
    return scores


def _forget_task_code(task) -> None:
    """Drop the task's own modules from sys.modules, so that lm-eval imports (runs) them again after seeding; lm-eval
    itself keeps a task module it loaded once. A library the task imports is imported once per process: draws at
    its first import are not repeated (docs/benchmarks.md)."""
    files = set(task_code_files(task))
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if path and Path(path).resolve() in files:
            del sys.modules[name]
            parent, _, child = name.rpartition(".")
            if getattr(sys.modules.get(parent), child, None) is module:  # `from package import child` reuses it
                delattr(sys.modules[parent], child)


def score_regression(model, tokenizer, eval_cfg) -> dict[str, RegressionScore]:
    """The eval set's regression benchmarks, each with its own settings (and eval.regression_batch_size unless set).

    On CPU the NF4 weights are dequantized once for the whole evaluation (see model.fast_cpu_inference).
    """
    from harness.model import fast_cpu_inference

    scores: dict[str, RegressionScore] = {}
    with fast_cpu_inference(model):
        for index, benchmark in enumerate(eval_cfg.regression):
            scores.update(run_benchmark(model, tokenizer, benchmark, eval_cfg.regression_batch_size,
                                        key=f"eval.regression[{index}]"))
    return scores


def check_regression(eval_cfg) -> None:
    """Every benchmark of the eval set resolved and checked (no model): ValueError naming eval.regression[i]."""
    for index, benchmark in enumerate(eval_cfg.regression):
        check_benchmark(benchmark, f"eval.regression[{index}]")


def run_regression(model, tokenizer, tasks: list[str], batch_size: int = 8, limit: int | None = None,
                   include_path: str | None = None, apply_chat_template: bool = True,
                   seed: int = 0) -> dict[str, RegressionScore]:
    """Several tasks by name with the same settings, each run (and seeded) as its own benchmark."""
    scores: dict[str, RegressionScore] = {}
    for name in tasks:
        benchmark = RegressionBenchmark(task=name, limit=limit, include_path=include_path,
                                        apply_chat_template=apply_chat_template)
        scores.update(run_benchmark(model, tokenizer, benchmark, batch_size, seed))
    return scores


def regression_task_versions(tasks: list[str], include_path: str | None = None) -> dict[str, str]:
    """`metadata.version` of each named task, read from its YAML without loading data or a model."""
    from harness.benchmarks import resolve_benchmark

    return {name: task_version(resolve_benchmark(RegressionBenchmark(task=name, include_path=include_path)))
            for name in tasks}


def _regression_score(results: dict, task: str, wanted: str | None, key: str, default_max_gen_toks: int
                      ) -> RegressionScore:
    samples = results["samples"][task]
    config = results["configs"][task]
    task_results = results["results"][task]
    metrics = {name: float(value) for name, value in task_results.items()
               if "," in name and "_stderr," not in name and isinstance(value, (int, float)) and not isinstance(value, bool)}
    # Tasks with several filters (e.g. gsm8k's strict-match / flexible-extract) log each doc once per filter; the
    # first filter in the task's filter_list is the primary one.
    if wanted is not None and "," in wanted:
        metric, filter_name = wanted.split(",", 1)
    else:
        metric_names = [m["metric"] for m in config.get("metric_list") or []] or list(samples[0]["metrics"])
        is_mc = config["output_type"] == "multiple_choice"
        metric = wanted or ("acc" if is_mc and "acc" in metric_names else metric_names[0])
        filter_name = samples[0]["filter"]
    if f"{metric},{filter_name}" not in metrics:
        raise ValueError(f"{key}.metric={wanted or metric!r}: task {task!r} reported {', '.join(metrics)} "
                         "(name one of them, as name or name,filter)")
    per_doc = sorted((s["doc_id"], s[metric]) for s in samples if s["filter"] == filter_name)
    if any(not isinstance(value, (int, float, bool)) for _, value in per_doc):
        per_doc_metrics = [m for m in metrics if all(isinstance(s.get(m.split(",")[0]), (int, float, bool))
                                                     for s in samples)]
        raise ValueError(
            f"{key}.metric={metric!r}: task {task!r} computes it over the whole corpus (its per-doc values are not "
            "numbers), so it has no per-example scores for paired comparison; choose one of "
            f"{', '.join(per_doc_metrics) or 'none'}")
    stderr = task_results.get(f"{metric}_stderr,{filter_name}")
    generation = config.get("generation_kwargs") or {}
    return RegressionScore(
        task=task,
        metric=metric,
        score=metrics[f"{metric},{filter_name}"],
        stderr=float(stderr) if isinstance(stderr, (int, float)) else math.nan,
        n=len(per_doc),
        per_example=[float(value) for _, value in per_doc],
        task_version=str(results["versions"][task]),
        metrics=metrics,
        filter=filter_name,
        num_fewshot=int(config.get("num_fewshot") or 0),
        # generation length as lm-eval used it: the task's (or the override's), else the model wrapper's default
        max_gen_toks=int(generation.get("max_gen_toks", default_max_gen_toks))
        if config["output_type"] == "generate_until" else None,
    )
