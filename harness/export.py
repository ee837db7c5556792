"""Ship a trained adapter: prove that it serves as it was evaluated, and export it.

    python -m harness.export <run or trial dir> [--out DIR] [--merge-into dequantized|original]
        [--name NAME] [key=value ...]      # overrides on the run's config.yaml, e.g. train.device=cpu
    export_run(run_dir, out_dir=None, overrides=None, merge_into="dequantized", name=None) -> ExportResult

Reads the run's results.json (a `RunResults` record), config.yaml and adapter/. Writes --out (default
<run dir>/export) atomically, and only into a directory export created itself:
  adapter/         the PEFT adapter as trained (adapter_config.json + adapter_model.safetensors)
  merged/          base + adapter merged into one fp32 safetensors model, tokenizer beside it, for runtimes
                   without LoRA (llama.cpp, Ollama): AutoModelForCausalLM.from_pretrained(merged/)
  serving.json     a `harness.serving.ServingRecord`: base model identity, rank, alpha, scaling rule, target
                   modules, the vLLM command, the checks
  serving_card.md  the same for a reader
  export.json      an `ExportHistory`: this export's record under `export`, earlier ones under `previous`

An NF4-trained adapter is merged into the dequantized NF4 weights by default (`--merge-into dequantized`):
the weights it was trained and evaluated on, read back exactly as `harness.model._dequantized_weight` does.
The merged model then reproduces the evaluated one up to float rounding, and keeps the NF4 quantization
error. `--merge-into original` merges into the original full-precision weights: closer to the unquantized
base, but it differs from what was evaluated (NF4 base + adapter) by the NF4 quantization error, so its
agreement with the evaluated model is measured and reported, not required. An unquantized run has one
merge: into its own base.

Proof, run at every export and recorded (base_hash_matches_run is recorded, not required):
  scaling_matches_run       adapter_config.json's scale (alpha/r; alpha/sqrt(r) with use_rslora) is the one
                            the run trained and evaluated with (results.adapter): an edited config is caught
  adapter_hash_matches_run  the adapter's content hash (tensors + LoRA settings, model.adapter_hash) is the
                            one results.json recorded: the adapter shipped is the adapter scored
  adapter_as_evaluated      base + adapter, on the evaluation's inference path, regenerates the run's
                            recorded greedy outputs (final stage) on the evaluation's first held-out batch
  merged_delta              W_merged - W_base == scaling * B @ A for one target layer, from the saved files
  merged_logits             merged model (reloaded from disk) vs base + adapter on the canary prompts: max
                            |logit difference| within LOGIT_TOLERANCE for the compute dtype
  merged_greedy             the merged model's greedy outputs == base + adapter's on the same examples
vLLM's LoRA constraints are harness.serving's.

Exit codes: 0 shipped, every check passed. 1 not shipped: the proof failed; only the record and the card
are written. 2 bad input: one line naming the path; nothing written. 3 shipped and proven, but vLLM would
refuse the adapter as it is: serve merged/, or apply the printed fix.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from harness.artifacts import git_revision, library_versions, replace_dir_atomic, write_text_atomic
from harness.config import RunConfig
from harness.merge import MergeError, prove_and_merge
from harness.recordio import RecordError, read_record, write_record
from harness.records import RunResults
from harness.serving import (
    AdapterConfig,
    ExitCode,
    ExportHistory,
    ExportRecord,
    build_serving_record,
    default_lora_name,
    read_adapter_config,
    serving_card,
)

MERGE_MODES = ("dequantized", "original")


class ExportError(Exception):
    """Bad input: a missing or malformed run directory, config, adapter or output directory (exit 2)."""


@dataclass
class ExportResult:
    out_dir: Path
    record: ExportRecord  # as written to export.json; its `serving` as written to serving.json


def export_run(run_dir: Path, out_dir: Path | None = None, overrides: list[str] | None = None,
               merge_into: str = "dequantized", name: str | None = None) -> ExportResult:
    """Export one finished run or sweep trial. Bad input raises ExportError (or DataError) before any write."""
    started = time.perf_counter()
    # 1. Inputs: the run's files and config, and the output directory, checked before any model loads.
    run_dir = Path(run_dir)
    overrides = list(overrides or [])
    results, adapter_dir, adapter = _read_run(run_dir)
    cfg = run_config_from(run_dir, overrides)
    if merge_into not in MERGE_MODES:
        raise ExportError(f"--merge-into {merge_into!r}: expected one of {', '.join(MERGE_MODES)}")
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "export"
    previous = _check_out_dir(out_dir)

    # 2. The eval set must be the one the run was scored on, or its recorded outputs prove nothing.
    from harness.evalset import verify_frozen
    from harness.evaluate import load_heldout

    eval_set_hash = verify_frozen(cfg.eval)
    if eval_set_hash != results.eval_set.hash:
        raise ExportError(f"{run_dir / 'results.json'}: eval set hash {results.eval_set.hash} != "
                          f"current {eval_set_hash}: pass the run's eval overrides")
    heldout = load_heldout(cfg.eval)
    recorded = _recorded_outputs(results, run_dir)
    # The evaluation's first batch, so that left padding (and so the arithmetic) is the one the run had.
    checked = heldout[: max(cfg.eval.canary_examples, min(cfg.eval.generation.batch_size, len(heldout)))]
    missing = [e.source for e in checked if e.source not in recorded]
    if missing:
        raise ExportError(f"{run_dir / 'results.json'}: no recorded output for {missing[0]}")

    # 3. Prove and merge into a staging directory beside --out; publish it with one rename.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.export-"))
    try:
        evidence = prove_and_merge(cfg, results, adapter_dir, adapter, heldout[: cfg.eval.canary_examples],
                                    checked, recorded, merge_into, staging / "merged")
        proof_ok = all(c.ok for c in evidence.proof if c.gating)
        if proof_ok:
            (staging / "adapter").mkdir()
            for file_name in ("adapter_config.json", "adapter_model.safetensors"):
                shutil.copy2(adapter_dir / file_name, staging / "adapter" / file_name)
        else:
            shutil.rmtree(staging / "merged")  # never ship what does not behave as evaluated
        if cfg.model.chat_template:
            write_text_atomic(staging / "chat_template.jinja", cfg.model.chat_template)
        resolved = out_dir.resolve()
        serving = build_serving_record(
            adapter, evidence.adapter_hash, evidence.base, evidence.vllm, evidence.proof, evidence.merged,
            [e.source for e in checked], resolved, name or default_lora_name(run_dir),
            cfg.model.revision if cfg.model.kind == "hf" else None,
            resolved / "chat_template.jinja" if cfg.model.chat_template else None)
        record = ExportRecord(
            run_dir=str(run_dir), results=str(run_dir / "results.json"), overrides=overrides,
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), exit_code=serving.exit_code,
            verdict=serving.verdict, serving=serving, git_revision=git_revision(),
            library_versions=library_versions(), device=evidence.base.device,
            wall_time_s=round(time.perf_counter() - started, 2))
        write_record(staging / "serving.json", serving)
        write_text_atomic(staging / "serving_card.md",
                          serving_card(serving, record.run_dir, record.created_at, record.wall_time_s))
        record.files = sorted([str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file()]
                              + ["export.json"])
        write_record(staging / "export.json", ExportHistory(record, previous))
        staging.chmod(0o755)  # mkdtemp makes it owner-only; an export is shared like the run it came from
        replace_dir_atomic(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(out_dir, record)


# ---------------------------------------------------------------------------------------------------------
# Run directories, configs and the output directory


def run_config_from(run_dir: Path, overrides: list[str]) -> RunConfig:
    """The run's resolved config.yaml as a validated RunConfig, with key=value overrides applied.

    config.yaml is already composed, so overrides set keys (train.device=cpu); choosing a group (model=tiny)
    would describe another run and is refused, naming the override.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ExportError(f"{path} not found (not a run or trial directory)")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(RunConfig), OmegaConf.load(path))
    except (OmegaConfBaseException, ValueError) as err:
        raise ExportError(f"{path}: {_one_line(err)}") from None
    for override in overrides:
        key = override.split("=", 1)[0]
        if "=" not in override or key.startswith(("+", "~")):
            raise ExportError(f"override {override!r}: expected key=value on the run's config, e.g. "
                              "train.device=cpu")
        try:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([override]))
        except (OmegaConfBaseException, ValueError) as err:
            hint = "" if "." in key else "; the run's config is composed already: set keys, not groups"
            raise ExportError(f"override {override!r}: {_one_line(err)}{hint}") from None
    try:
        cfg = OmegaConf.to_object(merged)
        cfg.validate()
    except (OmegaConfBaseException, ValueError) as err:
        raise ExportError(f"{path} with overrides {overrides}: {_one_line(err)}") from None
    assert isinstance(cfg, RunConfig), type(cfg)
    return cfg


