"""harness.export on the tiny model: the merged model behaves as the evaluated adapter, vLLM's constraints are
refused with their fixes, and an adapter changed after evaluation is caught.

One NF4 run and one unquantized run (2 SFT steps, 8 held-out examples, 16-token generations) are shared by the
module; each test exports a copy of a run directory, tampered where the test says so.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY_OVERRIDES, make_config
from safetensors.torch import load_file, save_file

from harness import export, serving
from harness.artifacts import REPO_ROOT
from harness.data import chat
from harness.evalset import freeze
from harness.recordio import read_record, write_record
from harness.records import RunResults
from harness.serving import AdapterConfig, ExportHistory, ServingRecord

# The adapter must change greedy outputs (lr 5e-2), or "regenerates the recorded outputs" would prove nothing.
EXPORT_TINY = [o for o in TINY_OVERRIDES if o != "quant=none"] + [
    "data.max_sft_examples=8", "eval.prompt_baseline.enabled=false", "eval.generation.max_new_tokens=16",
    "train.sft.learning_rate=5e-2",
]
LLAMA_LINEARS = {f"model.layers.0.{name}" for name in
                 ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                  "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")} | {"lm_head"}
GOOD_CONFIG = AdapterConfig(r=16, lora_alpha=32.0, target_modules=["q_proj", "v_proj"])


def _run(root: Path, quant: str):
    from harness.run import run_experiment

    overrides = EXPORT_TINY + [f"quant={quant}", f"eval.manifest={root}/manifest-{quant}.json"]
    cfg = make_config(overrides)
    freeze(cfg.eval)  # these generation settings are a different eval identity than the committed manifest
    results = run_experiment(cfg, root / f"run-{quant}", progress=False)
    assert results.canary.outputs_changed > 0, "the fixture adapter must change greedy outputs"
    return root / f"run-{quant}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("export")
    return SimpleNamespace(root=root, nf4=_run(root, "nf4"), plain=_run(root, "none"))


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("export"))
    return copy


def _edit_adapter_config(run_dir: Path, **changes) -> None:
    path = run_dir / "adapter" / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def _record_adapter_hash(run_dir: Path) -> None:
    """Rewrite results.json's adapter hash: as if the run had trained and evaluated the adapter as it is now."""
    from harness.model import adapter_hash

    results = read_record(RunResults, run_dir / "results.json")
    results.adapter.hash = adapter_hash(run_dir / "adapter")
    write_record(run_dir / "results.json", results)


def _adapter_logits_and_outputs(run_dir: Path, quant: str, prompts):
    """base + adapter as harness.evaluate runs it (NF4 layers read back through fast_cpu_inference)."""
    from harness.config import ModelConfig, QuantConfig
    from harness.evaluate import generate
    from harness.model import fast_cpu_inference, load_adapter, load_base_model

    base = load_base_model(ModelConfig(kind="tiny"), QuantConfig(method=quant), "cpu")
    model = load_adapter(base.model, run_dir / "adapter")
    batch = _batch(base.tokenizer, prompts)
    with torch.no_grad(), fast_cpu_inference(model):
        logits = model(**batch).logits
    return logits, generate(model, base.tokenizer, prompts, 16, 16), batch


def _batch(tokenizer, prompts):
    texts = [tokenizer.apply_chat_template(chat(p), tokenize=False, add_generation_prompt=True) for p in prompts]
    tokenizer.padding_side = "left"
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


# ---------------------------------------------------------------------------------------------------------
# Round trip


