"""docs/ci-gate-example.yml cannot rot: its own `run:` steps, read from the YAML and run in order in a fresh clone
of this repository's committed HEAD, on the tiny model. A good candidate exits 0, a damaged one 1, a mismatched
eval set 2.

What a GitHub runner provides is provided here: the workflow's `env:`, $GITHUB_OUTPUT and $GITHUB_STEP_SUMMARY
files, `${{ steps.<id>.outputs.<name> }}` and `${{ env.<name> }}` in a step's `env:`, `if: always()`, and bash -e.
`uses:` steps (checkout, setup-python, cache, upload, the PR comment) are GitHub's own actions and are skipped;
so is the install step (`make setup`: the clone uses this test's virtual environment instead, offline).
The only edits are the values of the two knobs the workflow documents: HARNESS_OVERRIDES (train on the tiny
model) and GATE_OPTIONS; reports/baseline.json is the tiny golden baseline, as a user would commit theirs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_gate import gate_setup  # noqa: F401  (the module-scoped fixture: a trained tiny run + golden baseline)

from harness.artifacts import REPO_ROOT

WORKFLOW = REPO_ROOT / "docs" / "ci-gate-example.yml"
INSTALL_COMMAND = "make setup"
_EXPRESSION = re.compile(r"\$\{\{\s*(steps\.([\w-]+)\.outputs\.([\w-]+)|env\.(\w+))\s*\}\}")


def run_workflow(clone: Path, env_values: dict[str, str]) -> tuple[int, list[tuple[str, int]], str]:
    """Run the gate job's `run:` steps in `clone`: (the job's exit code, (step name, exit code) per step run, the
    job summary)."""
    workflow = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    (job,) = workflow["jobs"].values()
    env = {**os.environ, **{k: str(v) for k, v in workflow.get("env", {}).items()},
           **{k: str(v) for k, v in job.get("env", {}).items()}, **env_values, "PYTHONPATH": str(clone)}
    outputs_dir = clone.parent / f"{clone.name}-runner"
    outputs_dir.mkdir()
    env["GITHUB_STEP_SUMMARY"] = str(outputs_dir / "step_summary.md")
    outputs: dict[str, dict[str, str]] = {}
    ran, failed = [], 0
    for index, step in enumerate(job["steps"]):
        if "run" not in step or step["run"].strip() == INSTALL_COMMAND:
            continue
        condition = str(step.get("if", ""))
        if condition and condition != "always()":
            raise AssertionError(f"step {step.get('name')}: condition {condition!r} is not supported by this test")
        if failed and condition != "always()":
            continue
        output_file = outputs_dir / f"output-{index}"
        output_file.touch()

        def resolve(match: re.Match) -> str:
            if match.group(4):
                return env.get(match.group(4), "")
            return outputs.get(match.group(2), {}).get(match.group(3), "")

        step_env = {**env, **{k: _EXPRESSION.sub(resolve, str(v)) for k, v in step.get("env", {}).items()},
                    "GITHUB_OUTPUT": str(output_file)}
        assert "${{" not in step["run"], f"step {step.get('name')}: expressions in run: are not supported here"
        script = outputs_dir / f"step-{index}.sh"
        script.write_text(step["run"], encoding="utf-8")
        done = subprocess.run(["bash", "--noprofile", "--norc", "-e", str(script)], cwd=clone, env=step_env,
                              capture_output=True, text=True, timeout=600, check=False)
        ran.append((step.get("name", f"step {index}"), done.returncode))
        if "id" in step:
            outputs[step["id"]] = dict(line.split("=", 1) for line in output_file.read_text().splitlines() if "=" in line)
        if done.returncode != 0:
            failed = failed or done.returncode
    summary_file = Path(env["GITHUB_STEP_SUMMARY"])
    return failed, ran, summary_file.read_text(encoding="utf-8") if summary_file.exists() else ""


def _clone(tmp_path: Path, name: str, baseline: Path) -> Path:
    clone = tmp_path / name
    subprocess.run(["git", "clone", "--quiet", str(REPO_ROOT), str(clone)], check=True, timeout=120)
    (clone / ".venv").symlink_to(Path(sys.executable).parent.parent)  # this test's environment, not `make setup`
    shutil.copy(baseline, clone / "reports" / "baseline.json")
    return clone


@pytest.mark.parametrize(("case", "expected"), [("good", 0), ("damaged", 1), ("mismatched eval set", 2)])
def test_example_workflow_steps_give_the_documented_exit_codes(gate_setup, tmp_path, case, expected):  # noqa: F811
    if subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "docs", "harness", "conf"],
                      capture_output=True, text=True, check=False).stdout.strip():
        pytest.skip("uncommitted changes under docs/, harness/ or conf/: the clone would not test them")
    train = list(gate_setup.run_overrides)  # the golden baseline's adapter was trained with these: same seed, same adapter
    gate_options = ""
    if case == "damaged":
        train.append("train.sft.learning_rate=0.5")  # a wrecked adapter: its outputs no longer match the golden set
    elif case == "mismatched eval set":
        gate_options = "eval.max_examples=4"  # a subset of the baseline's eval set: nothing to compare
    clone = _clone(tmp_path, "repo", gate_setup.golden_baseline)
    code, ran, summary = run_workflow(clone, {"HARNESS_OVERRIDES": " ".join(train), "GATE_OPTIONS": gate_options})
    names = [name for name, _ in ran]
    assert names[:2] == ["Train the candidate adapter", "Gate against reports/baseline.json"], ran
    assert code == expected, (ran, (clone / "gate-stdout.txt").read_text())
    first_line = (clone / "gate-stdout.txt").read_text().splitlines()[0]
    assert first_line.startswith({0: "PASS", 1: "FAIL", 2: "CANNOT COMPARE"}[expected])
    assert summary.startswith("## ")  # the job summary step posted the gate's summary.md
    assert (clone / "reports" / "gate" / "junit.xml").is_file()
