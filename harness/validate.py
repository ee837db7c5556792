"""`python -m harness validate <overrides>`: every check a run makes before it loads weights, and nothing written.

    python -m harness validate data.sft_file=my.jsonl eval.data_file=my_eval.jsonl
    python -m harness validate --with-model model=hf model.name_or_path=/models/x   # also LoRA target names

Config (schema, ranges, unknown keys, cross-field rules), the frozen eval set and its gold answers, the training
and preference data, the chat template and the assistant-only loss mask, leakage, and the regression benchmarks
(task known, local data files there, the Python modules and NLTK data their code needs); then the data card (rows
read / kept / deduplicated / truncated or dropped for length, warnings each with file:line) on stdout. Exit 0 when
everything passes, 2 with one `error: <file>:<line>: ...` line on stderr otherwise.

A normal run prints the same card before it loads weights (`harness.run.prepare_inputs` calls `data_card`), and
`precheck` runs the config part before Hydra starts, so that Hydra's own parse errors and an unusable run
directory are clean `error:` lines too.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from harness.artifacts import file_sha256
from harness.config import RunConfig
from harness.data import DataError, PreferenceData, SFTData, TokenizedExample
from harness.records import DataCard, DataWarning, LeakageReport

MAX_WARNINGS_SHOWN = 20  # the console lists this many warnings; the data card in results.json keeps them all


def compose_run_config(overrides: list[str]) -> RunConfig:
    """The typed config for `overrides`, composed with Hydra's compose API; any failure is a ValueError naming
    the key or override (never a traceback)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from harness.artifacts import REPO_ROOT
    from harness.config import register_configs, to_run_config

    register_configs()
    try:
        with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base=None):
            cfg = compose("config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        raise ValueError(_hydra_message(err)) from None
    try:
        run_config = to_run_config(cfg)
    except OmegaConfBaseException as err:
        raise ValueError(_hydra_message(err)) from None
    _check_eval_named_after_config(overrides)
    return run_config


def _check_eval_named_after_config(overrides: list[str]) -> None:
    """conf/eval/<option>.yaml must say `name: <option>`: a copied config that kept the original's name would label
    every result with the other set's name (an explicit eval.name=... override is the user's choice)."""
    from harness.evalset import default_eval_option, eval_option_path

    if any(arg.lstrip("+").startswith("eval.name=") for arg in overrides):
        return
    option = next((arg.split("=", 1)[1] for arg in reversed(overrides) if arg.lstrip("+").startswith("eval=")),
                  default_eval_option())
    path = eval_option_path(option)
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    for number, line in enumerate(lines, start=1):
        match = re.match(r"name:\s*(.*?)\s*(#.*)?$", line)
        if match and match.group(1).strip("'\"") != option:
            raise ValueError(f"{path}:{number}: eval.name is {match.group(1)}, but an eval set is named after its "
                             f"config file: set name: {option}")


def _hydra_message(err: BaseException) -> str:
    """Hydra's message plus its cause's first line (the schema's 'Key ... not in ...', 'full_key: ...')."""
    lines = [str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__]
    override = getattr(err, "override", None)  # OverrideParseException: the override that does not parse
    if override:
        lines[0] = f"cannot parse override {override!r}: {lines[0]}"
    cause = err.__cause__
    if cause is not None and str(cause).strip():
        text = str(cause).strip().splitlines()
        lines.append(text[0])
        lines += [line.strip() for line in text[1:] if line.strip().startswith("full_key:")]
    return "; ".join(dict.fromkeys(lines))


def check_model_source(cfg: RunConfig) -> None:
    """model=hf with a local-looking path that does not exist: say so, instead of transformers' hub traceback."""
    name = cfg.model.name_or_path
    if cfg.model.kind != "hf":
        return
    # A hub id is "org/name"; anything else with a path shape is meant as a local directory.
    looks_local = name.startswith(("/", "./", "../", "~", ".")) or name.count("/") > 1 or "\\" in name
    path = Path(name).expanduser()
    if looks_local and not path.is_dir():
        raise ValueError(f"model.name_or_path={name!r}: no such directory (a local model is a directory with "
                         "config.json and *.safetensors; a hub id looks like org/name)")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"model.name_or_path={name!r}: the directory has no config.json")
        if not any(path.glob("*.safetensors")):
            raise ValueError(f"model.name_or_path={name!r}: no *.safetensors weights in the directory (weights load "
                             "from safetensors only; convert .bin/.pt checkpoints first)")


