"""On-policy preference pairs (harness.pairs): the policy's wrong outputs against the gold, held-out prompts never
mined, provenance that pins the file, and CLI errors that name the input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from harness import pairs
from harness.artifacts import REPO_ROOT
from harness.config import LoraConfig, ModelConfig, QuantConfig
from harness.data import DataError, load_preference_data
from harness.eval_data import answer_text
from harness.evaluate import HeldoutExample, Sampling, generate, load_eval_splits
from harness.model import adapter_hash, attach_lora, load_base_model
from harness.records import MinedPairsRecord, read_record
from tests.conftest import TINY_OVERRIDES, make_config

MINING = ["eval.generation.max_new_tokens=6", "eval.generation.batch_size=4", "data.mining.samples=2"]
POOL = REPO_ROOT / "evals" / "json_extract" / "preference_pool.jsonl"
HELDOUT = REPO_ROOT / "evals" / "json_extract" / "heldout.jsonl"


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    """The tiny model with a saved, non-zero LoRA adapter active (the stand-in SFT policy) and its directory."""
    base = load_base_model(ModelConfig(kind="tiny"), QuantConfig(method="none"), "cpu")
    model = attach_lora(base.model, LoraConfig(r=4, alpha=8))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.5)
    adapter_dir = tmp_path_factory.mktemp("sft") / "adapter_sft"
    model.save_pretrained(adapter_dir, safe_serialization=True)
    return model, base.tokenizer, adapter_dir


@pytest.fixture(scope="module")
def heldout():
    cfg = make_config(TINY_OVERRIDES)
    return [example for rows in load_eval_splits(cfg.eval).values() for example in rows]


def _pool(path: Path, n: int = 3, heldout_line: int | None = 5) -> Path:
    """The first n rows of the shipped pool, plus (as the last row) one held-out row without its split."""
    lines = POOL.read_text(encoding="utf-8").splitlines()[:n]
    if heldout_line is not None:
        row = json.loads(HELDOUT.read_text(encoding="utf-8").splitlines()[heldout_line - 1])
        lines.append(json.dumps({"messages": row["messages"], "reference": row["reference"]}, ensure_ascii=False))
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_wrong_outputs_become_rejected_against_the_gold_and_heldout_prompts_are_never_mined(policy, heldout, tmp_path):
    model, tokenizer, adapter_dir = policy
    cfg = make_config(TINY_OVERRIDES + MINING)
    pool = _pool(tmp_path / "pool.jsonl")
    mined = pairs.mine_pairs(model, tokenizer, cfg, pool, tmp_path / "pairs.jsonl", exclude=heldout,
                             source={"adapter": str(adapter_dir)})

    pool_rows = _rows(pool)
    prompts = [row["messages"] for row in pool_rows[:3]]
    greedy = generate(model, tokenizer, prompts, 6, 4)
    sampled = generate(model, tokenizer, prompts, 6, 4, Sampling(2, 0.8, 1.0, cfg.seed))
    written = _rows(mined.path)
    assert mined.n_pairs == len(written) > 0
    heldout_prompt = pool_rows[3]["messages"]
    for row in written:
        index = prompts.index(row["prompt"])  # every prompt is a pool prompt, never the held-out one
        assert row["prompt"] != heldout_prompt
        assert row["chosen"] == [{"role": "assistant", "content": answer_text(pool_rows[index]["reference"])}]
        assert row["rejected"][0]["content"] in {greedy[index], *sampled[2 * index : 2 * index + 2]}
    # The random tiny policy is wrong everywhere: each prompt's greedy output is one of its pairs.
    for index, output in enumerate(greedy):
        if output.strip():
            assert any(r["prompt"] == prompts[index] and r["rejected"][0]["content"] == output for r in written)
    distinct = {json.dumps(row, sort_keys=True) for row in written}
    assert len(distinct) == len(written)

    record = read_record(MinedPairsRecord, mined.provenance_path)
    assert record.pairs_sha256 == hashlib.sha256(mined.path.read_bytes()).hexdigest()
    assert record.pool_sha256 == hashlib.sha256(pool.read_bytes()).hexdigest()
    assert record.adapter_hash == adapter_hash(adapter_dir)
    assert record.excluded == [f"{pool}:4"]
    counts = record.counts
    assert (counts.pool_prompts, counts.excluded_overlap, counts.prompts_mined, counts.outputs_graded) == (4, 1, 3, 9)
    assert counts.pairs_written == len(written) and counts.greedy_score == 0.0
    assert counts.wrong_outputs == counts.pairs_written + counts.duplicate_pairs_dropped + counts.unusable_outputs
    assert record.mining["seed"] == cfg.seed and record.mining["samples"] == 2
    assert "--pool" in record.command and str(adapter_dir) in record.command
    cfg_data = make_config(TINY_OVERRIDES + [f"data.preference_file={mined.path}"]).data
    assert len(load_preference_data(cfg_data).pairs) == len(written)


def test_same_seed_gives_a_byte_identical_file(policy, heldout, tmp_path):
    model, tokenizer, _ = policy
    cfg = make_config(TINY_OVERRIDES + MINING)
    pool = _pool(tmp_path / "pool.jsonl", heldout_line=None)
    first = pairs.mine_pairs(model, tokenizer, cfg, pool, tmp_path / "a.jsonl", exclude=heldout, source={})
    second = pairs.mine_pairs(model, tokenizer, cfg, pool, tmp_path / "b.jsonl", exclude=heldout, source={})
    assert first.path.read_bytes() == second.path.read_bytes()
    assert first.provenance.pairs_sha256 == second.provenance.pairs_sha256
    assert first.provenance.adapter_hash is None


def test_a_prompt_repeated_in_the_pool_gives_its_pairs_once(policy, heldout, tmp_path):
    model, tokenizer, _ = policy
    cfg = make_config(TINY_OVERRIDES + MINING)
    row = json.loads(_pool(tmp_path / "once.jsonl", n=1, heldout_line=None).read_text())
    twice = tmp_path / "twice.jsonl"  # the eval-row reader keeps a row repeated in two splits (with a warning)
    twice.write_text("".join(json.dumps(row | {"split": split}) + "\n" for split in ("selection", "reporting")))
    mined = pairs.mine_pairs(model, tokenizer, cfg, twice, tmp_path / "pairs.jsonl", exclude=heldout, source={})
    (greedy,) = generate(model, tokenizer, [row["messages"]], 6, 4)
    rejected = [written["rejected"][0]["content"] for written in _rows(mined.path)]
    assert rejected.count(greedy) == 1 and len(set(rejected)) == len(rejected)  # both copies' greedy: one pair
    assert mined.provenance.counts.duplicate_pairs_dropped >= 1


def test_max_pairs_spreads_over_prompts(policy, heldout, tmp_path):
    model, tokenizer, _ = policy
    cfg = make_config(TINY_OVERRIDES + MINING + ["data.mining.max_pairs=2"])
    pool = _pool(tmp_path / "pool.jsonl", heldout_line=None)
    mined = pairs.mine_pairs(model, tokenizer, cfg, pool, tmp_path / "pairs.jsonl", exclude=heldout, source={})
    prompts = [row["messages"] for row in _rows(pool)]
    assert [prompts.index(row["prompt"]) for row in _rows(mined.path)] == [0, 1]


def test_a_prompt_answered_right_gives_no_pair_and_no_errors_at_all_is_a_clear_error(policy, heldout, tmp_path):
    model, tokenizer, _ = policy
    cfg = make_config(TINY_OVERRIDES + ["eval.generation.max_new_tokens=6", "data.mining.samples=0",
                                        "eval.graders=[{type: exact_match}]"])
    rows = _rows(_pool(tmp_path / "source.jsonl", n=2, heldout_line=None))
    greedy = generate(model, tokenizer, [row["messages"] for row in rows], 6, 4)
    assert greedy[0] != "wrong gold" and greedy[0].strip()
    pool = tmp_path / "pool.jsonl"
    # Row 1's gold is exactly what the policy says (right: no pair); row 2's is something else (one pair).
    pool.write_text("".join(json.dumps({"messages": row["messages"], "reference": gold}) + "\n"
                            for row, gold in zip(rows, [greedy[0], "wrong gold"])), encoding="utf-8")
    mined = pairs.mine_pairs(model, tokenizer, cfg, pool, tmp_path / "pairs.jsonl", exclude=heldout, source={})
    assert _rows(mined.path) == [{"prompt": rows[1]["messages"], "chosen": [{"role": "assistant", "content": "wrong gold"}],
                                  "rejected": [{"role": "assistant", "content": greedy[1]}]}]
    assert mined.provenance.counts.prompts_with_error == 1 and mined.provenance.counts.greedy_score == 0.5

    pool.write_text(json.dumps({"messages": rows[0]["messages"], "reference": greedy[0]}) + "\n", encoding="utf-8")
    with pytest.raises(pairs.NoPairsError, match="made no errors on the pool: nothing to prefer against"):
        pairs.mine_pairs(model, tokenizer, cfg, pool, tmp_path / "none.jsonl", exclude=heldout, source={})
    assert not (tmp_path / "none.jsonl").exists()


def test_malformed_pool_row_is_refused_naming_file_and_line(heldout, tmp_path):
    cfg = make_config(TINY_OVERRIDES + MINING)
    pool = _pool(tmp_path / "pool.jsonl", n=1, heldout_line=None)
    pool.write_text(pool.read_text() + '{"messages": [{"role": "user", "content": "hi"}]}\n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"{pool}:2: missing field 'reference'"):
        pairs.load_pool(cfg, pool, heldout)


def _cli(argv, capsys) -> tuple[int, str, str]:
    rc = pairs.main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.mark.parametrize("problem", ["missing pool", "malformed row", "no adapter_config.json", "bad key"])
def test_cli_bad_input_is_one_line_exit_2_and_no_file(policy, tmp_path, capsys, problem):
    _, _, adapter_dir = policy
    pool, adapter, overrides = _pool(tmp_path / "pool.jsonl", n=2, heldout_line=None), adapter_dir, TINY_OVERRIDES
    expected = ""
    if problem == "missing pool":
        pool, expected = tmp_path / "absent.jsonl", f"{tmp_path / 'absent.jsonl'}: file not found"
    elif problem == "malformed row":
        pool.write_text(pool.read_text() + "{not json\n", encoding="utf-8")
        expected = f"{pool}:3: malformed JSON"
    elif problem == "no adapter_config.json":
        adapter = tmp_path / "empty_adapter"
        adapter.mkdir()
        expected = "no adapter_config.json"
    else:
        overrides, expected = [*TINY_OVERRIDES, "data.mining.top_p=2"], "data.mining.top_p=2.0 must be in (0, 1]"
    out = tmp_path / "pairs.jsonl"
    rc, _, stderr = _cli(["mine", *overrides, "--adapter", str(adapter), "--pool", str(pool), "--out", str(out)],
                         capsys)
    assert rc == 2 and expected in stderr and len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert not out.exists() and not list(tmp_path.glob(".pairs.jsonl*"))


def test_cli_mines_from_a_saved_adapter(policy, tmp_path, capsys):
    _, _, adapter_dir = policy
    pool, out = _pool(tmp_path / "pool.jsonl", n=2), tmp_path / "mined" / "pairs.jsonl"
    # The eval set's frozen generation settings (the manifest pins them), one sample per prompt.
    rc, stdout, stderr = _cli(["mine", *TINY_OVERRIDES, "data.mining.samples=1", "--adapter", str(adapter_dir),
                               "--pool", str(pool), "--out", str(out)], capsys)
    assert rc == 0, stderr
    record = read_record(MinedPairsRecord, pairs.provenance_path_for(out))
    assert f"mined {record.counts.pairs_written} pairs" in stdout and str(out) in stdout
    assert record.counts.excluded_overlap == 1 and record.source["eval_set_hash"]
    assert record.adapter_hash == adapter_hash(adapter_dir) and "model=tiny" in record.command


def test_mining_settings_are_checked_naming_the_key():
    for override, message in [("data.mining.samples=-1", "data.mining.samples=-1"),
                              ("data.mining.temperature=0", "data.mining.temperature=0.0"),
                              ("data.mining.max_pairs=0", "data.mining.max_pairs=0")]:
        with pytest.raises(ValueError, match=message):
            make_config([*TINY_OVERRIDES, override])


def test_gold_answers_render_as_the_sft_data_writes_them_and_the_shipped_pool_is_disjoint(heldout):
    for line in (REPO_ROOT / "evals" / "json_extract" / "sft_train.jsonl").read_text(encoding="utf-8").splitlines():
        answer = json.loads(line)["messages"][-1]["content"]
        assert answer_text(json.loads(answer)) == answer
    cfg = make_config(TINY_OVERRIDES)
    pool, excluded, n_rows = pairs.load_pool(cfg, POOL, heldout)
    assert (len(pool), excluded, n_rows) == (240, [], 240)
    assert isinstance(pool[0], HeldoutExample)
