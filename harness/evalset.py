"""Frozen eval sets: a committed manifest holds the content hash of the data, prompt, graders and versions.

A run or sweep refuses to start when its eval set is missing, empty or differs from its manifest; changing an
eval set is a deliberate act whose diff shows in review:

    python -m harness.evalset freeze eval=json_extract     # write evals/json_extract/manifest.json
    python -m harness.evalset check eval=json_extract      # exit 2 if it changed
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import asdict

from harness.artifacts import REPO_ROOT, resolve_path, write_json_atomic
from harness.config import EvalConfig
from harness.data import DataError
from harness.evaluate import load_eval_splits
from harness.graders import grader_version


class EvalSetChangedError(DataError):
    """The eval set differs from its frozen manifest (or has none)."""


def eval_fingerprint(eval_cfg: EvalConfig) -> dict:
    """Everything that defines what a score on this eval set means; hashed into `eval_set_hash`."""
    splits = load_eval_splits(eval_cfg)  # raises on a missing, empty or malformed set, or a missing split
    data_bytes = resolve_path(eval_cfg.data_file).read_bytes()
    fingerprint = {
        "name": eval_cfg.name,
        "data_file": str(eval_cfg.data_file),
        "data_sha256": hashlib.sha256(data_bytes).hexdigest(),
        "n_examples": sum(len(rows) for rows in splits.values()),
        # which rows are in which split, frozen with the data: moving a row between splits changes the hash
        "splits": {name: {"n": len(rows), "sources_sha256": _sources_sha256(rows)} for name, rows in splits.items()},
        "graders": [asdict(grader) for grader in eval_cfg.graders],
        "grader_versions": [grader_version(grader) for grader in eval_cfg.graders],
        "generation": asdict(eval_cfg.generation),
        "prompt_baseline": asdict(eval_cfg.prompt_baseline),
    }
    canonical = json.dumps(fingerprint, sort_keys=True).encode()
    fingerprint["hash"] = hashlib.sha256(canonical).hexdigest()[:16]
    return fingerprint


def _sources_sha256(rows) -> str:
    return hashlib.sha256("\n".join(row.source.rsplit(":", 1)[-1] for row in rows).encode()).hexdigest()[:16]


def verify_frozen(eval_cfg: EvalConfig) -> str:
    """The identity of the eval set's split, if the set matches the committed manifest; otherwise an error
    saying what changed.

    The identity is "<hash>-<split>": scores on the selection split never compare with scores on the reporting
    split. Scoring only the first N examples (eval.max_examples) gives "<hash>-<split>-first<N>", so that scores
    on a subset are never compared with scores on the whole split.
    """
    current = eval_fingerprint(eval_cfg)
    manifest_path = resolve_path(eval_cfg.manifest)
    refreeze = f"python -m harness.evalset freeze eval={eval_cfg.name}"
    if not manifest_path.is_file():
        raise EvalSetChangedError(
            f"{manifest_path}: eval set {eval_cfg.name!r} has no manifest; freeze it first with: {refreeze}"
        )
    frozen = json.loads(manifest_path.read_text(encoding="utf-8"))
    if frozen.get("hash") != current["hash"]:
        changed = sorted(k for k in current if k != "hash" and frozen.get(k) != current[k])
        raise EvalSetChangedError(
            f"{manifest_path}: eval set {eval_cfg.name!r} differs from its frozen manifest "
            f"(changed: {', '.join(changed) or 'hash'}; frozen {frozen.get('hash')}, now {current['hash']}). "
            f"Scores would not be comparable with earlier ones. If the change is deliberate, re-freeze: {refreeze}"
        )
    identity = f"{current['hash']}-{eval_cfg.split}"
    if eval_cfg.max_examples is not None:
        return f"{identity}-first{eval_cfg.max_examples}"
    return identity


def freeze(eval_cfg: EvalConfig) -> dict:
    fingerprint = eval_fingerprint(eval_cfg)
    write_json_atomic(resolve_path(eval_cfg.manifest), fingerprint)
    return fingerprint


def main(argv: list[str] | None = None) -> int:
    from hydra import compose, initialize_config_dir

    from harness.config import register_configs, to_run_config

    parser = argparse.ArgumentParser(description="Freeze or check an eval set's manifest.")
    parser.add_argument("action", choices=["freeze", "check"])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. eval=json_extract")
    args = parser.parse_args(argv)
    register_configs()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base=None):
        cfg = to_run_config(compose("config", overrides=args.overrides))
    try:
        if args.action == "freeze":
            fingerprint = freeze(cfg.eval)
            sizes = ", ".join(f"{name} {split['n']}" for name, split in fingerprint.get("splits", {}).items())
            print(f"froze {cfg.eval.name}: hash {fingerprint['hash']}, {fingerprint['n_examples']} examples "
                  f"({sizes}) -> {cfg.eval.manifest}")
        else:
            print(f"{cfg.eval.name}: frozen, hash {verify_frozen(cfg.eval)}")
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
