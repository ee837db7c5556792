"""`python -m harness.evalset create`: your own eval set from a JSONL file, config and frozen manifest in one step.

    python -m harness.evalset create --name my_task --from my_eval.jsonl \\
        --field-prompt prompt --field-gold label --grader exact_match --split-fraction 0.4

writes `conf/eval/my_task.yaml` (every setting written out, with comments; run with `eval=my_task`) and the
manifest next to the data, `my_task.manifest.json` (or `--manifest PATH`). The set is named after its config.
Rows without a "split" field are assigned one (eval.split_fraction of them selection, chosen by hashing each row
with eval.split_seed; recorded in the config and the manifest); rows that all say their split keep it. Everything
is checked first (rows, fields, gold answers against the graders): on an error nothing is written. An existing
config is replaced only if this command wrote it and it was not edited since, an existing manifest only if it is
this set's (same name and data file); anything else needs `--force`. Other sets' files are never touched.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
import shlex
import sys
from dataclasses import asdict, replace
from pathlib import Path

import yaml

from harness.artifacts import resolve_path, write_text_atomic
from harness.config import EvalConfig, GenerationConfig, PromptBaselineConfig
from harness.data import DataError, read_jsonl
from harness.graders import GraderConfig

DEFAULT_SPLIT_FRACTION = 0.4  # the default set's proportion (100 selection of 260)
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")
MARKER = "# created by python -m harness.evalset create; sha256 of the lines below: "
COMMENTS = {
    "name": "the eval set's name in every result: the config's file name",
    "prompt_field": "the prompt: a string (one user turn) or a message list",
    "reference_field": "the gold answer, checked against every grader when the set loads",
    "split_fraction": "rows without \"split\": this fraction is the selection split (null: rows say theirs)",
    "split_seed": "which rows are selection: a hash of each row with this seed",
    "graders": "the first grader gives the headline score",
    "min_score": "an adapter below this is not worth shipping",
    "equivalence_margin": "score differences smaller than this do not matter for the task",
    "split": "sweeps select on it; reporting: verdicts and the gate (never used to choose)",
    "regression": "general-ability benchmarks, as in the default eval set (task-independent)",
}


def suggested_name(data_file: str | Path) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", Path(data_file).stem).strip("_") or "my_eval"


def build_eval_config(args: argparse.Namespace) -> EvalConfig:
    """The new eval set's config: defaults, the default set's regression benchmarks, and the options given."""
    from harness.evalset import canonical_path, default_eval_option, load_eval_option

    data_path = resolve_path(args.data_file).absolute()  # as typed: from the working directory, else the checkout
    data_file = canonical_path(data_path)
    manifest = canonical_path(Path(args.manifest).absolute() if args.manifest else
                              data_path.parent / f"{args.name}.manifest.json")
    template = load_eval_option(default_eval_option())
    graders = [_grader(spec) for spec in args.grader] or [GraderConfig(type="exact_match")]
    return replace(
        EvalConfig(), name=args.name, data_file=data_file, manifest=manifest, prompt_field=args.field_prompt,
        reference_field=args.field_gold, graders=graders, min_score=args.min_score,
        split_fraction=_split_fraction(data_file, args.split_fraction), split_seed=args.split_seed,
        generation=GenerationConfig(max_new_tokens=args.max_new_tokens),
        prompt_baseline=PromptBaselineConfig(system_prompt=args.system_prompt),
        regression=template.regression, regression_batch_size=template.regression_batch_size,
    )


def _grader(spec: str) -> GraderConfig:
    """`exact_match`, or a YAML/JSON mapping: `{type: regex, pattern: "^(yes|no)$"}`."""
    try:
        value = yaml.safe_load(spec)
    except yaml.YAMLError as err:
        raise ValueError(f"--grader {spec!r}: not a grader type or a YAML mapping ({err})") from None
    value = {"type": value} if isinstance(value, str) else value
    if not isinstance(value, dict):
        raise ValueError(f"--grader {spec!r}: expected a grader type or a mapping such as '{{type: exact_match}}'")
    unknown = sorted(set(value) - {f.name for f in dataclasses.fields(GraderConfig)})
    if unknown:
        raise ValueError(f"--grader {spec!r}: unknown key {unknown[0]!r} (GraderConfig fields: "
                         f"{', '.join(f.name for f in dataclasses.fields(GraderConfig))})")
    try:
        return GraderConfig(**value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"--grader {spec!r}: {str(err).replace('GraderConfig.', '')}") from None


def grader_spec(grader: GraderConfig) -> dict:
    """A grader as its non-default fields: what a user writes."""
    default = {f.name: f.default for f in dataclasses.fields(GraderConfig) if f.name != "fields"}
    default["fields"] = []
    return {key: value for key, value in asdict(grader).items() if key == "type" or default[key] != value}


def _split_fraction(data_file: str, requested: float | None) -> float | None:
    """None when every row names its split; the requested (or default) fraction when none does."""
    rows = read_jsonl(data_file)
    with_split = [where for where, row in rows if "split" in row]
    if len(with_split) == len(rows):
        if requested is not None:
            raise ValueError(f"--split-fraction {requested}: every row of {data_file} has its own \"split\"; leave "
                             "the option out to keep them")
        return None
    if with_split:
        missing = next(where for where, row in rows if "split" not in row)
        raise DataError(f"{missing}: no \"split\" field, while {with_split[0]} has one; either every row says its "
                        "split or none does (then --split-fraction assigns them)")
    return DEFAULT_SPLIT_FRACTION if requested is None else requested


def render_yaml(eval_cfg: EvalConfig, command: str) -> str:
    """The config file: a header saying how it was made and how to re-freeze, then every field with a comment."""
    values = asdict(eval_cfg)
    values["graders"] = [grader_spec(grader) for grader in eval_cfg.graders]  # what a user writes: defaults left out
    first = ("name", "data_file", "manifest", "prompt_field", "reference_field", "split_fraction", "split_seed")
    body = "".join(_yaml_lines({**{key: values[key] for key in first}, **values}))
    header = [
        f"# Eval set {eval_cfg.name}, made with:",
        f"#   {command}",
        f"# Frozen: {eval_cfg.manifest} holds its content hash. After a deliberate change to the data or a setting",
        f"# that defines a score (fields, splits, graders, generation, prompt baseline), re-freeze:",
        f"#   python -m harness.evalset freeze eval={eval_cfg.name}",
        f"# Check and run: python -m harness validate eval={eval_cfg.name}; python -m harness eval={eval_cfg.name}",
        MARKER + hashlib.sha256(body.encode()).hexdigest(),
    ]
    return "\n".join(header) + "\n" + body


def _yaml_lines(values: dict, indent: str = ""):
    for key, value in values.items():
        comment = f"  # {COMMENTS[key]}" if key in COMMENTS and not indent else ""
        if isinstance(value, dict):
            yield f"{indent}{key}:{comment}\n"
            yield from _yaml_lines(value, indent + "  ")
        elif isinstance(value, list) and value:
            yield f"{indent}{key}:{comment}\n"
            # JSON is YAML: one flow mapping per item keeps every field (and its type) exact
            yield from (f"{indent}  - {json.dumps(item, ensure_ascii=False)}\n" for item in value)
        else:
            yield f"{indent}{key}: {_scalar(value)}{comment}\n"


def _scalar(value) -> str:
    """A YAML scalar: plain when it reads back as the same string, else JSON (which is YAML)."""
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_./-]*", value) and value.lower() not in (
            "true", "false", "null", "yes", "no", "on", "off", "y", "n"):
        return value
    return json.dumps(value, ensure_ascii=False)


def written_by_create(path: Path) -> bool:
    """True for a config this command wrote and nobody edited since (its recorded body hash still matches)."""
    text = path.read_text(encoding="utf-8")
    head, marker, body = text.partition(MARKER)
    if not marker:
        return False
    digest, _, body = body.partition("\n")
    return hashlib.sha256(body.encode()).hexdigest() == digest.strip()


def create(args: argparse.Namespace, command: str) -> tuple[EvalConfig, dict, Path]:
    from omegaconf import OmegaConf

    from harness.evalset import eval_option_path, freeze

    if not NAME.fullmatch(args.name):
        raise ValueError(f"--name {args.name!r}: use letters, digits, _ and - (it names conf/eval/<name>.yaml)")
    eval_cfg = build_eval_config(args)
    config_path = eval_option_path(args.name)
    if config_path.exists() and not args.force and not written_by_create(config_path):
        raise ValueError(f"{config_path}: exists and was not written by this command (or was edited since); "
                         "choose another --name, or pass --force to replace it")
    text = render_yaml(eval_cfg, command)
    # The file as Hydra will read it must be exactly this config (checks the rendering, and every value's type).
    reread = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(EvalConfig), OmegaConf.create(text)))
    assert asdict(reread) == asdict(eval_cfg), "rendered config does not round-trip"
    fingerprint = freeze(eval_cfg, force=args.force)  # loads and checks every row first; refuses another set's manifest
    write_text_atomic(config_path, text)
    return eval_cfg, fingerprint, config_path


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harness.evalset create", description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="the eval set's name: writes conf/eval/<name>.yaml")
    parser.add_argument("--from", dest="data_file", required=True, help="the eval rows (JSONL)")
    parser.add_argument("--field-prompt", default="messages", help="the prompt field (a string or messages)")
    parser.add_argument("--field-gold", default="reference",
                        help="the gold-answer field (absent from a chat row: its last assistant turn is the gold)")
    parser.add_argument("--grader", action="append", default=[],
                        help="a grader type or YAML mapping, e.g. '{type: exact_match, lowercase: true}'; "
                             "repeat for more (the first is the headline score; default exact_match)")
    parser.add_argument("--split-fraction", type=float, default=None,
                        help=f"rows have no \"split\": this fraction is the selection split "
                             f"(default {DEFAULT_SPLIT_FRACTION})")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the split assignment")
    parser.add_argument("--min-score", type=float, default=EvalConfig().min_score, help="score an adapter must reach")
    parser.add_argument("--max-new-tokens", type=int, default=GenerationConfig().max_new_tokens,
                        help="generation length of an answer")
    parser.add_argument("--system-prompt", default="", help="the prompt baseline's system instruction")
    parser.add_argument("--manifest", default=None, help="manifest path (default: <data dir>/<name>.manifest.json)")
    parser.add_argument("--force", action="store_true", help="replace a config or manifest this command did not write")
    return parser


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    command = " ".join(["python -m harness.evalset create", *map(shlex.quote, argv)])
    try:
        eval_cfg, fingerprint, config_path = create(args, command)
    except (DataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    sizes = ", ".join(f"{name} {split['n']}" for name, split in fingerprint["splits"].items())
    assigned = (f"splits assigned: fraction {eval_cfg.split_fraction}, seed {eval_cfg.split_seed}"
                if eval_cfg.split_fraction is not None else "splits as the rows say")
    print(f"created eval set {eval_cfg.name}: {fingerprint['n_examples']} examples ({sizes}; {assigned}), "
          f"hash {fingerprint['hash']}\n  config   {config_path}\n  manifest {eval_cfg.manifest}\n"
          f"use it with eval={eval_cfg.name}, e.g. python -m harness validate eval={eval_cfg.name}")
    return 0