@pytest.mark.parametrize("quant", ["nf4", "none"])
def test_merged_model_loads_plainly_and_matches_the_adapter(runs, tmp_path, quant):
    from transformers import AutoModelForCausalLM

    from harness.evaluate import generate, load_heldout

    run_dir = _copy(runs.nf4 if quant == "nf4" else runs.plain, tmp_path)
    results_before = (run_dir / "results.json").read_bytes()
    assert export.main([str(run_dir)]) == 0
    out = run_dir / "export"

    # The merged directory is self-contained: a plain from_pretrained, tokenizer beside it.
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out / "merged")
    assert all(not n.endswith(("lora_A.weight", "lora_B.weight")) for n, _ in merged.named_parameters())
    assert next(merged.parameters()).dtype == torch.float32
    prompts = [e.messages for e in load_heldout(make_config(EXPORT_TINY).eval)[:4]]
    expected_logits, expected_outputs, batch = _adapter_logits_and_outputs(run_dir, quant, prompts)
    with torch.no_grad():
        logits = merged(**_batch(tokenizer, prompts)).logits
    mask = batch["attention_mask"].bool()
    assert float((logits - expected_logits).abs()[mask].max()) < 1e-3
    assert generate(merged, tokenizer, prompts, 16, 16) == expected_outputs

    served = read_record(ServingRecord, out / "serving.json")
    assert served.adapter.r == 16 and served.adapter.scaling_rule == "alpha/r"
    assert served.adapter.scaling == 2.0
    assert served.base_model.quantized is (quant == "nf4")
    assert served.merged.merge_into == ("dequantized_nf4" if quant == "nf4" else "unquantized")
    assert (f"--enable-lora --lora-modules {run_dir.name}={out.resolve() / 'adapter'} --max-lora-rank 16"
            in served.vllm.command)
    checks = {c.name: c for c in served.proof.checks}
    assert all(c.ok for c in checks.values()), checks
    assert checks["adapter_hash_matches_run"].gating
    assert checks["merged_logits"].measured < checks["merged_logits"].tolerance == 1e-3
    assert (out / "adapter" / "adapter_model.safetensors").read_bytes() == (
        run_dir / "adapter" / "adapter_model.safetensors").read_bytes()
    assert "## Proof: serves as evaluated" in (out / "serving_card.md").read_text()
    history = read_record(ExportHistory, out / "export.json")
    assert history.export.exit_code == 0 and history.previous == [] and history.export.serving == served
    assert (run_dir / "results.json").read_bytes() == results_before  # the run's record is never rewritten


def test_merge_into_original_weights_is_recorded_and_not_required_to_match(runs, tmp_path):
    run_dir = _copy(runs.nf4, tmp_path)
    assert export.main([str(run_dir), "--merge-into", "original", "--out", str(tmp_path / "orig")]) == 0
    served = read_record(ServingRecord, tmp_path / "orig" / "serving.json")
    checks = {c.name: c for c in served.proof.checks}
    assert served.merged.merge_into == "original" and "NF4 quantization error" in served.merged.what_it_changes
    assert checks["merged_delta"].ok and checks["merged_delta"].gating  # W_orig + scaling * B @ A exactly
    # The NF4 error shows up as a measured, reported difference from the evaluated model.
    assert checks["merged_logits"].gating is False and checks["merged_logits"].measured > 1e-3


def test_rerun_replaces_its_own_export_and_keeps_the_history(runs, tmp_path):
    run_dir = _copy(runs.plain, tmp_path)
    out = tmp_path / "shipped"
    assert export.main([str(run_dir), "--out", str(out), "--name", "json-extract"]) == 0
    assert export.main([str(run_dir), "--out", str(out), "--name", "json-extract"]) == 0
    history = read_record(ExportHistory, out / "export.json")
    assert len(history.previous) == 1
    assert "--lora-modules json-extract=" in history.export.serving.vllm.command

    # Strings from data and config reach the card escaped: no HTML, links or broken code spans from a model id.
    served = history.export.serving
    served.base_model.id = "<img src=x onerror=alert(1)> [a](http://x) `x` *y*"
    served.adapter.target_modules = ["q_proj`<b>", "v_proj"]
    served.verdict += " <script>x</script> **z**"
    card = serving.serving_card(served, "runs/`a`|<b>", "now", 1.0)
    assert "id ``<img src=x onerror=alert(1)> [a](http://x) `x` *y*``" in card and "``q_proj`<b>``" in card
    html = pytest.importorskip("markdown_it").MarkdownIt().render(card)  # CommonMark, raw HTML allowed
    assert not any(tag in html for tag in ("<img", "<b>", "<script", "<a ", "<em>y")), html
    assert "&lt;img src=x onerror=alert(1)&gt; [a](http://x) `x` *y*</code>" in html


# ---------------------------------------------------------------------------------------------------------
# vLLM's constraints


