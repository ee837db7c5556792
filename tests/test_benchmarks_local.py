"""Standard lm-eval benchmarks on local data, offline: the harness gives lm-eval's own CLI numbers.

Each parity test saves one tiny random llama (real SmolLM2 tokenizer, safetensors) to a folder, scores it through
harness.regression.run_benchmark and through `python -m lm_eval run --model hf --model_args pretrained=<folder>`
in a subprocess, and compares every metric and every per-doc value. Fixtures are ours, in standard schemas:
tests/benchmarks_local/arc_easy_*.jsonl (arc_easy: id, question, choices{text,label}, answerKey) and the
spot_check task folder, a generation task whose scorer draws from Python's global RNG.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.benchmarks import LM_EVAL_TASKS_DIR, check_benchmark
from harness.config import RegressionBenchmark
from harness.regression import run_benchmark

FIXTURES = Path(__file__).resolve().parent / "benchmarks_local"
LIMIT = 4


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(folder)  # safetensors
    tokenizer.save_pretrained(folder)
    assert list(folder.glob("*.safetensors"))
    return folder


@pytest.fixture(scope="module")
def model_and_tokenizer(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(model_dir))


def lm_eval_cli(model_dir: Path, task: str, out: Path, args: list[str], cwd: Path | None = None) -> dict:
    """lm-eval's own entry point in a fresh process; its results JSON and its per-doc samples."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_DATASETS_CACHE": str(out / "datasets-cache")}
    command = [sys.executable, "-m", "lm_eval", "run", "--model", "hf",
               "--model_args", f"pretrained={model_dir},dtype=float32", "--device", "cpu", "--tasks", task,
               "--limit", str(LIMIT), "--output_path", str(out / "lm_eval"), "--log_samples", *args]
    done = subprocess.run(command, check=False, cwd=cwd or out, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (results_file,) = (out / "lm_eval").rglob("results_*.json")
    (samples_file,) = (out / "lm_eval").rglob(f"samples_{task}_*.jsonl")
    results = json.loads(results_file.read_text())
    samples = sorted((json.loads(line) for line in samples_file.read_text().splitlines()), key=lambda s: s["doc_id"])
    return {"results": results["results"][task], "samples": samples}


def cli_metrics(cli: dict) -> dict[str, float]:
    return {k: v for k, v in cli["results"].items() if "," in k and "_stderr," not in k and isinstance(v, float)}


# ---------------------------------------------------------------------------------------------------------
# Parity with lm-eval's CLI


def test_standard_multiple_choice_task_on_local_data_matches_lm_eval_cli(model_and_tokenizer, model_dir, tmp_path):
    model, tokenizer = model_and_tokenizer
    benchmark = RegressionBenchmark(
        task="arc_easy", limit=LIMIT, num_fewshot=2, batch_size=2, apply_chat_template=True,
        data_files={"train": str(FIXTURES / "arc_easy_train.jsonl"), "test": str(FIXTURES / "arc_easy_test.jsonl")},
    )
    score = run_benchmark(model, tokenizer, benchmark)["arc_easy"]

    # What an lm-eval user writes for the same thing: the standard task, its dataset replaced by the local files.
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "arc_easy_local.yaml").write_text(
        f"include: {LM_EVAL_TASKS_DIR / 'arc' / 'arc_easy.yaml'}\n"
        "task: arc_easy\ndataset_path: json\ndataset_name: null\nvalidation_split: null\n"
        f"dataset_kwargs:\n  data_files:\n    train: {FIXTURES / 'arc_easy_train.jsonl'}\n"
        f"    test: {FIXTURES / 'arc_easy_test.jsonl'}\n")
    cli = lm_eval_cli(model_dir, "arc_easy", tmp_path, ["--include_path", str(tasks), "--num_fewshot", "2",
                                                         "--batch_size", "2", "--seed", "0", "--apply_chat_template"])

    assert score.metrics == cli_metrics(cli) and set(score.metrics) == {"acc,none", "acc_norm,none"}
    assert (score.metric, score.score, score.n) == ("acc", cli["results"]["acc,none"], LIMIT)
    assert score.per_example == [s["acc"] for s in cli["samples"]]
    assert (score.num_fewshot, score.batch_size, score.apply_chat_template, score.max_gen_toks) == (2, 2, True, None)
    assert score.task_identity["data_test_sha256"] != score.task_identity["data_train_sha256"]


