"""Every record type survives to_json -> from_json; a file with a missing, mistyped or unknown field, or of
another format, is refused naming the file and the dotted field."""

from __future__ import annotations

import json
import math

import pytest

from harness import records
from harness.records import RecordError, from_json, read_record, to_json, write_record

HELDOUT = {
    "score": 0.5, "stderr": 0.35, "ci_low": 0.09, "ci_high": 0.91, "n": 2, "metrics": {"exact_match/mean": 0.5},
    "per_example": [
        {"source": "h.jsonl:1", "prompt": "p1", "output": "a", "reference": {"name": "A"}, "score": 1.0,
         "grades": {"exact_match": {"score": 1.0, "details": {}}}},
        {"source": "h.jsonl:2", "prompt": "p2", "output": "b", "reference": "c", "score": 0.0,
         "grades": {"exact_match": {"score": 0.0, "details": {}}}},
    ],
    "seconds": 1.5, "batch_size": 8, "max_new_tokens": 64, "grader_versions": {"exact_match": "1"},
}
REGRESSION = {"task": "mc", "metric": "acc", "score": 0.5, "stderr": math.nan, "n": 2, "task_version": "1.0",
              "batch_size": 8, "limit": None, "metrics": {"acc,none": 0.5, "acc_norm,none": 1.0}, "filter": "none",
              "apply_chat_template": True, "num_fewshot": 0, "max_gen_toks": None, "seed": 0,
              "task_identity": {"version": "1.0", "data_test_sha256": "ab12"}, "per_example": [1.0, 0.0]}
SUMMARY = {"score": 0.5, "stderr": 0.35, "ci_low": 0.09, "ci_high": 0.91, "n": 2}
TRAINING = {"stage": "sft", "steps": 2, "train_runtime_s": 1.0, "tokens_seen": 100, "tokens_per_s": 100.0,
            "first_loss": 2.0, "final_loss": 1.0, "peak_memory_mb": 512.0}
EVAL_SET = {"name": "json_extract", "hash": "abc-selection-first2", "n": 2, "min_score": 0.8, "split": "selection"}
MODEL = {"id": "tiny", "hash": "0123456789abcdef", "quantized": True, "compute_dtype": "torch.float32",
         "attn_implementation": "sdpa"}
TOKENIZER = {"name": "GPT2TokenizerFast", "vocab_size": 49152, "chat_template_sha256": "feedface"}
ADAPTER = {"path": "run/adapter", "hash": "ff" * 32, "r": 4, "alpha": 8.0, "target_modules": ["q_proj", "v_proj"]}
LEAKAGE = {"n_train": 10, "n_heldout": 2, "exact_overlaps": 0, "ngram_overlaps": 0, "ngram": 13,
           "overlap_fraction": 0.0, "examples": []}
RESULTS = {
    "format": records.RESULTS_FORMAT, "status": "complete", "kind": "run", "run_dir": "run",
    "config": {"seed": 0}, "eval_set": EVAL_SET, "model": MODEL, "tokenizer": TOKENIZER, "adapter": ADAPTER,
    "data": {"sft_file": "t.jsonl", "sft_rows": 10, "sft_examples": 10, "sft_truncated": 0, "duplicates_removed": 0,
             "leakage": LEAKAGE, "chat_template_sample": "⟦x⟧", "preference_file": None, "preference_rows": None,
             "preference_pairs": None, "preference_duplicates_removed": None,
             "preference_sha256": None, "preference_provenance": None,
             "sft_format": "messages", "sft_dropped_for_length": 0, "eval_file": "h.jsonl", "eval_rows": 2,
             "eval_examples": 2, "eval_duplicates_removed": 0,
             "warnings": [{"source": "t.jsonl:3", "message": "duplicate of t.jsonl:1, removed"}]},
    "baselines": {"key": "k", "cached": False, "zero_shot": HELDOUT, "prompt_baseline": None,
                  "prompting_meets_min_score": False, "regression": {"mc": REGRESSION}},
    "stages": {"sft": {"heldout": HELDOUT, "regression": {"mc": REGRESSION}, "train": TRAINING, "reference": None,
                       "shared_from": "sweeps/sft_dpo/sft", "adapter_hash": "aa"},
               "dpo": {"heldout": HELDOUT, "regression": {}, "train": {**TRAINING, "stage": "dpo"},
                       "reference": {"policy": "sft", "adapter": "sweeps/sft_dpo/sft/adapter", "adapter_hash": "aa"},
                       "shared_from": None, "adapter_hash": None}},
    "final": {"stage": "dpo", "heldout": SUMMARY, "meets_min_score": False,
              "regression": {"mc": {k: v for k, v in REGRESSION.items() if k != "per_example"}},
              "regression_delta": {"mc": {"base": 0.5, "adapter": 0.5, "delta": 0.0, "max_regression": 0.05,
                                          "ok": True}},
              "worst_regression": 0.0, "regression_ok": True},
    "canary": {"max_logit_diff": 0.3, "outputs_changed": 1, "n": 2},
    "metrics": {"device": "cpu", "compute_dtype": "torch.float32", "library_versions": {"trl": "1.16.0"},
                "seed": 0, "torch_threads": 2, "reproducibility": "bit-identical on cpu", "git_revision": "abc",
                "wall_time_s": 3.0, "train_runtime_s": 2.0,
                "tokens_per_s": {"sft": 100.0}, "peak_memory_mb": 512.0, "stages": {"sft": TRAINING}},
}
TRIAL = {"format": records.TRIAL_FORMAT, "number": 3, "state": "COMPLETE", "params": {"lora_r": 8},
         "command": "python -m harness lora.r=8", "overrides": ["lora.r=8"], "trial_dir": "sweeps/rank/trials/003", "host": "h", "pid": 42,
         "started_at": "2026-12-01T00:00:00+00:00", "fail_reason": None,
         "intermediate": [{"step": 10, "score": 0.25}], "values": [0.5], "feasible": True, "duration_s": 12.5,
         "finished_at": "2026-12-01T00:01:00+00:00", "retry_of": None, "steps_trained": 10, "steps_budget": 40}
