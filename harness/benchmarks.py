"""Which lm-eval task a regression benchmark entry names, on what data, and whether it can run here: resolved and
checked without loading a model and without running the task's own code.

    task = resolve_benchmark(benchmark)            # a BenchmarkTask: name, YAML, local-data overrides
    check_benchmark(benchmark, "eval.regression[0]")   # ValueError naming the key: unknown task, missing data file,
                                                   # a Python module or NLTK data the task's code needs but lacks
    task_identity(task)                            # content hashes of what decides its numbers (baseline cache key)

A benchmark names a task lm-eval knows (its own ~15k YAMLs), one of the project's tasks under evals/regression/,
or a task in the benchmark's `include_path` (a folder anywhere on disk, as `lm_eval --include_path`). With
`data_files`, the task's dataset is replaced by local files in the task's own schema (`dataset_path: json` /
`parquet` / `csv`), which is how a standard task runs offline. A relative data_files path in an out-of-tree task
YAML is read against that YAML's folder (lm-eval alone reads it against the working directory).

The requirement checks are static (the task's Python files are parsed, not imported): importing a task's code
runs it (ifeval's module downloads NLTK data at import and prints "Downloaded" even when offline), and imports can
draw from Python's global RNG, which must happen after seeding, exactly as in lm-eval's own entry point.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lm_eval
from lm_eval.tasks import TaskManager
from lm_eval.tasks._index import Kind
from lm_eval.tasks._yaml_loader import load_yaml

from harness.artifacts import resolve_path
from harness.config import RegressionBenchmark

REGRESSION_TASKS_DIR = Path(__file__).resolve().parent.parent / "evals" / "regression"
LM_EVAL_TASKS_DIR = Path(lm_eval.__file__).resolve().parent / "tasks"
_LOADERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
_SPLIT_KEYS = ("training_split", "validation_split", "test_split", "fewshot_split")


@dataclass
class BenchmarkTask:
    """A benchmark resolved against lm-eval's task index: what `simple_evaluate` is given."""

    name: str
    kind: Kind
    yaml_path: Path | None  # None for a tag or a Python-defined task
    include_path: str | None
    manager: TaskManager = field(repr=False)  # the index it was found in: simple_evaluate loads it from there
    # keys replacing the task YAML's own (local data); empty: lm-eval builds the task from its name, untouched
    overrides: dict[str, Any] = field(default_factory=dict)
    data_files: dict[str, Path] = field(default_factory=dict)  # split -> absolute local file, as scored

    def spec(self, folder: Path) -> str:
        """The task as lm-eval's TaskManager.load takes it: its name, or with overrides the path of a YAML written
        into `folder` that includes the task's own YAML and replaces those keys (what an lm-eval user writes). Either
        way lm-eval resolves the task's functions, importing its code, when it loads it: after seeding."""
        if not self.overrides:
            return self.name
        import yaml

        path = folder / f"{self.name}.yaml"
        path.write_text(yaml.safe_dump({"include": str(self.yaml_path), **self.overrides}, sort_keys=False),
                        encoding="utf-8")
        return str(path)