@pytest.mark.parametrize(("change", "name", "message", "fix"), [
    ({"r": 600}, "vllm_rank", "rank 600 is not servable by vLLM", "retrain with r <= 512"),
    ({"use_dora": True}, "vllm_dora", "vLLM does not support DoRA", "use_dora=false"),
    ({"bias": "all"}, "vllm_bias", "vLLM refuses adapter bias", "bias='none'"),
    ({"modules_to_save": ["lm_head"]}, "vllm_modules_to_save", "modules_to_save being None", "without modules_to_save"),
    ({"target_modules": ["q_proj", "qkv"]}, "vllm_target_modules", "['qkv'] match no Linear layer", "q_proj"),
])
def test_each_vllm_constraint_is_refused_with_its_fix(change, name, message, fix):
    checks = {c.name: c for c in serving.vllm_checks(dataclasses.replace(GOOD_CONFIG, **change), LLAMA_LINEARS)}
    assert not checks[name].ok and message in checks[name].message and fix in checks[name].fix
    assert all(c.ok for n, c in checks.items() if n != name)


def test_a_good_adapter_passes_every_vllm_check():
    assert all(c.ok for c in serving.vllm_checks(GOOD_CONFIG, LLAMA_LINEARS))


def test_max_lora_rank_is_the_smallest_allowed_value_holding_the_rank():
    # --max-lora-rank must be one of vLLM's values; an adapter loads when r <= it (smaller ones are zero-padded).
    assert [serving.vllm_max_lora_rank(r) for r in (1, 4, 8, 16, 24, 33, 320, 512, 513)] == [
        1, 8, 8, 16, 32, 64, 320, 512, None]
    rank_24 = serving.vllm_checks(dataclasses.replace(GOOD_CONFIG, r=24), LLAMA_LINEARS)[0]
    assert rank_24.ok and "--max-lora-rank 32" in rank_24.message and "r=16 or 32" in rank_24.message
    assert serving.vllm_max_lora_rank(dataclasses.replace(GOOD_CONFIG, rank_pattern={"q_proj": 64}).rank) == 64


def test_unservable_adapter_still_ships_the_merged_model_with_exit_3(runs, tmp_path, capsys):
    run_dir = _copy(runs.nf4, tmp_path)
    _edit_adapter_config(run_dir, bias="all")  # loads and merges the same; vLLM refuses it
    _record_adapter_hash(run_dir)  # as if trained so: the proof passes, only vLLM's constraints fail
    assert export.main([str(run_dir)]) == 3
    printed = capsys.readouterr().out
    assert "vLLM would refuse the adapter: bias='all'" in printed and "fix: retrain with bias='none'" in printed
    assert (run_dir / "export" / "merged" / "model.safetensors").is_file()
    served = read_record(ServingRecord, run_dir / "export" / "serving.json")
    assert served.vllm.servable is False and served.proof.ok is True


# ---------------------------------------------------------------------------------------------------------
# Adapters that no longer behave as evaluated


@pytest.mark.parametrize(("tamper", "scale"), [({"use_rslora": True}, 8), ({"lora_alpha": 64.0}, 4)])
def test_mis_scaled_adapter_config_is_caught(runs, tmp_path, capsys, tamper, scale):
    run_dir = _copy(runs.nf4, tmp_path)
    _edit_adapter_config(run_dir, **tamper)
    assert export.main([str(run_dir)]) == 1
    printed = capsys.readouterr().out
    assert printed.startswith(f"NOT SHIPPED: scaling_matches_run: adapter_config.json scales the update by {scale}")
    assert "trained and evaluated it at 2 (alpha/r = 32/16)" in printed
    # Caught from the config alone: on a random tiny model a rescaled update need not change a greedy output.
    out = run_dir / "export"
    assert not (out / "merged").exists() and not (out / "adapter").exists()
    assert read_record(ExportHistory, out / "export.json").export.exit_code == 1