def _read_run(run_dir: Path) -> tuple[RunResults, Path, AdapterConfig]:
    """(results.json, adapter dir, adapter_config.json) of a finished run, or ExportError naming what is wrong."""
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir}: not a directory (expected a run or sweep trial directory)")
    results_path = run_dir / "results.json"
    try:
        results = read_record(RunResults, results_path)
    except RecordError as err:
        raise ExportError(_one_line(err)) from None
    if results.status != "complete":
        raise ExportError(f"{results_path}: status {results.status!r}, expected 'complete'")
    adapter_dir = run_dir / "adapter"
    for file_name in ("adapter_config.json", "adapter_model.safetensors"):
        if not (adapter_dir / file_name).is_file():
            raise ExportError(f"{adapter_dir / file_name} not found (adapters load from safetensors only)")
    try:
        adapter = read_adapter_config(adapter_dir / "adapter_config.json")
    except RecordError as err:
        raise ExportError(_one_line(err)) from None
    return results, adapter_dir, adapter


def _recorded_outputs(results: RunResults, run_dir: Path) -> dict[str, str]:
    """source -> greedy output the run recorded for its final stage."""
    stage = results.stages.get(results.final.stage)
    if stage is None or not stage.heldout.per_example:
        raise ExportError(f"{run_dir / 'results.json'}: no per-example held-out outputs for the final stage "
                          f"{results.final.stage!r}")
    return {row.source: row.output for row in stage.heldout.per_example}