def resolve_benchmark(benchmark: RegressionBenchmark, key: str = "benchmark") -> BenchmarkTask:
    """The benchmark's task in lm-eval's index with its local-data overrides; ValueError naming `key` otherwise."""
    include_path = _include_path(benchmark, key)
    # The project's and the user's tasks are indexed in milliseconds; lm-eval's ~15k YAMLs take seconds, so they are
    # indexed only for a task found nowhere else (or a group or tag, whose members may be lm-eval's).
    manager = task_manager(include_path, with_lm_eval=False)
    local = manager.task_index.get(benchmark.task)
    if local is None or local.kind != Kind.TASK:
        manager = task_manager(include_path)
    if benchmark.task not in manager.task_index:
        where = f", nor in include_path {include_path}" if include_path else " (a task of your own: set include_path)"
        raise ValueError(f"{key}.task={benchmark.task!r}: unknown lm-eval task: not one of lm-eval's tasks, groups or "
                         f"tags, nor defined under {REGRESSION_TASKS_DIR}{where}")
    entry = manager.task_index[benchmark.task]
    yaml_path = Path(entry.yaml_path).resolve() if entry.yaml_path else None
    task = BenchmarkTask(benchmark.task, entry.kind, yaml_path, include_path, manager)
    if benchmark.data_files is not None:
        if entry.kind != Kind.TASK or yaml_path is None:
            raise ValueError(f"{key}.data_files: {benchmark.task!r} is a group or tag of several tasks, each with its "
                             "own data; point data_files at one task (or write a task folder: include_path)")
        task.data_files = {split: _data_file(f"{key}.data_files.{split}", path)
                           for split, path in benchmark.data_files.items()}
        task.overrides = _local_data_overrides(_raw_config(yaml_path), task.data_files, key)
        _check_fewshot_source({**_raw_config(yaml_path), **task.overrides}, benchmark, key)
    elif entry.kind == Kind.TASK and yaml_path is not None and not yaml_path.is_relative_to(LM_EVAL_TASKS_DIR):
        # An out-of-tree task: relative data_files are read against its YAML's folder, not the working directory.
        data_files = (_raw_config(yaml_path).get("dataset_kwargs") or {}).get("data_files")
        if data_files is not None:
            absolute = _absolute_data_files(data_files, yaml_path.parent)
            task.overrides = {"dataset_kwargs": {**_raw_config(yaml_path)["dataset_kwargs"], "data_files": absolute}}
            task.data_files = {str(i): Path(f) for i, f in enumerate(_flat_files(absolute)) if "://" not in f}
    return task


def check_benchmark(benchmark: RegressionBenchmark, key: str = "benchmark") -> BenchmarkTask:
    """Everything that can be known before a model loads: the task exists, its data files and metric are there,
    and the Python modules and NLTK data its code needs are installed. Raises ValueError naming `key`."""
    task = resolve_benchmark(benchmark, key)
    for path in task.data_files.values():
        if not path.is_file():
            raise ValueError(f"{key}: task {task.name!r} reads {path}, which does not exist")
    if task.yaml_path is not None and task.kind == Kind.TASK:
        config = _raw_config(task.yaml_path)
        _check_metric(benchmark, config, key)
        _check_requirements(task.name, task.yaml_path, config, key)
    return task


def task_identity(task: BenchmarkTask) -> dict[str, str]:
    """What decides a task's scores besides the model and the settings: its version, the bytes of its YAMLs (with
    includes) and of its Python files, and of its local data files, keyed by split (never by path). A hub-hosted
    dataset is identified by the task YAML (dataset name, revision) and the lm-eval version, which the baseline cache
    key also holds."""
    identity = {"version": task_version(task)}
    if task.yaml_path is None:
        return identity
    for index, path in enumerate(_yaml_chain(task.yaml_path)):
        identity[f"yaml_{index}_sha256"] = _sha256_file(path)
    for path in task_code_files(task):
        identity[f"code_{path.name}_sha256"] = _sha256_file(path)
    for split, path in sorted(task.data_files.items()):
        identity[f"data_{split}_sha256"] = _sha256_file(path) if path.is_file() else "missing"
    return identity


def task_code_files(task: BenchmarkTask) -> list[Path]:
    """The task's own Python files: its `!function` modules and the local or lm-eval task modules they import."""
    if task.yaml_path is None or task.kind != Kind.TASK:
        return []
    return _task_code(task.yaml_path, _raw_config(task.yaml_path))


def task_version(task: BenchmarkTask) -> str:
    if task.yaml_path is None:
        entry_cfg = task.manager.task_index[task.name].cfg or {}
        return str((entry_cfg.get("metadata") or {}).get("version", "unversioned"))
    return str((_raw_config(task.yaml_path).get("metadata") or {}).get("version", "unversioned"))


