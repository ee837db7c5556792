"""harness.report: a report built from a small tiny-model sweep, its escaping, refusals and determinism.

The fixture sweep has two real trials (run_experiment on the tiny model), one pruned and one failed trial,
written per the sweep artifact contract. The tiny random model scores 0 everywhere, so the fixture then
re-grades a few outputs with the real grader (replacing them by the reference answer) and adds lm-eval-shaped
regression scores and a DPO stage, so that every part of the report has something to show.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_OVERRIDES, make_config

from harness.artifacts import REPO_ROOT
from harness.render import md_escape
from harness.report import SECTIONS, ReportError, build_report, load_sweep, main, write_report

SCRIPT = "<script>alert(1)</script>"
FAIL_REASON = "CUDA out of memory | <b>trial 3</b> `boom`"


# --- fixture: a sweep directory per the contract ------------------------------------------------------------
@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    from harness.evalset import freeze
    from harness.evaluate import load_heldout
    from harness.run import run_experiment

    root = tmp_path_factory.mktemp("report")
    sweep = root / "sweeps" / "rank"
    # The tiny overrides change generation settings, which are part of the eval set's identity: freeze a
    # private manifest for them instead of touching the committed one.
    overrides = TINY_OVERRIDES + [f"eval.manifest={root / 'manifest.json'}"]
    cfg = make_config(overrides)
    freeze(cfg.eval)
    examples = load_heldout(cfg.eval)

    trials = {}
    for number, rank in ((0, 4), (1, 8)):
        trial_dir = sweep / "trials" / f"{number:03d}"
        trial_cfg = make_config(overrides + [f"lora.r={rank}"])
        results = run_experiment(trial_cfg, trial_dir)
        trials[number] = (trial_dir, results, rank)

    # Trial 0: 6/8 right, breaks example 6 (which the base got right) with a script tag in its output;
    # within regression limits. Trial 1: SFT 4/8 then DPO 7/8, but over the general_mc limit.
    _regrade(trials[0][1], cfg, examples, "sft", right=range(6), replace={6: SCRIPT})
    _regrade_baselines(trials[0][1], cfg, examples)
    _regression(trials[0][1], cfg, "sft", {"harness_general_mc": 12, "harness_instruct_follow": 9})
    _regrade(trials[1][1], cfg, examples, "sft", right=range(4))
    _regrade_baselines(trials[1][1], cfg, examples)
    _regression(trials[1][1], cfg, "sft", {"harness_general_mc": 9, "harness_instruct_follow": 10})
    _add_dpo_stage(trials[1][1], trials[1][0], cfg, examples)

    for number, (trial_dir, results, rank) in trials.items():
        _write_json(trial_dir / "results.json", results)
        _write_json(trial_dir / "trial.json", _trial_record(number, "COMPLETE", rank, results=results))

    pruned = sweep / "trials" / "002"
    _write_json(
        pruned / "trial.json",
        _trial_record(2, "PRUNED", 16, intermediate=[{"step": 1, "score": 0.0}, {"step": 2, "score": 0.125}]),
    )
    (pruned / "loss.jsonl").write_text(
        "".join(json.dumps({"stage": "sft", "step": s, "loss": 10.9 - 0.05 * s}) + "\n" for s in (1, 2))
    )
    failed = sweep / "trials" / "003"
    _write_json(failed / "trial.json", _trial_record(3, "FAIL", 32, fail_reason=FAIL_REASON))

    results = trials[0][1]
    _write_json(
        sweep / "sweep.json",
        {
            "name": "rank",
            "question": "Which LoRA rank is enough for JSON extraction?",
            "command": "python -m harness +sweep=rank " + " ".join(overrides),
            "storage": "sqlite:///sweeps/rank/study.db",
            "sampler": "grid",
            "pruner": "median",
            "objective": "constrained",
            "n_trials": 4,
            "space": {"lora_r": [4, 8, 16, 32]},
            "eval_set": results["eval_set"],
            "model": {k: results["model"][k] for k in ("id", "hash", "quantized")},
            "price_per_gpu_hour": 2.0,
            "config": results["config"],
            "started_at": "2025-01-01T00:00:00",
            "finished_at": "2025-01-01T00:01:00",
            "wall_time_s": 60.0,
        },
    )
    _write_json(
        sweep / "best.json",
        {
            "number": 0,
            "trial_dir": str(trials[0][0]),
            "adapter": results["adapter"]["path"],
            "params": {"lora_r": 4},
            "score": results["final"]["heldout"]["score"],
        },
    )
    return sweep


def _regrade(results, cfg, examples, stage, right, replace=None):
    """Outputs of `right` examples replaced by the reference answer, then graded by the real grader."""
    from harness.evaluate import grade_outputs

    heldout = results["stages"][stage]["heldout"]
    outputs = [row["output"] for row in heldout["per_example"]]
    for index in right:
        outputs[index] = json.dumps(examples[index].reference)
    for index, text in (replace or {}).items():
        outputs[index] = text
    results["stages"][stage]["heldout"] = grade_outputs(cfg.eval, examples, outputs).to_dict()
    _refresh_final(results, cfg)


def _regrade_baselines(results, cfg, examples):
    from harness.evaluate import grade_outputs

    baselines = results["baselines"]
    for name, right in (("zero_shot", [6]), ("prompt_baseline", [0, 6])):
        outputs = [row["output"] for row in baselines[name]["per_example"]]
        for index in right:
            outputs[index] = json.dumps(examples[index].reference)
        baselines[name] = grade_outputs(cfg.eval, examples, outputs).to_dict()
    baselines["prompting_meets_min_score"] = baselines["prompt_baseline"]["score"] >= cfg.eval.min_score


def _regression(results, cfg, stage, adapter_right: dict[str, int], n: int = 20):
    """lm-eval-shaped scores (asdict(RegressionScore)): base gets 12 (mc) / 10 (follow) of 20 right."""
    base_right = {"harness_general_mc": 12, "harness_instruct_follow": 10}
    results["baselines"]["regression"] = {t: _regression_score(t, base_right[t], n) for t in base_right}
    results["stages"][stage]["regression"] = {t: _regression_score(t, k, n) for t, k in adapter_right.items()}
    _refresh_final(results, cfg)


def _regression_score(task, right, n):
    per_example = [1.0] * right + [0.0] * (n - right)
    p = right / n
    return {
        "task": task,
        "metric": "acc",
        "score": p,
        "stderr": math.sqrt(p * (1 - p) / (n - 1)),
        "n": n,
        "per_example": per_example,
        "task_version": "1",
    }


def _add_dpo_stage(results, trial_dir, cfg, examples):
    stages = results["stages"]
    stages["dpo"] = json.loads(json.dumps(stages["sft"]))
    stages["dpo"]["train"]["stage"] = "dpo"
    results["final"]["stage"] = "dpo"
    _regrade(results, cfg, examples, "dpo", right=range(7))
    results["metrics"]["tokens_per_s"]["dpo"] = 321.0
    with (trial_dir / "loss.jsonl").open("a") as handle:
        for step in (1, 2, 3):
            handle.write(
                json.dumps({"stage": "dpo", "step": step, "loss": math.log(2) - 0.05 * (step - 1)}) + "\n"
            )


def _refresh_final(results, cfg):
    """What harness.run.build_results derives from the stages, recomputed after the fixture's edits."""
    from harness.run import regression_deltas

    final = results["stages"][results["final"]["stage"]]
    heldout = final["heldout"]
    deltas = regression_deltas(results["baselines"]["regression"], final["regression"], cfg)
    results["final"].update(
        {
            "heldout": {k: heldout[k] for k in ("score", "stderr", "ci_low", "ci_high", "n")},
            "meets_min_score": heldout["score"] >= cfg.eval.min_score,
            "regression": {
                t: {k: v for k, v in r.items() if k != "per_example"} for t, r in final["regression"].items()
            },
            "regression_delta": deltas,
            "worst_regression": max((-d["delta"] for d in deltas.values()), default=0.0),
            "regression_ok": all(d["ok"] for d in deltas.values()),
        }
    )


