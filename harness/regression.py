"""lm-eval regression benchmarks on an in-memory model: did fine-tuning make the model forget?

    scores = run_regression(model, tokenizer, ["harness_general_mc", "harness_instruct_follow"])
    mc = scores[task_name]    # for "harness_general_mc": its acc, with .stderr, .n, .task_version
    mc.per_example            # one score per doc, in doc_id order (paired stats)

`model` is a transformers causal LM or a peft PeftModel (the adapter is evaluated as it is attached).
Task names are looked up among lm-eval's own tasks (hellaswag, arc_easy, ... when their data is
reachable), the project's tasks under evals/regression/ and the YAMLs under `include_path`.

Data paths: lm-eval hands `dataset_kwargs.data_files` to `datasets.load_dataset` unchanged, so a
relative path is read relative to the current working directory. Here, a relative data_files path in
an out-of-tree task YAML (evals/regression/ or `include_path`) is resolved against that YAML's folder,
like lm-eval's own `include:` and `!function`, and the task is passed to lm-eval as a config dict. Tasks
that ship with lm-eval are passed by name, untouched.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import lm_eval
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from lm_eval.tasks._index import Kind
from lm_eval.tasks._yaml_loader import load_yaml

from harness.records import RegressionScore

REGRESSION_TASKS_DIR = Path(__file__).resolve().parent.parent / "evals" / "regression"
_LM_EVAL_TASKS_DIR = Path(lm_eval.__file__).resolve().parent / "tasks"


def run_regression(
    model,
    tokenizer,
    tasks: list[str],
    batch_size: int = 8,
    limit: int | None = None,
    include_path: str | None = None,
    apply_chat_template: bool = True,
    seed: int = 0,
) -> dict[str, RegressionScore]:
    """Score `model` on lm-eval `tasks`; returns one RegressionScore per leaf task, keyed by task name.

    batch_size: recorded with the results by the caller; some tasks' scores change with it (padding).
    limit: score only the first `limit` docs of each task (tests, quick checks).
    apply_chat_template: render prompts with the tokenizer's chat template. On by default because the
        project's tasks are written for instruct models (harness_instruct_follow needs it); compare
        two models only at the same setting.
    seed: seeds python, numpy, torch and the few-shot sampler, so reruns give the same numbers.
    """
    # 1. Index lm-eval's tasks, the project's and the user's; refuse unknown names before loading a thing.
    task_manager = _task_manager(include_path)
    task_specs = [_task_spec(task_manager, name) for name in tasks]

    # 2. Evaluate. HFLM switches the model to eval mode (no dropout); the caller's mode is restored.
    was_training = model.training
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=task_specs,
            task_manager=task_manager,
            limit=limit,
            log_samples=True,
            apply_chat_template=apply_chat_template,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    finally:
        model.train(was_training)

    # 3. One score per leaf task (groups are aggregates of these and carry no per-doc scores).
    return {task: _regression_score(results, task) for task in results["samples"]}


def score_regression(model, tokenizer, eval_cfg) -> dict[str, RegressionScore]:
    """The eval set's regression benchmarks, each with its own `limit` and the batch size recorded.

    On CPU the NF4 weights are dequantized once for the whole evaluation (see model.fast_cpu_inference).
    """
    from harness.model import fast_cpu_inference

    scores: dict[str, RegressionScore] = {}
    with fast_cpu_inference(model):
        for benchmark in eval_cfg.regression:
            results = run_regression(
                model, tokenizer, [benchmark.task], batch_size=eval_cfg.regression_batch_size, limit=benchmark.limit
            )
            for task, score in results.items():
                score.batch_size, score.limit = eval_cfg.regression_batch_size, benchmark.limit
                scores[task] = score
    return scores


def regression_task_versions(tasks: list[str], include_path: str | None = None) -> dict[str, str]:
    """`metadata.version` of each named task, read from its YAML without loading data or a model."""
    task_manager = _task_manager(include_path)
    versions = {}
    for name in tasks:
        _check_known(task_manager, name)
        entry = task_manager.task_index[name]
        config = load_yaml(entry.yaml_path, resolve_func=False) if entry.yaml_path else (entry.cfg or {})
        versions[name] = str((config.get("metadata") or {}).get("version", "unversioned"))
    return versions


def regression_task_identity(name: str, include_path: str | None = None) -> dict[str, str]:
    """What decides a task's scores besides the model: its version, the bytes of its YAML (prompt, metrics) and
    of the other files in a project task's folder (utils.py), and its local data files. Editing a task's JSONL
    changes this; a hub-hosted dataset is identified by the task YAML (its dataset name and revision) and the
    lm-eval version, which the baseline cache key also holds."""
    task_manager = _task_manager(include_path)
    _check_known(task_manager, name)
    entry = task_manager.task_index[name]
    identity = {"version": regression_task_versions([name], include_path)[name]}
    if entry.yaml_path is None:
        return identity
    yaml_path = Path(entry.yaml_path).resolve()
    identity["yaml_sha256"] = _sha256(yaml_path.read_bytes())
    if yaml_path.is_relative_to(_LM_EVAL_TASKS_DIR):
        return identity
    for path in sorted(yaml_path.parent.glob("*.py")):
        identity[f"{path.name}_sha256"] = _sha256(path.read_bytes())
    spec = _task_spec(task_manager, name)
    data_files = (spec.get("dataset_kwargs") or {}).get("data_files") if isinstance(spec, dict) else None
    for index, data_file in enumerate(_flat_files(data_files)):
        if "://" not in data_file and Path(data_file).is_file():
            identity[f"data_{index}_sha256"] = _sha256(Path(data_file).read_bytes())
    return identity


def _flat_files(data_files) -> list[str]:
    if data_files is None:
        return []
    if isinstance(data_files, dict):
        return [f for files in data_files.values() for f in _flat_files(files)]
    if isinstance(data_files, list):
        return [f for files in data_files for f in _flat_files(files)]
    return [str(data_files)]


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


@functools.lru_cache(maxsize=4)
def _task_manager(include_path: str | None) -> TaskManager:
    # Indexing lm-eval's ~15k task YAMLs takes seconds; a sweep calls this once per trial.
    include_paths = [str(REGRESSION_TASKS_DIR)] + ([str(include_path)] if include_path else [])
    return TaskManager(include_path=include_paths)


def _check_known(task_manager: TaskManager, name: str) -> None:
    if name not in task_manager.task_index:
        raise ValueError(
            f"unknown lm-eval task {name!r}: not one of lm-eval's tasks, groups or tags, nor defined under "
            f"{REGRESSION_TASKS_DIR} or include_path"
        )


def _task_spec(task_manager: TaskManager, name: str) -> str | dict[str, Any]:
    """The name, or for an out-of-tree task with relative data_files its config with them made absolute."""
    _check_known(task_manager, name)
    entry = task_manager.task_index[name]
    if entry.kind != Kind.TASK or entry.yaml_path is None:
        return name
    yaml_path = Path(entry.yaml_path).resolve()
    if yaml_path.is_relative_to(_LM_EVAL_TASKS_DIR):
        return name
    config = load_yaml(yaml_path, resolve_func=True)
    data_files = (config.get("dataset_kwargs") or {}).get("data_files")
    if data_files is None:
        return name
    config["dataset_kwargs"] = {
        **config["dataset_kwargs"],
        "data_files": _absolute_data_files(data_files, yaml_path.parent),
    }
    return config


def _absolute_data_files(data_files: str | list | dict, base: Path) -> str | list | dict:
    # data_files takes the three shapes datasets.load_dataset accepts: a path, a list, {split: path(s)}.
    if isinstance(data_files, dict):
        return {split: _absolute_data_files(files, base) for split, files in data_files.items()}
    if isinstance(data_files, list):
        return [_absolute_data_files(files, base) for files in data_files]
    path = Path(data_files).expanduser()
    # Remote URLs ("hf://", "https://") are left to datasets.
    return data_files if "://" in data_files or path.is_absolute() else str(base / path)


def _regression_score(results: dict, task: str) -> RegressionScore:
    samples = results["samples"][task]
    config = results["configs"][task]
    metric_names = [m["metric"] for m in config.get("metric_list") or []] or samples[0]["metrics"]
    is_mc = config["output_type"] == "multiple_choice"
    metric = "acc" if is_mc and "acc" in metric_names else metric_names[0]
    # Tasks with several filters (e.g. gsm8k's strict-match / flexible-extract) log each doc once per
    # filter; the first filter in the task's filter_list is the primary one.
    filter_name = samples[0]["filter"]
    per_doc = sorted((s["doc_id"], s[metric]) for s in samples if s["filter"] == filter_name)
    if any(not isinstance(value, (int, float, bool)) for _, value in per_doc):
        raise ValueError(
            f"task {task!r}: metric {metric!r} is corpus-level (per-doc values are not numbers), "
            "so it has no per-example scores for paired comparison; use a task with a per-doc metric"
        )
    task_results = results["results"][task]
    stderr = task_results.get(f"{metric}_stderr,{filter_name}")
    return RegressionScore(
        task=task,
        metric=metric,
        score=float(task_results[f"{metric},{filter_name}"]),
        stderr=float(stderr) if isinstance(stderr, (int, float)) else math.nan,
        n=len(per_doc),
        per_example=[float(value) for _, value in per_doc],
        task_version=str(results["versions"][task]),
    )
