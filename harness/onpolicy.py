"""DPO on mined pairs (data.preference_source=mined): the SFT policy's own errors, mined after SFT, before DPO.

    inputs = mine_for_run(cfg, inputs, model, tokenizer, sft_adapter, run_dir / "pairs")   # a run, after its SFT
    inputs = sweep_pairs(cfg, sweep_dir, sft_start, inputs, worker_base)   # a sweep with a shared SFT: once

harness.pairs does the mining (pool prompts minus any that overlap the held-out set, greedy + sampled outputs,
the wrong ones paired with the gold answer, checked like user data, provenance beside the file). A run mines into
`<run_dir>/pairs/onpolicy.jsonl` with its own SFT policy; a sweep whose trials share one SFT mines once, into
`sweeps/<name>/pairs/onpolicy.jsonl`, and every DPO trial trains on that file. A trial's recorded command run
alone trains the same SFT and mines the same pairs (greedy decoding, seeded sampling), so it rebuilds the trial.

Resume: the sweep's pairs are reused only if their provenance says they were mined from this SFT adapter, on this
pool (content hash), with these mining settings, for this eval set, and the file still has the recorded hash;
otherwise the sweep refuses, naming what changed. The pairs file's sha256 is in every results record's data card.
"""

from __future__ import annotations

import dataclasses
import fcntl
from dataclasses import replace
from pathlib import Path

from harness.artifacts import file_sha256
from harness.config import RunConfig
from harness.data import check_chat_template, load_preference_data
from harness.records import MinedPairsRecord, read_record

PAIRS_FILE = "onpolicy.jsonl"
MARKER = ".harness-mined-pairs"  # written first: the harness made this directory


def mine_for_run(cfg: RunConfig, inputs, model, tokenizer, sft_adapter: Path, pairs_dir: Path):
    """Mine pairs with `model` (the SFT policy, saved as `sft_adapter`) and return `inputs` with them."""
    from harness.pairs import mine_pairs

    pairs_dir.mkdir(parents=True, exist_ok=True)
    out = pairs_dir / PAIRS_FILE
    mined = mine_pairs(model, tokenizer, cfg, Path(cfg.data.mining.pool_file), out, exclude=_every_heldout(cfg),
                       source={"adapter": str(sft_adapter), "eval_set_hash": inputs.eval_set_hash})
    counts = mined.provenance.counts
    print(f"mined {counts.pairs_written} pairs from the SFT policy's errors on {counts.prompts_with_error} of "
          f"{counts.prompts_mined} pool prompts (greedy score {counts.greedy_score:.3f}) -> {out}", flush=True)
    return with_pairs(cfg, inputs, out, tokenizer)


def sweep_pairs(cfg: RunConfig, sweep_dir: Path, sft_start, inputs, worker_base):
    """The sweep's mined pairs: read (identity checked) or mined now with the shared SFT policy."""
    from harness.dpo import start_from_adapter
    from harness.model import lora_adapter
    from harness.pairs import provenance_path_for

    pairs_dir = sweep_dir / "pairs"
    out = pairs_dir / PAIRS_FILE
    with open(sweep_dir / ".pairs.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one worker mines; the others wait, then read
        provenance = provenance_path_for(out)
        if provenance.is_file():
            changed = _changed(read_record(MinedPairsRecord, provenance), cfg, sft_start.adapter_hash,
                               inputs.eval_set_hash, out)
            if changed:
                raise ValueError(f"{out}: these pairs were mined with another {', '.join(changed)} than this sweep "
                                 f"uses. They are not deleted: move {pairs_dir} away to mine them again")
            print(f"mined pairs: reusing {out} (same SFT adapter, pool and settings)", flush=True)
            return with_pairs(cfg, inputs, out, inputs.tokenizer)
        if pairs_dir.exists() and not (pairs_dir / MARKER).is_file():
            raise ValueError(f"{pairs_dir} exists but was not made by the harness (no {MARKER}): the sweep mines its "
                             "pairs there and will not overwrite it; move it away or choose another sweep.name")
        pairs_dir.mkdir(parents=True, exist_ok=True)
        (pairs_dir / MARKER).write_text("made by harness.onpolicy\n", encoding="utf-8")
        base = worker_base.base_for(cfg)
        with lora_adapter(base.model, cfg.lora) as model:
            start_from_adapter(model, sft_start.adapter)
            return mine_for_run(cfg, inputs, model, base.tokenizer, sft_start.adapter, pairs_dir)


def with_pairs(cfg: RunConfig, inputs, path: Path, tokenizer):
    """`inputs` with the pairs file at `path` as DPO's preference data, validated like user data."""
    from harness.pairs import provenance_path_for
    from harness.validate import data_card

    data = replace(cfg.data, preference_file=str(path))
    preference = load_preference_data(data)
    check_chat_template(tokenizer, preference.conversations())
    card = data_card(replace(cfg, data=data), inputs.sft, inputs.sft_examples, preference, inputs.leakage,
                     inputs.chat_template_sample, tokenizer)
    card = replace(card, preference_provenance=str(provenance_path_for(path)))
    return replace(inputs, preference=preference, card=card)


def check_pool(cfg: RunConfig) -> None:
    """The pool's rows, checked before any weight loads (DataError naming file:line; every prompt overlapping)."""
    from harness.pairs import load_pool

    load_pool(cfg, Path(cfg.data.mining.pool_file), _every_heldout(cfg))


def _changed(record: MinedPairsRecord, cfg: RunConfig, adapter_hash: str, eval_set_hash: str, out: Path) -> list[str]:
    mining = dataclasses.asdict(cfg.data.mining) | {
        "seed": cfg.seed, "max_new_tokens": cfg.eval.generation.max_new_tokens,
        "batch_size": cfg.eval.generation.batch_size}
    settings = [key for key in sorted(set(mining) | set(record.mining))
                if key != "pool_file" and mining.get(key) != record.mining.get(key)]  # the pool: by content
    changed = [f"data.mining.{key}" if key in dataclasses.asdict(cfg.data.mining) else key for key in settings]
    if record.adapter_hash != adapter_hash:
        changed.append("SFT adapter")
    if record.pool_sha256 != file_sha256(cfg.data.mining.pool_file):
        changed.append("pool content")
    if record.source.get("eval_set_hash") != eval_set_hash:
        changed.append("eval set")
    if not out.is_file() or file_sha256(out) != record.pairs_sha256:
        changed.append("pairs file content (edited or missing)")
    return changed


def _every_heldout(cfg: RunConfig):
    from harness.evaluate import load_eval_splits

    return [example for rows in load_eval_splits(cfg.eval).values() for example in rows]