def test_replaced_adapter_weights_are_caught_by_hash_and_by_the_recorded_outputs(runs, tmp_path, capsys):
    run_dir = _copy(runs.nf4, tmp_path)
    path = run_dir / "adapter" / "adapter_model.safetensors"
    tensors = load_file(path)
    save_file({k: torch.zeros_like(v) if "lora_B" in k else v for k, v in tensors.items()}, path,
              metadata={"format": "pt"})
    assert export.main([str(run_dir)]) == 1
    printed = capsys.readouterr().out
    assert printed.startswith("NOT SHIPPED: adapter_hash_matches_run: adapter hash ")
    # The behaviour check catches it on its own too (the hash alone would not say what changed).
    assert "FAIL adapter_as_evaluated: base + adapter does not regenerate the run's recorded outputs" in printed
    assert "ok   scaling_matches_run" in printed and "ok   merged_delta" in printed


# ---------------------------------------------------------------------------------------------------------
# Bad input


def test_bad_input_is_one_line_naming_the_path_and_writes_nothing(runs, tmp_path, capsys):
    assert export.main([str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'missing'}: not a directory (expected a run or sweep " \
                                      "trial directory)\n"
    run_dir = _copy(runs.plain, tmp_path)
    foreign = tmp_path / "user-dir"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert export.main([str(run_dir), "--out", str(foreign)]) == 2
    assert "was not created by harness.export" in capsys.readouterr().err
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    assert export.main([str(run_dir), "pork=1"]) == 2
    assert "override 'pork=1': Key 'pork' not in 'RunConfig'" in capsys.readouterr().err
    _edit_adapter_config(run_dir, r="16")
    assert export.main([str(run_dir)]) == 2
    assert capsys.readouterr().err == (f"error: {run_dir / 'adapter' / 'adapter_config.json'}: field 'r' must be an "
                                       "integer, got '16'\n")
    (run_dir / "adapter" / "adapter_model.safetensors").unlink()
    assert export.main([str(run_dir)]) == 2
    assert "adapter_model.safetensors not found" in capsys.readouterr().err
    results = json.loads((run_dir / "results.json").read_text())
    (run_dir / "results.json").write_text(json.dumps({**results, "canary": {"n": 1}}))
    assert export.main([str(run_dir)]) == 2
    assert capsys.readouterr().err == f"error: {run_dir / 'results.json'}: missing field 'canary.max_logit_diff'\n"
    assert not (run_dir / "export").exists()


def test_cli_bad_input_exits_2_without_a_traceback(tmp_path):
    (tmp_path / "run").mkdir()
    result = subprocess.run([sys.executable, "-m", "harness.export", str(tmp_path / "run")], check=False,
                            cwd=REPO_ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True,
                            text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"error: {tmp_path / 'run' / 'results.json'}: file not found"


# ---------------------------------------------------------------------------------------------------------
# Sweeps and the report


def test_sweep_refuses_ranks_vllm_cannot_serve_before_any_trial(tmp_path, monkeypatch):
    from harness import sweep

    overrides = [*TINY_OVERRIDES, "+sweep=rank", f"sweep.sweeps_dir={tmp_path}", "sweep.tracking=none"]
    with pytest.raises(ValueError, match=r"sweep\.space\.lora_r=\[8, 1024\]: rank\(s\) \[1024\] cannot be served "
                                         r"by vLLM .* use 512 or lower"):
        sweep.run_sweep(make_config([*overrides, "sweep.space.lora_r=[8,1024]"]))
    assert not (tmp_path / "rank").exists()

    def inputs_reached(cfg):
        raise RuntimeError("past the rank check")

    monkeypatch.setattr("harness.run.prepare_inputs", inputs_reached)
    with pytest.raises(RuntimeError, match="past the rank check"):
        sweep.run_sweep(make_config([*overrides, "sweep.space.lora_r=[8,1024]", "sweep.servable_ranks_only=false"]))


@pytest.mark.parametrize("sweep_file", sorted((REPO_ROOT / "conf" / "sweep").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_sweeps_train_servable_ranks(sweep_file):
    cfg = make_config([f"+sweep={sweep_file.stem}"])
    ranks = cfg.sweep.space.lora_r or [cfg.lora.r]
    assert serving.unservable_ranks(ranks) == []
    assert all(serving.vllm_max_lora_rank(r) is not None for r in ranks)


def test_export_command_names_the_run():
    assert serving.export_command(Path("sweeps/rank/trials/002")) == "python -m harness.export sweeps/rank/trials/002"
    assert serving.default_lora_name(Path("sweeps/rank/trials/002")) == "rank-002"
