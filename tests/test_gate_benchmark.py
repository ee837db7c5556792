"""tests/benchmarks/gate_false_alarm.py runs end to end and prints its three figures (--quick: the tiny model).

The figures themselves are measured on the default setup by the lead (tests/benchmarks/NOTES.md); on the tiny
model every json_extract score is 0, so here only the script's machinery is checked: a trained run, its baseline,
fresh-process cold-cache A/A re-evaluations, the resampled null, and the damaged adapter's gate.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

from harness.artifacts import REPO_ROOT


def test_quick_false_alarm_benchmark_prints_the_three_figures(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, str(REPO_ROOT / "tests" / "benchmarks" / "gate_false_alarm.py"), "--quick",
                           "--out", str(tmp_path / "work")], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    aa = next(line for line in lines if line.startswith("(a) A/A: "))
    assert re.match(r"\(a\) A/A: 0 of 2 fresh re-evaluations failed the gate \(exit codes \[0, 0\]", aa), aa
    null = next(line for line in lines if line.startswith("(b) "))
    rate = float(re.search(r"under no change: ([0-9.]+)", null).group(1))
    assert 0.0 <= rate <= 0.05, null
    power = next(line for line in lines if line.startswith("(c) "))
    assert re.search(r"real gate exit [0-2]; [0-9.]+ of 200 resampled replicates failed", power), power