def _trial_record(number, state, rank, results=None, intermediate=None, fail_reason=None):
    return {
        "number": number,
        "state": state,
        "params": {"lora_r": rank},
        "fail_reason": fail_reason,
        "intermediate": intermediate or [],
        "values": [results["final"]["heldout"]["score"]] if results else None,
        "feasible": results["final"]["regression_ok"] if results else None,
        "duration_s": 15.0 + number,
        "started_at": "2025-01-01T00:00:00",
        "finished_at": "2025-01-01T00:00:15",
        "retry_of": None,
        "command": f"python -m harness model=tiny quant=none lora.r={rank}",
    }


def _write_json(path: Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")


def _copy_sweep(sweep_dir: Path, dest: Path, name: str, **changes) -> Path:
    """A copy of the sweep under another name; `changes` (eval_set=..., model=...) apply to every record."""
    shutil.copytree(sweep_dir, dest)
    for path in [dest / "sweep.json", *sorted(dest.glob("trials/*/results.json"))]:
        record = json.loads(path.read_text())
        for key, value in changes.items():
            record[key] = {**record[key], **value}
        if path.name == "sweep.json":
            record["name"] = name
        _write_json(path, record)
    return dest


# --- tests ------------------------------------------------------------------------------------------------
def test_report_has_every_section(sweep_dir, tmp_path):
    out = tmp_path / "report"
    path = write_report([sweep_dir], out)
    page = path.read_text(encoding="utf-8")
    markdown = (out / "report.md").read_text(encoding="utf-8")

    for section in SECTIONS:
        assert f">{section}</h2>" in page
        assert f"\n## {section}\n" in markdown
    # Verdict: the best feasible trial (0, not the higher-scoring trial 1 that broke a regression limit),
    # against the base and the prompt baseline, and whether prompting alone was enough.
    assert "Best adapter: trial #0 (lora_r=4), held-out 0.750" in page
    assert "does NOT meet min_score 0.8" in page
    assert "Was fine-tuning needed? " in page and "Prompting alone scores 0.250 &lt; min_score 0.8" in page
    assert "1 of 2 completed trials exceeded a limit" in page
    assert "Eval set json_extract (hash " in page
    # Trials: every state, DPO after SFT, regression deltas, cost.
    assert "pruned at step 2 (score 0.125)" in page
    assert "failed: CUDA out of memory" in page
    assert "OVER LIMIT" in page and "after DPO" in page and "$0.0083" in page
    # Plots: four embedded PNGs in the HTML, the same four as files beside the Markdown.
    assert page.count('<img src="data:image/png;base64,') == 4
    images = sorted(p.name for p in (out / "images").iterdir())
    assert images == [
        "loss_curves.png",
        "objective_vs_params.png",
        "regression_deltas.png",
        "score_vs_regression.png",
    ]
    for name in images:
        assert f"](images/{name})" in markdown
        assert (out / "images" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Paired comparisons and fixed/broken examples.
    assert "trial #1 (runner-up)" in page
    assert "fixed 6, broke 1, unchanged 1" in page
    # Data card and reproduce.
    assert "passed: 0 exact and 0 13-gram overlaps" in page and "⟦" in page
    assert "python -m harness model=tiny quant=none lora.r=4" in page
    rows = (out / "trials.csv").read_text().splitlines()
    assert len(rows) == 5 and [r.split(",")[2] for r in rows[1:]] == [
        "COMPLETE",
        "COMPLETE",
        "PRUNED",
        "FAIL",
    ]


def test_untrusted_text_is_escaped(sweep_dir, tmp_path):
    out = tmp_path / "report"
    write_report([sweep_dir], out)
    page = (out / "report.html").read_text(encoding="utf-8")
    markdown = (out / "report.md").read_text(encoding="utf-8")

    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # the broken example's output, shown as text
    assert "<b>" not in page and "&lt;b&gt;trial 3&lt;/b&gt;" in page
    assert "<script" not in markdown.lower() and "<b>" not in markdown
    assert (
        "CUDA out of memory \\| &lt;b&gt;trial 3&lt;/b&gt; \\`boom\\`" in markdown
    )  # one cell, no code span
    assert md_escape("a|b`c<d>[x](y)") == "a\\|b\\`c&lt;d&gt;\\[x\\](y)"


def test_sweeps_with_different_eval_sets_or_models_are_refused(sweep_dir, tmp_path, capsys):
    other = _copy_sweep(
        sweep_dir, tmp_path / "sweeps" / "other", "other", eval_set={"hash": "0123456789abcdef"}
    )
    out = tmp_path / "reports" / "both"
    with pytest.raises(ReportError, match="different eval set .*0123456789abcdef"):
        write_report([sweep_dir, other], out)
    assert main([str(sweep_dir), str(other), "--out", str(out)]) == 2
    assert "different eval set" in capsys.readouterr().err
    assert not out.exists()

    other_model = _copy_sweep(sweep_dir, tmp_path / "sweeps" / "m", "m", model={"hash": "feedfacefeedface"})
    with pytest.raises(ReportError, match="different base model"):
        build_report([load_sweep(sweep_dir), load_sweep(other_model)])


def test_malformed_artifacts_are_refused_naming_the_file(sweep_dir, tmp_path):
    broken = _copy_sweep(sweep_dir, tmp_path / "sweeps" / "broken", "broken")
    (broken / "trials" / "001" / "trial.json").write_text('{"number": 1,\n "state": COMPLETE}\n')
    with pytest.raises(ReportError, match=r"trials/001/trial.json:2: not valid JSON"):
        write_report([broken], tmp_path / "out")
    (broken / "trials" / "001" / "trial.json").write_text(
        json.dumps({"number": 1, "state": "COMPLETE", "params": {}})
    )
    (broken / "trials" / "001" / "results.json").unlink()
    with pytest.raises(
        ReportError, match=r"trials/001/results.json: file not found \(the trial is marked COMPLETE"
    ):
        write_report([broken], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_sweeps_on_the_same_eval_set_share_one_table(sweep_dir, tmp_path):
    alpha = _copy_sweep(sweep_dir, tmp_path / "sweeps" / "alpha", "alpha")
    out = tmp_path / "both"
    page = write_report([sweep_dir, alpha], out).read_text(encoding="utf-8")
    assert "<th>sweep</th>" in page and "Sweep report: rank+alpha" in page
    assert "Best adapter: trial rank#0" in page  # ties keep the order the sweeps were given in
    rows = (out / "trials.csv").read_text().splitlines()[1:]
    assert sorted({r.split(",")[0] for r in rows}) == ["alpha", "rank"] and len(rows) == 8


def test_rebuild_is_byte_identical_and_loads_no_model(sweep_dir, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    write_report([sweep_dir], first)
    write_report([sweep_dir], second)
    write_report([sweep_dir], second)  # over an existing report
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert len(files) == 7
    for name in files:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name

    # Default output: reports/<name> beside the sweeps folder.
    default = write_report([sweep_dir])
    assert default == sweep_dir.parent.parent / "reports" / "rank" / "report.html"
    assert default.read_bytes() == (first / "report.html").read_bytes()

    # The CLI, in a fresh interpreter (in this one other tests have imported torch): same bytes, and neither
    # harness.model nor torch (so no model) is ever imported.
    third = tmp_path / "third"
    code = (
        "import sys; from harness.report import main; rc = main(sys.argv[1:]); "
        "assert 'harness.model' not in sys.modules, 'harness.model imported'; "
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(sweep_dir), "--out", str(third)], check=True, cwd=REPO_ROOT
    )
    assert (third / "report.html").read_bytes() == (first / "report.html").read_bytes()


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed with apt-get when missing (as tests/postgres/ installs PostgreSQL).

    Skips only where installing is impossible (not root, or no apt-get); a failed install fails the test.
    """
    import report_screenshot

    if path := report_screenshot.find_chromium():
        return path
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium is not installed and cannot be: installing it needs root and apt-get "
                    "(apt-get install -y chromium)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
        if result.returncode != 0:
            pytest.fail(f"{' '.join(command)} failed ({result.returncode}):\n{(result.stdout + result.stderr)[-3000:]}")
    path = report_screenshot.find_chromium()
    assert path, "apt-get installed chromium, but no chromium executable is on PATH"
    return path


def test_report_renders_in_headless_chromium(sweep_dir, tmp_path, chromium):
    import report_screenshot

    path = write_report([sweep_dir], tmp_path / "report")
    checks = report_screenshot.check_report(path, tmp_path / "screenshot.png")
    assert checks["verdict_on_page"] and checks["images_on_page"] == 4 and checks["screenshot_not_blank"]