@functools.lru_cache(maxsize=8)
def task_manager(include_path: str | None, with_lm_eval: bool = True) -> TaskManager:
    """lm-eval's task index over evals/regression/ and `include_path` (and, with_lm_eval, lm-eval's own tasks, which
    takes seconds: cached, as a sweep asks once per trial and benchmark)."""
    include_paths = [str(REGRESSION_TASKS_DIR)] + ([include_path] if include_path else [])
    return TaskManager(include_path=include_paths, include_defaults=with_lm_eval)


# ---------------------------------------------------------------------------------------------------------
# Resolution


def _include_path(benchmark: RegressionBenchmark, key: str) -> str | None:
    if benchmark.include_path is None:
        return None
    path = resolve_path(benchmark.include_path).resolve()
    if not path.is_dir():
        raise ValueError(f"{key}.include_path={benchmark.include_path}: not a directory")
    return str(path)


def _data_file(key: str, path: str) -> Path:
    resolved = resolve_path(path).resolve()
    if not resolved.is_file():
        raise ValueError(f"{key}={path}: file not found")
    if resolved.suffix.lower() not in _LOADERS:
        raise ValueError(f"{key}={path}: expected a {', '.join(_LOADERS)} file")
    return resolved


def _local_data_overrides(config: dict[str, Any], data_files: dict[str, Path], key: str) -> dict[str, Any]:
    """The task's dataset keys replaced by local files; splits the files do not provide are dropped."""
    loaders = {_LOADERS[path.suffix.lower()] for path in data_files.values()}
    if len(loaders) > 1:
        raise ValueError(f"{key}.data_files: mixes {' and '.join(sorted(loaders))} files; use one format")
    overrides: dict[str, Any] = {
        "dataset_path": loaders.pop(),
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {split: str(path) for split, path in data_files.items()}},
    }
    for split_key in _SPLIT_KEYS:
        if config.get(split_key) is not None and config[split_key] not in data_files:
            overrides[split_key] = None
    eval_splits = [config.get(k) for k in ("test_split", "validation_split") if config.get(k) in data_files]
    if not eval_splits:
        wanted = " or ".join(repr(config[k]) for k in ("test_split", "validation_split") if config.get(k))
        raise ValueError(f"{key}.data_files names {', '.join(map(repr, data_files))}: task {config['task']!r} "
                         f"scores its {wanted or 'test'} split; name that split's file")
    return overrides


def _check_fewshot_source(config: dict[str, Any], benchmark: RegressionBenchmark, key: str) -> None:
    """Few-shot examples come from the fewshot or training split (or samples in the YAML): refuse now, not mid-run."""
    shots = benchmark.num_fewshot if benchmark.num_fewshot is not None else config.get("num_fewshot") or 0
    samples = (config.get("fewshot_config") or {}).get("samples")
    if shots and not samples and config.get("fewshot_split") is None and config.get("training_split") is None:
        where = "num_fewshot" if benchmark.num_fewshot is not None else "data_files"
        raise ValueError(f"{key}.{where}: task {config['task']!r} takes {shots} few-shot examples from its training "
                         "split, and data_files has none: add its file (train: ...) or set num_fewshot: 0")


def _raw_config(yaml_path: Path) -> dict[str, Any]:
    """The task YAML with its includes merged and its functions left as paths: nothing of the task's code runs."""
    return load_yaml(yaml_path, resolve_func=False)


def _yaml_chain(yaml_path: Path) -> list[Path]:
    """The YAML and every YAML it includes, recursively, in include order."""
    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    _Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    chain = [yaml_path]
    includes = (yaml.load(yaml_path.read_text(encoding="utf-8"), Loader=_Loader) or {}).get("include") or []
    for include in includes if isinstance(includes, list) else [includes]:
        path = Path(include) if Path(include).is_absolute() else yaml_path.parent / include
        chain += _yaml_chain(path.resolve())
    return chain