def _check_out_dir(out_dir: Path) -> list[ExportRecord]:
    """Refuse an existing non-empty directory that export did not create; return its earlier export records."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"--out {out_dir}: exists and is not a directory")
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return []
    if not (out_dir / "export.json").is_file():
        raise ExportError(f"--out {out_dir}: exists, is not empty and was not created by harness.export "
                          "(no export.json); choose another --out")
    try:
        history = read_record(ExportHistory, out_dir / "export.json")
    except RecordError as err:
        raise ExportError(f"--out {out_dir}: not an export directory harness.export can replace "
                          f"({_one_line(err)}); choose another --out") from None
    ours = set(history.export.files)
    foreign = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*")
                     if p.is_file() and str(p.relative_to(out_dir)) not in ours)
    if foreign:
        raise ExportError(f"--out {out_dir}: holds {foreign[0]}, which harness.export did not write; move it or "
                          "choose another --out")
    return [history.export, *history.previous]


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


# ---------------------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a finished run or sweep trial directory (holds results.json)")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: <run_dir>/export)")
    parser.add_argument("--merge-into", choices=MERGE_MODES, default="dequantized",
                        help="NF4 runs: merge into the dequantized NF4 weights (as evaluated; default) or into "
                             "the original full-precision weights")
    parser.add_argument("--name", default=None, help="the adapter's model name in vLLM's --lora-modules")
    parser.add_argument("overrides", nargs="*", help="key=value on the run's config, e.g. train.device=cpu")
    args = parser.parse_intermixed_args(argv)
    from harness.data import DataError

    try:
        result = export_run(args.run_dir, args.out, args.overrides, args.merge_into, args.name)
    except (ExportError, MergeError, DataError, FileNotFoundError) as err:  # DataError: the eval set changed or is missing
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return int(ExitCode.BAD_INPUT)
    serving = result.record.serving
    print(serving.verdict)
    for check in serving.vllm.checks + serving.proof.checks:
        status = "ok" if check.ok else ("FAIL" if check.gating else "note")
        fix = f" (fix: {check.fix})" if check.fix and not check.ok else ""
        print(f"  {status:<4} {check.name}: {check.message}{fix}")
    print(f"vLLM: {serving.vllm.command}")
    print(f"card: {result.out_dir / 'serving_card.md'} ({result.record.wall_time_s:.1f} s)")
    return result.record.exit_code


if __name__ == "__main__":
    sys.exit(main())
