"""Frozen eval sets: a committed manifest holds the content hash of the data, prompt, graders and versions.

A run or sweep refuses to start when its eval set is missing, empty or differs from its manifest; changing an
eval set is a deliberate act whose diff shows in review:

    python -m harness.evalset create --name my_task --from my_eval.jsonl ...   # a new set (harness.evalset_create)
    python -m harness.evalset freeze eval=json_extract     # write evals/json_extract/manifest.json
    python -m harness.evalset check eval=json_extract      # exit 2 if it changed

The identity (hash) is the content: the data file's bytes and row-to-split assignment, the name, graders, fields
and generation settings, never the path, so `./x.jsonl`, `x.jsonl`, an absolute path or a symlink to the same
file are one eval set. A manifest belongs to one eval set (its name and data file): freezing another set into it
is refused, so pointing the default config at your own data cannot overwrite the committed manifest. Every error
prints the command that fixes it for this set.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shlex
import sys
from dataclasses import asdict
from pathlib import Path

from harness.artifacts import REPO_ROOT, resolve_path, write_json_atomic
from harness.config import EvalConfig
from harness.data import DataError
from harness.evaluate import load_eval_splits
from harness.evalset_create import grader_spec, suggested_name
from harness.graders import grader_version
from harness.reproduce import override_value

# Fields of EvalConfig that define the frozen set or locate its files; a freeze command must reproduce them.
IDENTITY_FIELDS = ("name", "data_file", "manifest", "prompt_field", "reference_field", "split_fraction",
                   "split_seed", "graders", "generation", "prompt_baseline")


class EvalSetChangedError(DataError):
    """The eval set differs from its frozen manifest (or has none)."""


def canonical_path(path: str | Path) -> str:
    """One spelling per file: repository-relative (posix) inside the checkout, else absolute; symlinks, `./` and
    `..` resolved, so the same file always reads the same."""
    resolved = resolve_path(path).resolve()
    try:
        return resolved.relative_to(REPO_ROOT.resolve()).as_posix()
    except ValueError:
        return str(resolved)


def eval_fingerprint(eval_cfg: EvalConfig) -> dict:
    """Everything that defines what a score on this eval set means; hashed into `eval_set_hash`.

    `data_file` is recorded (canonical spelling) to say which file the manifest belongs to, but is not hashed:
    the identity is the file's content."""
    splits = load_eval_splits(eval_cfg)  # raises on a missing, empty or malformed set, or a missing split
    data_bytes = resolve_path(eval_cfg.data_file).read_bytes()
    fingerprint = {
        "name": eval_cfg.name,
        "data_sha256": hashlib.sha256(data_bytes).hexdigest(),
        "n_examples": sum(len(rows) for rows in splits.values()),
        # which rows are in which split, frozen with the data: moving a row between splits changes the hash
        "splits": {name: {"n": len(rows), "sources_sha256": _sources_sha256(rows)} for name, rows in splits.items()},
        # how rows without a "split" field were assigned one (None: every row names its split)
        "split_assignment": None if eval_cfg.split_fraction is None else {
            "fraction": eval_cfg.split_fraction, "seed": eval_cfg.split_seed, "method": "sha256-rank"},
        "fields": {"prompt": eval_cfg.prompt_field, "reference": eval_cfg.reference_field},
        "graders": [asdict(grader) for grader in eval_cfg.graders],
        "grader_versions": [grader_version(grader) for grader in eval_cfg.graders],
        "generation": asdict(eval_cfg.generation),
        "prompt_baseline": asdict(eval_cfg.prompt_baseline),
    }
    return {**fingerprint, "data_file": canonical_path(eval_cfg.data_file), "hash": fingerprint_hash(fingerprint)}


# Recorded in a fingerprint but not part of its hash.
UNHASHED_FINGERPRINT_KEYS = ("data_file", "hash")


def fingerprint_hash(fingerprint: dict) -> str:
    """The eval set hash of a fingerprint's hashed fields (the unhashed ones are ignored if present)."""
    hashed = {key: value for key, value in fingerprint.items() if key not in UNHASHED_FINGERPRINT_KEYS}
    return hashlib.sha256(json.dumps(hashed, sort_keys=True).encode()).hexdigest()[:16]