def _absolute_data_files(data_files: str | list | dict, base: Path) -> str | list | dict:
    # data_files takes the three shapes datasets.load_dataset accepts: a path, a list, {split: path(s)}.
    if isinstance(data_files, dict):
        return {split: _absolute_data_files(files, base) for split, files in data_files.items()}
    if isinstance(data_files, list):
        return [_absolute_data_files(files, base) for files in data_files]
    path = Path(data_files).expanduser()
    # Remote URLs ("hf://", "https://") are left to datasets.
    return data_files if "://" in data_files or path.is_absolute() else str(base / path)


def _flat_files(data_files) -> list[str]:
    if isinstance(data_files, dict):
        return [f for files in data_files.values() for f in _flat_files(files)]
    if isinstance(data_files, list):
        return [f for files in data_files for f in _flat_files(files)]
    return [str(data_files)]


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Requirements, found by reading the task's code (never by running it)


def _check_metric(benchmark: RegressionBenchmark, config: dict[str, Any], key: str) -> None:
    metrics = [m["metric"] for m in config.get("metric_list") or [] if isinstance(m.get("metric"), str)]
    if benchmark.metric is None or not metrics:
        return
    name = benchmark.metric.split(",", 1)[0]
    if name not in metrics:
        raise ValueError(f"{key}.metric={benchmark.metric!r}: task {benchmark.task!r} reports {', '.join(metrics)}")


def _check_requirements(name: str, yaml_path: Path, config: dict[str, Any], key: str) -> None:
    missing: dict[str, Path] = {}  # module -> a file importing it
    resources: dict[str, Path] = {}  # NLTK resource -> a file using it
    for path in _task_code(yaml_path, config):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for module in _imported_modules(tree):
            beside = (path.parent / f"{module}.py").is_file() or (path.parent / module).is_dir()
            if module not in missing and not beside and importlib.util.find_spec(module) is None:
                missing[module] = path
        for resource in _nltk_resources(tree):
            resources.setdefault(resource, path)
    if missing:
        modules = ", ".join(missing)
        files = ", ".join(sorted({str(p) for p in missing.values()}))
        raise ValueError(f"{key}: task {name!r} needs Python modules that are not installed: {modules} (imported by "
                         f"{files}); install them{_extra_hint(yaml_path, set(missing))} before running it")
    absent, searched = _missing_nltk_data(sorted(resources))
    if absent:
        ids = " ".join(sorted({resource.split("/")[1] for resource in absent if "/" in resource}))
        raise ValueError(
            f"{key}: task {name!r} scores with NLTK data that is not on this machine: {', '.join(absent)} (used by "
            f"{resources[absent[0]]}); lm-eval would try to download it while scoring, after all generation, and "
            f"fail offline. Install it first: python -m nltk.downloader {ids} (searched: {', '.join(searched)}; "
            "or set NLTK_DATA to a folder holding it)")