def test_generation_task_with_a_random_scorer_matches_lm_eval_cli(model_and_tokenizer, model_dir, tmp_path):
    model, tokenizer = model_and_tokenizer
    tasks = tmp_path / "anywhere" / "my_tasks"  # a task folder outside the checkout's evals/regression/
    shutil.copytree(FIXTURES / "spot_check", tasks / "spot_check")
    benchmark = RegressionBenchmark(task="harness_spot_check", include_path=str(tasks), limit=LIMIT, batch_size=2,
                                    apply_chat_template=False, max_gen_toks=12, metric="min_words")
    scores = run_benchmark(model, tokenizer, benchmark, seed=3)
    score = scores["harness_spot_check"]

    # lm-eval reads the YAML's relative data_files against its working directory: run it from the task folder.
    cli = lm_eval_cli(model_dir, "harness_spot_check", tmp_path,
                      ["--include_path", str(tasks), "--batch_size", "2", "--seed", "3",
                       "--gen_kwargs", "max_gen_toks=12"], cwd=tasks / "spot_check")

    assert set(score.metrics) == {"spot_check,none", "min_words,none", "rng_probe,none"}
    assert score.metrics == cli_metrics(cli), "the scorer saw other random draws than in lm-eval's CLI"
    assert (score.metric, score.score) == ("min_words", cli["results"]["min_words,none"])
    assert score.per_example == [s["min_words"] for s in cli["samples"]]
    assert score.max_gen_toks == 12 and score.seed == 3 and not score.apply_chat_template

    # The comparison can fail: the same model at another seed draws other checks.
    other = run_benchmark(model, tokenizer, benchmark, seed=4)["harness_spot_check"]
    assert other.metrics["rng_probe,none"] != score.metrics["rng_probe,none"]
    # And the same seed in the same process (the task's code already imported) gives the same numbers again.
    again = run_benchmark(model, tokenizer, benchmark, seed=3)["harness_spot_check"]
    assert again.metrics == score.metrics


# ---------------------------------------------------------------------------------------------------------
# Checks before any model call


def test_missing_task_module_is_found_before_any_generation(capsys):
    benchmark = RegressionBenchmark(task="harness_needs_missing", include_path=str(FIXTURES / "needs_missing"))
    with pytest.raises(ValueError, match=r"eval.regression\[1\]: task 'harness_needs_missing' needs Python modules "
                                         r"that are not installed: harness_no_such_module .*scorer_helpers.py"):
        run_benchmark(None, None, benchmark, key="eval.regression[1]")  # no model: nothing may be generated
    assert "Downloaded" not in capsys.readouterr().out, "the task's code ran"


def test_missing_nltk_data_is_found_before_any_generation(tmp_path, capsys):
    task = tmp_path / "needs_nltk"
    shutil.copytree(FIXTURES / "needs_missing", task)
    shutil.copytree(FIXTURES / "spot_check", tmp_path / "spot_check")  # its data file
    (task / "scorer_helpers.py").write_text("def check(response):\n    return 1.0\n")
    with pytest.raises(ValueError, match=r"NLTK data that is not on this machine: tokenizers/harness_missing_resource"
                                         r".*python -m nltk.downloader harness_missing_resource"):
        run_benchmark(None, None, RegressionBenchmark(task="harness_needs_missing", include_path=str(task)))
    assert "Downloaded" not in capsys.readouterr().out


def test_ifeval_on_local_data_names_what_to_install(tmp_path):
    import importlib.util

    data = tmp_path / "ifeval.jsonl"
    data.write_text(json.dumps({"key": 1, "prompt": "Write a haiku.", "instruction_id_list": ["punctuation:no_comma"],
                                "kwargs": [{}]}) + "\n")
    benchmark = RegressionBenchmark(task="ifeval", data_files={"train": str(data)})
    if importlib.util.find_spec("langdetect") is None:
        with pytest.raises(ValueError, match=r"langdetect.*pip install 'lm_eval\[ifeval\]'"):
            check_benchmark(benchmark)
    else:  # requirements installed: what is left is NLTK's punkt_tab, unless that is here too
        try:
            check_benchmark(benchmark)
        except ValueError as err:
            assert "punkt" in str(err)