def load_tokenizer_checked(cfg: RunConfig):
    from harness.model import load_tokenizer

    check_model_source(cfg)
    try:
        return load_tokenizer(cfg.model)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"model.name_or_path={cfg.model.name_or_path!r}: cannot load its tokenizer "
                         f"(offline: it must be a local directory or in the hub cache): {first}") from None


def check_target_modules(cfg: RunConfig) -> None:
    """LoRA target names against the model's module names, from config.json on the meta device (no weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from harness.model import prepare_model_dir

    targets = cfg.lora.target_modules
    if targets == ["all-linear"]:
        return
    model_config = AutoConfig.from_pretrained(prepare_model_dir(cfg.model), revision=cfg.model.revision,
                                              trust_remote_code=cfg.model.trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config, trust_remote_code=cfg.model.trust_remote_code)
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name}
    unknown = [target for target in targets if target not in names]
    if unknown:
        linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                         if isinstance(module, torch.nn.Linear)})
        raise ValueError(f"lora.target_modules: {unknown} not in the model ({type(model).__name__}); its linear "
                         f"layers are {', '.join(linear)} (or use all-linear)")


def settings_warnings(cfg: RunConfig) -> list[DataWarning]:
    """Settings that have no effect as given, e.g. epochs while max_steps > 0."""
    warnings = []
    for name in cfg.train.stages:
        stage = getattr(cfg.train, name)
        if stage.max_steps > 0 and stage.epochs != 1.0:
            warnings.append(DataWarning(f"train.{name}", f"train.{name}.epochs={stage.epochs} is ignored because "
                                        f"train.{name}.max_steps={stage.max_steps} > 0 (set it to 0 to train "
                                        "for epochs)"))
    return warnings


def data_card(cfg: RunConfig, sft: SFTData | None, sft_examples: list[TokenizedExample],
              preference: PreferenceData | None, leakage: LeakageReport, sample: str, tokenizer=None) -> DataCard:
    """The data card of a run: what was read, kept, removed or cut, and every warning with its file:line."""
    from harness.eval_data import load_eval_rows

    eval_rows = load_eval_rows(cfg.eval)
    warnings = settings_warnings(cfg)
    warnings += sft.warnings if sft else []
    kept = {example.source: example for example in sft_examples}
    dropped = [c.source for c in (sft.conversations if sft else []) if c.source not in kept]
    max_length = cfg.train.sft.max_length
    for source in dropped:
        warnings.append(DataWarning(source, f"dropped: no assistant token within train.sft.max_length={max_length}"))
    for example in sft_examples:
        if example.truncated:
            warnings.append(DataWarning(example.source, f"truncated to train.sft.max_length={max_length} tokens"))
    warnings += preference.warnings if preference else []
    if preference and tokenizer is not None and "dpo" in cfg.train.stages:
        warnings += _preference_length_warnings(tokenizer, preference, cfg.train.dpo.max_length)
    warnings += eval_rows.warnings
    return DataCard(
        sft_file=sft.path if sft else None,
        sft_rows=sft.rows_read if sft else 0,
        sft_examples=len(sft_examples),
        sft_truncated=sum(e.truncated for e in sft_examples),
        duplicates_removed=sft.duplicates_removed if sft else 0,
        leakage=leakage,
        chat_template_sample=sample,
        preference_file=preference.path if preference else None,
        preference_sha256=file_sha256(preference.path) if preference else None,
        preference_rows=preference.rows_read if preference else None,
        preference_pairs=len(preference.pairs) if preference else None,
        preference_duplicates_removed=preference.duplicates_removed if preference else None,
        sft_format=sft.format if sft else None,
        sft_dropped_for_length=len(dropped),
        eval_file=eval_rows.path,
        eval_rows=eval_rows.rows_read,
        eval_examples=len(eval_rows.examples),
        eval_duplicates_removed=eval_rows.duplicates_removed,
        warnings=warnings,
    )


def _preference_length_warnings(tokenizer, preference: PreferenceData, max_length: int) -> list[DataWarning]:
    """Pairs trl will cut at train.dpo.max_length (it truncates silently)."""
    from harness.data import render_chat

    warnings = []
    for pair in preference.pairs:
        for name, conversation in zip(("chosen", "rejected"), pair.conversations()):
            if pair.conversational:
                text = render_chat(tokenizer, conversation.messages, pair.source)
            else:
                text = "".join(m.content for m in conversation.messages)
            length = len(tokenizer(text, add_special_tokens=False).input_ids)
            if length > max_length:
                warnings.append(DataWarning(pair.source, f"prompt + {name} is {length} tokens, truncated to "
                                                         f"train.dpo.max_length={max_length}"))
                break
    return warnings


def format_data_card(card: DataCard) -> str:
    lines = ["data card"]
    if card.sft_file:
        lines.append(f"  sft        {card.sft_file} (format {card.sft_format}): {card.sft_rows} rows read, "
                     f"{card.duplicates_removed} duplicates removed, {card.sft_dropped_for_length} dropped and "
                     f"{card.sft_truncated} truncated for length, {card.sft_examples} examples kept")
    if card.preference_file:
        lines.append(f"  preference {card.preference_file}: {card.preference_rows} rows read, "
                     f"{card.preference_duplicates_removed} duplicates removed, {card.preference_pairs} pairs kept "
                     f"(sha256 {(card.preference_sha256 or '')[:12]})")
    lines.append(f"  eval       {card.eval_file}: {card.eval_rows} rows read, {card.eval_duplicates_removed} duplicates "
                 f"removed, {card.eval_examples} examples kept")
    leak = card.leakage
    lines.append(f"  leakage    {leak.exact_overlaps} exact and {leak.ngram_overlaps} near ({leak.ngram}-gram or whole "
                 f"prompt) overlaps of {leak.n_heldout} held-out prompts with {leak.n_train} training prompts")
    lines.append(f"  warnings   {len(card.warnings)}")
    for warning in card.warnings[:MAX_WARNINGS_SHOWN]:
        lines.append(f"    warning: {warning.source}: {warning.message}")
    if len(card.warnings) > MAX_WARNINGS_SHOWN:
        lines.append(f"    ... and {len(card.warnings) - MAX_WARNINGS_SHOWN} more (all are in results.json's data card)")
    return "\n".join(lines)


def check_inputs(cfg: RunConfig, with_model: bool = False) -> DataCard:
    """Everything `prepare_inputs` checks, plus the model source and (with_model) the LoRA target names."""
    from harness.run import prepare_inputs

    check_model_source(cfg)
    load_tokenizer_checked(cfg)  # a clean error for a model whose tokenizer cannot load, before the data checks
    if with_model:
        check_target_modules(cfg)
    card = prepare_inputs(cfg, show_card=False).card
    check_benchmarks(cfg)
    return card


def check_benchmarks(cfg: RunConfig) -> None:
    """The regression benchmarks resolve, their data files exist, and the modules and NLTK data their tasks' code
    needs are installed: checked before any model loads, not found out after all generation."""
    if cfg.run_regression and cfg.eval.regression:
        from harness.regression import check_regression

        check_regression(cfg.eval)


def main(argv: list[str]) -> int:
    if argv[:1] in (["--help"], ["-h"]):
        print(__doc__.split("\n\n")[1])
        return 0
    with_model = "--with-model" in argv
    overrides = [arg for arg in argv if arg != "--with-model"]
    flags = [arg for arg in overrides if arg.startswith("-")]
    try:
        if flags:
            raise ValueError(f"unknown option {flags[0]!r}: usage: python -m harness validate [--with-model] "
                             "[key=value ...]")
        cfg = compose_run_config([arg for arg in overrides if not arg.startswith("hydra.")])
        card = check_inputs(cfg, with_model)
    except (DataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_data_card(card))
    print("ok: config, eval set, data, chat template, loss mask and leakage checks passed"
          + (", LoRA target modules found in the model" if with_model else ""))
    return 0


def precheck(argv: list[str]) -> None:
    """Before Hydra starts a run: the config composes and validates, and the run directory can be made; else one
    `error:` line and exit 2 (Hydra would print a traceback or its own multi-line message and exit 1)."""
    if any(arg.startswith("-") for arg in argv):  # --help, --cfg, -m ...: Hydra's own modes
        return
    try:
        cfg = compose_run_config([arg for arg in argv if not arg.startswith("hydra.")])
        check_model_source(cfg)
        check_benchmarks(cfg)
        try:
            check_target_modules(cfg)  # config.json on the meta device: an unknown name fails before any weight loads
        except OSError:  # no config.json reachable (e.g. a hub id not cached offline): the run reports it cleanly
            pass
        run_dirs = [arg for arg in argv if arg.startswith(("hydra.run.dir=", "hydra.sweep.dir="))]
        for arg in run_dirs or ["hydra.run.dir=sweeps/runs"]:  # conf/config.yaml's default is under sweeps/runs/
            _check_writable_dir(arg.split("=", 1)[0], Path(arg.split("=", 1)[1]))
    except (DataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def _check_writable_dir(key: str, path: Path) -> None:
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if path.exists() and not path.is_dir():
        raise ValueError(f"{key}={path}: exists and is not a directory")
    if not existing.is_dir():
        raise ValueError(f"{key}={path}: {existing} is a file, so the directory cannot be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{key}={path}: {existing} is not writable")