def _task_code(yaml_path: Path, config: dict[str, Any]) -> list[Path]:
    """The Python files the task's `!function`s live in, and the local or lm-eval task modules they import."""
    found: list[Path] = []
    pending = [path for value in _strings(config) if (path := _function_file(value)) is not None]
    while pending:
        path = pending.pop()
        if not path.is_file() or (path := path.resolve()) in found:
            continue
        found.append(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        pending += _local_imports(tree, path.parent)
    return sorted(found)


def _strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def _function_file(value: str) -> Path | None:
    """The file of a `!function` reference: load_yaml(resolve_func=False) leaves it as '<yaml dir>/<module>.<fn>'."""
    if "/" not in value or "." not in Path(value).name or "\n" in value:
        return None
    module_path, _ = value.rsplit(".", 1)
    directory, module = module_path.rsplit("/", 1)
    path = Path(directory) / (module.replace(".", "/") + ".py")
    return path if path.is_file() else None


def _local_imports(tree: ast.AST, folder: Path) -> list[Path]:
    """Files of modules this file imports that live beside it or among lm-eval's tasks (their code is task code)."""
    paths = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            base = folder.joinpath(*[".."] * (node.level - 1))
            names_rel = [node.module] if node.module else [alias.name for alias in node.names]
            paths += [base / (n.replace(".", "/") + ".py") for n in names_rel]
        for name in names:
            if name.startswith("lm_eval.tasks."):
                paths.append(LM_EVAL_TASKS_DIR / (name.removeprefix("lm_eval.tasks.").replace(".", "/") + ".py"))
            elif (folder / f"{name.split('.')[0]}.py").is_file():
                paths.append(folder / (name.replace(".", "/") + ".py"))
    return paths


def _imported_modules(tree: ast.AST) -> list[str]:
    """Top-level modules a file imports, except standard-library ones and those whose ImportError it handles."""
    guarded = {id(n) for t in ast.walk(tree) if isinstance(t, ast.Try) and _handles_import_error(t)
               for stmt in t.body for n in ast.walk(stmt)}
    modules = []
    for node in ast.walk(tree):
        if id(node) in guarded:
            continue
        if isinstance(node, ast.Import):
            modules += [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.append(node.module.split(".")[0])
    return [m for m in dict.fromkeys(modules) if m not in sys.stdlib_module_names]


def _handles_import_error(node: ast.Try) -> bool:
    names = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}
    for handler in node.handlers:
        types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        if handler.type is None or any(isinstance(t, ast.Name) and t.id in names for t in types):
            return True
    return False


def _nltk_resources(tree: ast.AST) -> list[str]:
    """Literal resource names passed to nltk.data.find / nltk.data.load (e.g. "tokenizers/punkt_tab")."""
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("find", "load")
                and ast.unparse(node.func.value) == "nltk.data" and node.args
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append(re.sub(r"^nltk:", "", node.args[0].value))
    return found


def _missing_nltk_data(resources: list[str]) -> tuple[list[str], list[str]]:
    """The resources NLTK cannot find here, and where it looked. Asked in a child process: importing nltk here, before
    lm-eval seeds, would take its import out of the order lm-eval's own entry point runs it in."""
    if not resources or importlib.util.find_spec("nltk") is None:
        return [], []
    code = ("import json, sys, nltk\nmissing = []\nfor resource in json.loads(sys.argv[1]):\n    try:\n"
            "        nltk.data.find(resource)\n    except LookupError:\n        missing.append(resource)\n"
            "print(json.dumps([missing, nltk.data.path]))")
    done = subprocess.run([sys.executable, "-c", code, json.dumps(resources)], capture_output=True, text=True,
                          timeout=120, check=True)
    missing, searched = json.loads(done.stdout.strip().splitlines()[-1])
    return missing, searched


def _extra_hint(yaml_path: Path, modules: set[str]) -> str:
    """lm-eval's optional-dependency group for the task, when it declares one (`pip install 'lm_eval[ifeval]'`)."""
    requires = importlib.metadata.metadata("lm_eval").get_all("Requires-Dist") or []
    extras = {}
    for requirement in requires:
        match = re.match(r"^([A-Za-z0-9_.\-]+).*extra == \"([^\"]+)\"", requirement)
        if match:
            extras.setdefault(match.group(2), set()).add(match.group(1).lower().replace("-", "_"))
    folder = yaml_path.parent.relative_to(LM_EVAL_TASKS_DIR).parts[0] if yaml_path.is_relative_to(LM_EVAL_TASKS_DIR) else None
    if folder in extras:
        return f" (pip install 'lm_eval[{folder}]' installs this task's requirements)"
    fitting = sorted(extra for extra, names in extras.items() if modules <= names and extra not in ("all", "tasks"))
    return f" (pip install 'lm_eval[{fitting[0]}]' has them)" if fitting else f" (pip install {' '.join(sorted(modules))})"
