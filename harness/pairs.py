"""On-policy preference pairs: the SFT policy's own wrong answers on a prompt pool, each against the gold answer.

    mined = mine_pairs(sft_model, tokenizer, cfg, pool_path, out_path, exclude=every_heldout_example,
                       source={"adapter": str(adapter_dir), "base_model_hash": base.model_hash})
    mined.path, mined.n_pairs, mined.provenance.counts.greedy_score

    python -m harness.pairs mine [overrides] --adapter DIR [--pool FILE] --out FILE

For each pool prompt (eval-row format, read and checked like held-out rows): the greedy output and
`data.mining.samples` sampled ones (seeded with `seed`), graded with the task's graders. Every distinct output
below full credit is one pair: chosen = the gold answer as the SFT data writes an answer (eval_data.answer_text),
rejected = that output. Pool prompts that overlap any held-out prompt (harness.leakage, eval.leakage settings)
are dropped and counted. The pairs are checked as user preference data is (load_preference_data, the chat
template, leakage against the held-out set) before the file is moved into place, then its provenance is
written beside it: `<out>.provenance.json` (MinedPairsRecord). A pairs file without it is unfinished.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from harness.artifacts import git_revision, library_versions, resolve_path, write_jsonl_atomic
from harness.config import RunConfig
from harness.data import ROLE_MARKERS, DataError, Message, chat, check_chat_template, load_preference_data
from harness.eval_data import answer_text, load_eval_rows
from harness.evaluate import AdapterInactiveError, HeldoutExample, Sampling, generate, grade_outputs
from harness.leakage import check_leakage
from harness.records import MinedPairsRecord, MiningCounts, write_record

FULL_CREDIT = 1.0  # an output graded below this is an error to prefer against


class NoPairsError(DataError):
    """The policy made no usable error on the pool: there is nothing to prefer against (counts say why)."""

    def __init__(self, message: str, counts: MiningCounts):
        super().__init__(message)
        self.counts = counts


@dataclass
class MinedPairs:
    path: Path  # the pairs file (load_preference_data format)
    provenance: MinedPairsRecord  # what was written to provenance_path
    provenance_path: Path
    n_pairs: int


def provenance_path_for(out_path: Path) -> Path:
    return out_path.with_name(out_path.name + ".provenance.json")


def mine_pairs(model, tokenizer, cfg: RunConfig, pool_path: Path, out_path: Path, *,
               exclude: list[HeldoutExample], source: dict) -> MinedPairs:
    """Mine, check and write the pairs file and its provenance; NoPairsError when the policy made no error.

    `model` is the SFT policy (adapter active), `exclude` every held-out example (all splits). `source` is recorded
    as given; with "adapter" (a directory) its adapter_hash is recorded too, with "overrides" (Hydra overrides)
    the rebuild command names them, and "command" replaces that command.
    """
    out_path, mining = Path(out_path), cfg.data.mining
    # 1. The pool, checked like held-out rows, minus every prompt that overlaps the held-out set.
    pool, excluded, pool_rows = load_pool(cfg, pool_path, exclude)
    # 2. Greedy (as evaluation generates) plus sampled outputs, graded with the task's graders.
    generation = cfg.eval.generation
    prompts = [example.messages for example in pool]
    greedy = generate(model, tokenizer, prompts, generation.max_new_tokens, generation.batch_size)
    sampled: list[str] = []
    sampled_scores: list[float] = []
    if mining.samples:
        sampling = Sampling(mining.samples, mining.temperature, mining.top_p, cfg.seed)
        sampled = generate(model, tokenizer, prompts, generation.max_new_tokens, generation.batch_size, sampling)
        repeated = [example for example in pool for _ in range(mining.samples)]
        sampled_scores = [r.score for r in grade_outputs(cfg.eval, repeated, sampled).per_example]
    greedy_graded = grade_outputs(cfg.eval, pool, greedy)
    # 3. One pair per distinct wrong output of each prompt.
    rows, counts = _pairs(pool, greedy, [r.score for r in greedy_graded.per_example], sampled, sampled_scores,
                          mining.samples, mining.max_pairs)
    counts = MiningCounts(pool_prompts=pool_rows, excluded_overlap=len(excluded), prompts_mined=len(pool),
                          greedy_score=greedy_graded.score, **counts)
    if not rows:
        raise NoPairsError(
            f"the SFT policy made no errors on the pool: nothing to prefer against ({counts.outputs_graded} outputs "
            f"on {counts.prompts_mined} prompts of {pool_path}, greedy score {counts.greedy_score:.3f}; "
            f"{counts.unusable_outputs} wrong outputs unusable as answers)", counts)
    # 4. Checked as user data is, in a staging file beside the target, then moved into place.
    staging = out_path.with_name(f".{out_path.name}.mining.tmp")
    write_jsonl_atomic(staging, rows)
    try:
        _check_written(staging, cfg, tokenizer, exclude, len(rows))
        text = staging.read_bytes()
        os.replace(staging, out_path)
    finally:
        staging.unlink(missing_ok=True)
    # 5. Provenance: content hashes, settings, counts and the command that rebuilds the file.
    record = _provenance(cfg, pool_path, out_path, text, source, counts, excluded, greedy_graded.grader_versions,
                         str(next(model.parameters()).device))
    write_record(provenance_path_for(out_path), record)
    return MinedPairs(out_path, record, provenance_path_for(out_path), len(rows))


def load_pool(cfg: RunConfig, pool_path: Path, exclude: list[HeldoutExample]
              ) -> tuple[list[HeldoutExample], list[str], int]:
    """The pool's rows (eval-row reader: DataError naming file:line), without the ones overlapping `exclude`.

    Returns (kept examples, sources of the excluded rows, rows read after duplicate removal).
    """
    pool_cfg = dataclasses.replace(cfg.eval, data_file=str(pool_path), split_fraction=None)
    rows = load_eval_rows(pool_cfg).examples
    pool = [HeldoutExample(row.messages, row.reference, row.source) for row in rows]
    heldout = [(e.source, prompt_text(e.messages)) for e in exclude]
    # check_leakage names, per overlapping held-out prompt, the first training prompt it matches: drop those and
    # look again until no pool prompt overlaps (each round drops at least one).
    lenient = dataclasses.replace(cfg.eval.leakage, max_overlap_fraction=1.0)
    excluded: set[str] = set()
    while heldout:
        kept = [(e.source, prompt_text(e.messages)) for e in pool if e.source not in excluded]
        overlapping = {match["train"] for match in check_leakage(kept, heldout, lenient).examples} if kept else set()
        if not overlapping:
            break
        excluded |= overlapping
    if len(excluded) == len(pool):
        raise DataError(f"{pool_path}: every one of its {len(pool)} prompts overlaps a held-out prompt; a "
                        "preference pool must be disjoint from the eval set")
    return [e for e in pool if e.source not in excluded], sorted(excluded, key=_line_order), len(pool)


def prompt_text(messages: list[Message]) -> str:
    """The text leakage compares, as for training prompts: the user turns (system turns are not the question)."""
    return "\n".join(m.content for m in messages if m.role == "user")


def _pairs(pool, greedy, greedy_scores, sampled, sampled_scores, n_samples: int, max_pairs: int | None):
    """Preference rows (prompt order; with max_pairs, each prompt's first errors before anyone's second) and counts."""
    ranked, wrong, duplicates, unusable, prompts_with_error = [], 0, 0, 0, 0
    seen: set[tuple[str, str, str]] = set()  # (prompt, chosen, rejected): pool rows may repeat a prompt
    for index, example in enumerate(pool):
        outputs = [(greedy[index], greedy_scores[index])]
        outputs += list(zip(sampled[index * n_samples:(index + 1) * n_samples],
                            sampled_scores[index * n_samples:(index + 1) * n_samples]))
        chosen, prompt_key = answer_text(example.reference), json.dumps(chat(example.messages))
        rank, erred = 0, False
        for output, score in outputs:
            if score >= FULL_CREDIT:
                continue
            wrong, erred = wrong + 1, True
            if (prompt_key, chosen, output) in seen:
                duplicates += 1
                continue
            seen.add((prompt_key, chosen, output))
            if not _usable_answer(output, chosen):
                unusable += 1
                continue
            row = {"prompt": chat(example.messages), "chosen": [{"role": "assistant", "content": chosen}],
                   "rejected": [{"role": "assistant", "content": output}]}
            ranked.append((rank, index, row))
            rank += 1
        prompts_with_error += erred
    if max_pairs is not None:
        ranked = sorted(ranked, key=lambda item: item[:2])[:max_pairs]
    rows = [row for _, _, row in sorted(ranked, key=lambda item: (item[1], item[0]))]
    counts = {"outputs_graded": len(greedy) + len(sampled), "prompts_with_error": prompts_with_error,
              "wrong_outputs": wrong, "duplicate_pairs_dropped": duplicates, "unusable_outputs": unusable,
              "pairs_written": len(rows)}
    return rows, counts


def _usable_answer(output: str, chosen: str) -> bool:
    """Preference data refuses empty answers, answers equal to chosen and chat role markers in content."""
    if not output.strip() or output.strip() == chosen.strip():
        return False
    return not any(marker in output for markers in ROLE_MARKERS.values() for marker in markers)


def _check_written(path: Path, cfg: RunConfig, tokenizer, exclude: list[HeldoutExample], n_rows: int) -> None:
    """The checks user preference data passes before training: rows, chat template, leakage vs the held-out set."""
    data_cfg = dataclasses.replace(cfg.data, preference_file=str(path), max_preference_examples=None, dedupe=True)
    preference = load_preference_data(data_cfg)
    if len(preference.pairs) != n_rows:  # every duplicate was dropped while mining
        raise AssertionError(f"{path}: {n_rows - len(preference.pairs)} mined pairs are duplicates")
    check_chat_template(tokenizer, preference.conversations())
    if exclude:
        check_leakage([(p.source, prompt_text(p.prompt_messages)) for p in preference.pairs],
                      [(e.source, prompt_text(e.messages)) for e in exclude], cfg.eval.leakage)


def _provenance(cfg: RunConfig, pool_path: Path, out_path: Path, text: bytes, source: dict, counts: MiningCounts,
                excluded: list[str], grader_versions: dict[str, str], device: str) -> MinedPairsRecord:
    from harness.model import adapter_hash

    adapter = source.get("adapter_hash")
    if source.get("adapter"):
        computed = adapter_hash(source["adapter"])
        if adapter is not None and adapter != computed:
            raise ValueError(f"source: adapter_hash {adapter} is not the hash of {source['adapter']} ({computed})")
        adapter = computed
    mining = dataclasses.asdict(cfg.data.mining) | {
        "seed": cfg.seed, "max_new_tokens": cfg.eval.generation.max_new_tokens,
        "batch_size": cfg.eval.generation.batch_size}
    command = source.get("command") or " ".join(
        ["python -m harness.pairs mine", *map(shlex.quote, source.get("overrides", [])),
         *(["--adapter", shlex.quote(str(source["adapter"]))] if source.get("adapter") else []),
         "--pool", shlex.quote(str(pool_path)), "--out", shlex.quote(str(out_path))])
    return MinedPairsRecord(
        pairs_sha256=hashlib.sha256(text).hexdigest(), pairs_file=str(out_path),
        pool_sha256=hashlib.sha256(resolve_path(pool_path).read_bytes()).hexdigest(), pool_file=str(pool_path),
        adapter_hash=adapter, source=dict(source), mining=mining, grader_versions=grader_versions, counts=counts,
        excluded=excluded, device=device, libraries=library_versions(), harness_revision=git_revision(),
        command=command)


def _line_order(source: str) -> tuple[str, int]:
    path, _, line = source.rpartition(":")
    return (path, int(line)) if line.isdigit() else (source, 0)


# ---------------------------------------------------------------------------------------------------------
# CLI


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(prog="python -m harness.pairs",
                                  description="Preference pairs from a saved SFT adapter's errors on a prompt pool.")
    cli.add_argument("action", choices=["mine"])
    cli.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data.mining.samples=8 eval.generation.batch_size=8")
    cli.add_argument("--adapter", required=True, help="the SFT adapter directory (PEFT safetensors)")
    cli.add_argument("--pool", help="the prompt pool JSONL (default: data.mining.pool_file)")
    cli.add_argument("--out", required=True, help="the pairs JSONL to write (its provenance goes beside it)")
    return cli


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_intermixed_args(argv)
    try:
        mined = _mine_command(args)
    except NoPairsError as err:
        print(f"no pairs: {err}", file=sys.stderr)
        return 1
    except (DataError, ValueError, OSError, AdapterInactiveError) as err:  # RecordError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    counts = mined.provenance.counts
    print(f"mined {counts.pairs_written} pairs from {counts.prompts_with_error} of {counts.prompts_mined} pool prompts "
          f"with an error (greedy score {counts.greedy_score:.3f}; {counts.outputs_graded} outputs graded, "
          f"{counts.excluded_overlap} pool prompts excluded for overlapping the held-out set)\n"
          f"  pairs      {mined.path}\n  provenance {mined.provenance_path}\n"
          f"train on them with data.preference_file={mined.path}")
    return 0


def _mine_command(args) -> MinedPairs:
    from harness.evalset import verify_frozen
    from harness.evaluate import check_adapter_active, load_eval_splits
    from harness.model import load_adapter
    from harness.run import load_run_base
    from harness.validate import compose_run_config

    cfg = compose_run_config(args.overrides)
    adapter = Path(args.adapter)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        if not (adapter / name).is_file():
            raise DataError(f"{adapter}: no {name}; --adapter must be a saved PEFT adapter directory (safetensors)")
    pool_path = args.pool or cfg.data.mining.pool_file
    if not pool_path:
        raise ValueError("no prompt pool: pass --pool FILE or set data.mining.pool_file")
    out = Path(args.out)
    if out.is_dir():
        raise DataError(f"{out}: is a directory; --out names the pairs JSONL file")
    if resolve_path(pool_path).resolve() == out.resolve():
        raise DataError(f"{out}: --out is the pool file itself")
    # Everything that can be checked without weights is checked first: eval set, pool rows, overlap.
    eval_set_hash = verify_frozen(cfg.eval)
    exclude = [example for rows in load_eval_splits(cfg.eval).values() for example in rows]
    pool, _, _ = load_pool(cfg, pool_path, exclude)
    base = load_run_base(cfg)
    model = load_adapter(base.model, adapter)
    check_adapter_active(model, base.tokenizer, pool[: cfg.eval.canary_examples])  # a zero adapter mines the base
    source = {"adapter": str(adapter), "base_model_hash": base.model_hash, "eval_set_hash": eval_set_hash,
              "overrides": list(args.overrides)}
    return mine_pairs(model, base.tokenizer, cfg, Path(pool_path), out, exclude=exclude, source=source)


if __name__ == "__main__":
    sys.exit(main())