def test_benchmark_errors_name_the_dotted_key(tmp_path):
    from harness.validate import compose_run_config

    with pytest.raises(ValueError, match=r"eval.regression\[1\].limit=0 must be >= 1"):
        compose_run_config(["eval.regression=[{task: arc_easy}, {task: arc_easy, limit: 0}]"])
    with pytest.raises(ValueError, match=r"eval.regression\[0\].num_fewshot=-1 must be >= 0"):
        compose_run_config(["eval.regression=[{task: arc_easy, num_fewshot: -1}]"])
    with pytest.raises(ValueError, match=r"'eval.regression'.*Key 'max_gen_tokens' not in 'RegressionBenchmark'"):
        compose_run_config(["eval.regression=[{task: arc_easy, max_gen_tokens: 8}]"])
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(ValueError, match=rf"eval.regression\[0\].data_files.test={missing}: file not found"):
        check_benchmark(RegressionBenchmark(task="arc_easy", data_files={"test": str(missing)}), "eval.regression[0]")
    with pytest.raises(ValueError, match=r"scores its 'test' or 'validation' split"):
        check_benchmark(RegressionBenchmark(task="arc_easy", data_files={"dev": str(FIXTURES / "arc_easy_test.jsonl")}))
    with pytest.raises(ValueError, match=r"benchmark.num_fewshot: task 'arc_easy' takes 2 few-shot examples"):
        check_benchmark(RegressionBenchmark(task="arc_easy", num_fewshot=2,
                                            data_files={"test": str(FIXTURES / "arc_easy_test.jsonl")}))
    with pytest.raises(ValueError, match=r"benchmark.metric='f1': task 'arc_easy' reports acc, acc_norm"):
        check_benchmark(RegressionBenchmark(task="arc_easy", metric="f1",
                                            data_files={"test": str(FIXTURES / "arc_easy_test.jsonl")}))
    with pytest.raises(ValueError, match=r"benchmark.task='no_such_task_xyz': unknown lm-eval task"):
        check_benchmark(RegressionBenchmark(task="no_such_task_xyz"))


def test_validate_refuses_a_bad_benchmark_with_exit_2(capsys):
    from harness import validate

    code = validate.main(["model=tiny", "eval.regression=[{task: arc_easy, data_files: {test: /no/such.jsonl}}]"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "error: eval.regression[0].data_files.test=/no/such.jsonl: file not found" in err


def test_a_filtered_metric_is_chosen_by_name_and_filter():
    from harness.regression import _regression_score

    # The shape lm-eval 0.4.13 returns for a gsm8k-style task: every doc logged once per filter.
    samples = [{"doc_id": d, "filter": f, "exact_match": v, "metrics": ["exact_match"]}
               for f, values in (("strict-match", [0.0, 1.0]), ("flexible-extract", [1.0, 1.0]))
               for d, v in enumerate(values)]
    results = {"samples": {"gsm8k": samples}, "versions": {"gsm8k": 3.0},
               "configs": {"gsm8k": {"output_type": "generate_until", "num_fewshot": 5,
                                     "generation_kwargs": {"max_gen_toks": 256},
                                     "metric_list": [{"metric": "exact_match"}]}},
               "results": {"gsm8k": {"alias": "gsm8k", "exact_match,strict-match": 0.5,
                                     "exact_match_stderr,strict-match": 0.5, "exact_match,flexible-extract": 1.0,
                                     "exact_match_stderr,flexible-extract": 0.0}}}
    primary = _regression_score(results, "gsm8k", None, "benchmark", 256)
    assert (primary.filter, primary.score, primary.per_example) == ("strict-match", 0.5, [0.0, 1.0])
    chosen = _regression_score(results, "gsm8k", "exact_match,flexible-extract", "benchmark", 256)
    assert (chosen.filter, chosen.score, chosen.per_example) == ("flexible-extract", 1.0, [1.0, 1.0])
    assert chosen.metrics == {"exact_match,strict-match": 0.5, "exact_match,flexible-extract": 1.0}
    assert (chosen.num_fewshot, chosen.max_gen_toks) == (5, 256)
    with pytest.raises(ValueError, match=r"benchmark.metric='exact_match,nope': task 'gsm8k' reported"):
        _regression_score(results, "gsm8k", "exact_match,nope", "benchmark", 256)