def _sources_sha256(rows) -> str:
    return hashlib.sha256("\n".join(row.source.rsplit(":", 1)[-1] for row in rows).encode()).hexdigest()[:16]


def verify_frozen(eval_cfg: EvalConfig) -> str:
    """The identity of the eval set's split, if the set matches the committed manifest; otherwise an error
    saying what changed and the command that fixes it for this set.

    The identity is "<hash>-<split>": scores on the selection split never compare with scores on the reporting
    split. Scoring only the first N examples (eval.max_examples) gives "<hash>-<split>-first<N>", so that scores
    on a subset are never compared with scores on the whole split.
    """
    manifest_path = resolve_path(eval_cfg.manifest)
    if not manifest_path.is_file():
        load_eval_splits(eval_cfg)  # a malformed set is reported as such, not as "freeze it first"
        raise EvalSetChangedError(f"{manifest_path}: eval set {eval_cfg.name!r} has no manifest; freeze it first "
                                  f"with: {freeze_command(eval_cfg)}")
    current = eval_fingerprint(eval_cfg)  # a malformed set fails here, naming its file:line
    frozen = json.loads(manifest_path.read_text(encoding="utf-8"))
    if frozen.get("hash") != current["hash"]:
        _refuse_another_sets_manifest(eval_cfg, frozen, manifest_path)
        changed = sorted(k for k in current if k not in ("hash", "data_file") and frozen.get(k) != current[k])
        raise EvalSetChangedError(
            f"{manifest_path}: eval set {eval_cfg.name!r} differs from its frozen manifest "
            f"(changed: {', '.join(changed) or 'hash'}; frozen {frozen.get('hash')}, now {current['hash']}). "
            f"Scores would not be comparable with earlier ones. If the change is deliberate, re-freeze: "
            f"{freeze_command(eval_cfg)}"
        )
    identity = f"{current['hash']}-{eval_cfg.split}"
    if eval_cfg.max_examples is not None:
        return f"{identity}-first{eval_cfg.max_examples}"
    return identity


def freeze(eval_cfg: EvalConfig, force: bool = False) -> dict:
    """Write the eval set's manifest; refused (unless force) when the manifest there belongs to another set (other
    name or data file, and other content: a copied set with its manifest re-freezes where it is)."""
    manifest_path = resolve_path(eval_cfg.manifest)
    fingerprint = eval_fingerprint(eval_cfg)
    if manifest_path.is_file() and not force:
        frozen = json.loads(manifest_path.read_text(encoding="utf-8"))
        if frozen.get("hash") != fingerprint["hash"]:
            _refuse_another_sets_manifest(eval_cfg, frozen, manifest_path)
    write_json_atomic(manifest_path, fingerprint)
    return fingerprint


def _refuse_another_sets_manifest(eval_cfg: EvalConfig, frozen: dict, manifest_path: Path) -> None:
    """A manifest records the name and data file of its set; another set's data is never checked against it, nor
    frozen into it (that would silently replace, say, the committed default set's manifest)."""
    owner_file = frozen.get("data_file")
    same_file = owner_file is not None and canonical_path(owner_file) == canonical_path(eval_cfg.data_file)
    if frozen.get("name") == eval_cfg.name and same_file:
        return
    raise EvalSetChangedError(
        f"{manifest_path}: this is the manifest of eval set {frozen.get('name')!r} ({owner_file}), not of "
        f"{eval_cfg.name!r} on {canonical_path(eval_cfg.data_file)}; give your eval set its own config and "
        f"manifest with: {create_command(eval_cfg)}")


# ---------------------------------------------------------------------------------------------------------
# The commands an error prints: exact for this eval set (its config option plus the overrides that differ).


def load_eval_option(name: str) -> EvalConfig:
    """conf/eval/<name>.yaml as a typed EvalConfig (a group file has no defaults list, so no Hydra is needed)."""
    from omegaconf import OmegaConf

    merged = OmegaConf.merge(OmegaConf.structured(EvalConfig), OmegaConf.load(eval_option_path(name)))
    return OmegaConf.to_object(merged)