SWEEP = {"format": records.SWEEP_FORMAT, "name": "rank", "question": "q", "command": "python -m harness +sweep=rank",
         "storage": "sqlite:///s.db", "sampler": "grid", "pruner": "none", "objective": "heldout",
         "n_trials": 3, "space": {"lora_r": [4, 8]}, "eval_set": {**EVAL_SET, "n": None},
         "model": {"id": "tiny", "hash": None, "quantized": True, "compute_dtype": None, "attn_implementation": None},
         "price_per_gpu_hour": 2.0, "config": {"seed": 0}, "started_at": "t0", "servable_ranks_only": True,
         "finished_at": None, "wall_time_s": None}
BEST = {"format": records.BEST_FORMAT, "number": 3, "trial_dir": "t/003", "adapter": "t/003/adapter",
        "params": {"lora_r": 8}, "score": 0.5, "feasible": True}
BASELINE = {"format": records.BASELINE_FORMAT, "created_from": "run/results.json", "created_at": "t",
            "git_revision": "abc", "overrides": ["model=tiny", "eval.max_examples=8"],
            "config": {"eval": {"equivalence_margin": 0.05}}, "eval_set": EVAL_SET, "max_examples": 8, "model": MODEL,
            "tokenizer": TOKENIZER, "adapter": ADAPTER, "min_score": 0.8, "min_score_verdict": "meets",
            "heldout": {**SUMMARY, "grader_versions": {"exact_match": "1"}, "outputs_kept": True,
                        "per_example": [{"source": "h.jsonl:1", "score": 1.0, "output": "a"},
                                        {"source": "h.jsonl:2", "score": 0.0, "output": None}]},
            "regression": {"mc": {**REGRESSION, "max_regression": 0.05}}, "base_regression": {"mc": REGRESSION},
            "library_versions": {"trl": "1.16.0"}}
CACHE = {"format": records.BASELINE_CACHE_FORMAT, "key": "k", "eval_set_hash": "abc", "model_id": "tiny",
         "model_hash": "0123", "zero_shot": HELDOUT, "prompt_baseline": HELDOUT, "regression": {"mc": REGRESSION}}

VERDICT = {"question": "min_score", "state": "inconclusive", "text": "t", "method": "95% Wilson score interval",
           "estimate": 0.8, "ci_low": 0.71, "ci_high": 0.87, "n": 100, "p_value": None, "p_adjusted": None,
           "examples_to_decide": None}
VERDICTS = {"format": records.VERDICTS_FORMAT, "best": 2, "recommended": 1, "reasons": ["cheaper"],
            "scores": [{"number": 2, "results": "t/002/reporting/results.json", "selection": SUMMARY,
                        "reporting": SUMMARY, "optimism_gap": 0.0}],
            "verdicts": [VERDICT, {**VERDICT, "question": "best_vs_runner_up", "state": "better", "p_value": 0.01,
                                   "p_adjusted": 0.02, "examples_to_decide": 12}],
            "correction": "Holm", "equivalence_margin": 0.05, "alpha": 0.05,
            "dpo": {"sft_results": "sft/reporting/results.json", "sft_adapter_hash": "aa", "sft_selection": SUMMARY,
                    "sft_reporting": SUMMARY,
                    "trials": [{"number": 2, "params": {"dpo_beta": 0.1}, "results": "t/002/reporting/results.json",
                                "reporting": SUMMARY, "verdict": {**VERDICT, "question": "dpo_vs_sft", "state": "worse",
                                                                  "p_value": 0.01, "p_adjusted": 0.02},
                                "detectable": 0.08}],
                    "chosen": 2, "verdict": {**VERDICT, "question": "dpo_improves_sft", "state": "no", "p_value": 0.01},
                    "correction": "one trial, unadjusted"}}