def eval_option_path(name: str) -> Path:
    return REPO_ROOT / "conf" / "eval" / f"{name}.yaml"


def default_eval_option() -> str:
    from omegaconf import OmegaConf

    defaults = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "conf" / "config.yaml"))["defaults"]
    return next(item["eval"] for item in defaults if isinstance(item, dict) and "eval" in item)


def freeze_command(eval_cfg: EvalConfig) -> str:
    """`python -m harness.evalset freeze` with the overrides that compose exactly this eval set."""
    option = eval_cfg.name if eval_option_path(eval_cfg.name).is_file() else None
    base = load_eval_option(option or default_eval_option())
    overrides = ([f"eval={option}"] if option else []) + eval_overrides(base, eval_cfg)
    return " ".join(["python -m harness.evalset freeze", *map(shlex.quote, overrides)])


def eval_overrides(base: EvalConfig, eval_cfg: EvalConfig) -> list[str]:
    overrides = []
    for name in IDENTITY_FIELDS:
        old, new = getattr(base, name), getattr(eval_cfg, name)
        if name in ("data_file", "manifest"):
            if canonical_path(old) != canonical_path(new):
                overrides.append(f"eval.{name}={override_value(canonical_path(new))}")
        elif name == "graders":
            if [asdict(g) for g in old] != [asdict(g) for g in new]:
                overrides.append(f"eval.graders={override_value([grader_spec(g) for g in new])}")
        elif dataclasses.is_dataclass(new):
            overrides += [f"eval.{name}.{key}={override_value(value)}" for key, value in asdict(new).items()
                          if asdict(old)[key] != value]
        elif old != new:
            overrides.append(f"eval.{name}={override_value(new)}")
    return overrides


def create_command(eval_cfg: EvalConfig) -> str:
    """The `create` command that gives this data its own eval config and manifest (then run with eval=<name>)."""
    name = suggested_name(eval_cfg.data_file)
    default = EvalConfig()
    args = ["python", "-m", "harness.evalset", "create", "--name", name, "--from", canonical_path(eval_cfg.data_file)]
    if eval_cfg.prompt_field != default.prompt_field:
        args += ["--field-prompt", eval_cfg.prompt_field]
    if eval_cfg.reference_field != default.reference_field:
        args += ["--field-gold", eval_cfg.reference_field]
    for grader in eval_cfg.graders:
        args += ["--grader", json.dumps(grader_spec(grader))]
    if eval_cfg.split_fraction is not None:
        args += ["--split-fraction", repr(eval_cfg.split_fraction), "--split-seed", str(eval_cfg.split_seed)]
    if eval_cfg.generation.max_new_tokens != default.generation.max_new_tokens:
        args += ["--max-new-tokens", str(eval_cfg.generation.max_new_tokens)]
    if eval_cfg.prompt_baseline.system_prompt:
        args += ["--system-prompt", eval_cfg.prompt_baseline.system_prompt]
    return f"{' '.join(map(shlex.quote, args))} (then use eval={name})"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["create"]:
        from harness.evalset_create import main as create_main

        return create_main(argv[1:])
    from harness.validate import compose_run_config

    parser = argparse.ArgumentParser(description="Create, freeze or check an eval set's manifest.",
                                     epilog="python -m harness.evalset create --help: a new eval set from a JSONL")
    parser.add_argument("action", choices=["freeze", "check", "create"])
    parser.add_argument("--force", action="store_true",
                        help="freeze: replace a manifest that records another eval set or data file")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. eval=json_extract")
    args = parser.parse_args(argv)
    try:
        cfg = compose_run_config(args.overrides)
        if args.action == "freeze":
            fingerprint = freeze(cfg.eval, force=args.force)
            sizes = ", ".join(f"{name} {split['n']}" for name, split in fingerprint.get("splits", {}).items())
            print(f"froze {cfg.eval.name}: hash {fingerprint['hash']}, {fingerprint['n_examples']} examples "
                  f"({sizes}) -> {cfg.eval.manifest}")
        else:
            print(f"{cfg.eval.name}: frozen, hash {verify_frozen(cfg.eval)}")
    except (DataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