SHARED_SFT = {"format": records.SHARED_SFT_FORMAT,
              "identity": {"config_hash": "c1", "data_hash": "d1", "eval_set_hash": "abc-selection", "seed": 0,
                           "model_hash": "0123"},
              "identity_hash": "i1", "run_dir": "sweeps/sft_dpo/sft", "adapter_hash": "aa",
              "config": {"train": {"sft": {"max_steps": 30}}}, "created_at": "t"}
CASES = [(records.RunResults, RESULTS), (records.TrialRecord, TRIAL), (records.SweepRecord, SWEEP),
         (records.BestTrial, BEST), (records.GateBaseline, BASELINE), (records.BaselineCache, CACHE),
         (records.SweepVerdicts, VERDICTS), (records.SharedSft, SHARED_SFT)]


def _same(a, b) -> bool:
    """Equality that treats NaN as equal to NaN (lm-eval reports NaN stderr)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@pytest.mark.parametrize(("cls", "data"), CASES, ids=[c.__name__ for c, _ in CASES])
def test_every_record_type_round_trips_through_a_file(cls, data, tmp_path):
    record = from_json(cls, data)
    assert _same(to_json(record), data)
    write_record(tmp_path / "r.json", record)
    again = read_record(cls, tmp_path / "r.json")
    assert _same(to_json(again), data) and type(again) is cls


def test_readers_get_typed_attributes():
    results = from_json(records.RunResults, RESULTS)
    assert results.final_stage is results.stages["dpo"]
    assert results.stages["sft"].heldout.per_example[0].reference == {"name": "A"}
    assert results.stages["dpo"].reference.adapter_hash == "aa"
    assert results.baselines.regression["mc"].per_example == [1.0, 0.0]
    assert isinstance(results.final.regression["mc"], records.RegressionSummary)
    assert results.stages["sft"].heldout.scores == [1.0, 0.0]


def _broken(path: list, value=..., delete=False) -> dict:
    data = json.loads(json.dumps(RESULTS))
    node = data
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_broken(["stages", "sft", "heldout", "score"], delete=True), "missing field 'stages.sft.heldout.score'"),
        (_broken(["stages", "sft", "heldout", "score"], "high"), "field 'stages.sft.heldout.score' must be a number"),
        (_broken(["stages", "sft", "heldout", "n"], 2.5), "field 'stages.sft.heldout.n' must be an integer"),
        (_broken(["final", "meets_min_score"], 1), "field 'final.meets_min_score' must be bool"),
        (_broken(["metrics", "seed"], True), "field 'metrics.seed' must be an integer"),
        (_broken(["stages", "sft", "heldout", "per_example", 1, "output"], None),
         "field 'stages.sft.heldout.per_example[1].output' must be str"),
        (_broken(["eval_set", "hashh"], "x"), "unknown field 'eval_set.hashh'"),
        (_broken(["format"], "harness.results/v1"), "not a RunResults record (format 'harness.results/v1'"),
        (_broken(["canary"], [1, 2]), "field 'canary' must be an object"),
    ],
)
def test_a_bad_field_is_refused_naming_the_file_and_the_dotted_field(data, message, tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(RecordError) as err:
        read_record(records.RunResults, path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_not_json_names_the_file_and_line(tmp_path):
    path = tmp_path / "results.json"
    path.write_text('{\n"format": \n', encoding="utf-8")
    with pytest.raises(RecordError, match=rf"{path}:3: not valid JSON"):
        read_record(records.RunResults, path)
    with pytest.raises(RecordError, match="file not found"):
        read_record(records.RunResults, tmp_path / "missing.json")


def test_an_atomic_write_removes_what_a_killed_writer_of_the_same_file_left(tmp_path):
    """Killed between its temporary file and the rename, a writer leaves `.name.<writer>-*.tmp`; the next write
    of that file removes it once that writer is gone, and nothing else (a live writer's, another file's, a
    user's file)."""
    import os
    import subprocess
    import sys

    from harness.artifacts import _namespace_key, write_text_atomic

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead_pid = int(dead.stdout)
    key = _namespace_key()
    left = tmp_path / f".report.html.{key}.{dead_pid}-abc.tmp"
    live = tmp_path / f".report.html.{key}.{os.getppid()}-def.tmp"  # our parent: alive
    other_file = tmp_path / f".report.md.{key}.{dead_pid}-ghi.tmp"
    foreign = tmp_path / f".report.html.0000ffff.{dead_pid}-jkl.tmp"  # another host/container's writer
    users = tmp_path / ".report.html.notes.tmp"
    for path in (left, live, other_file, foreign, users):
        path.write_text("x")
    write_text_atomic(tmp_path / "report.html", "<p>ok</p>")
    assert (tmp_path / "report.html").read_text() == "<p>ok</p>"
    assert not left.exists()
    assert live.exists() and other_file.exists() and foreign.exists() and users.exists()
