"""Two sweep workers sharing one study in a real PostgreSQL server on loopback (tests/postgres/two_workers.sh)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

import pytest

from harness.artifacts import REPO_ROOT


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="starts PostgreSQL as the postgres user, which needs root")
@pytest.mark.skipif(not glob.glob("/usr/lib/postgresql/*/bin/initdb") and not shutil.which("apt-get"),
                    reason="no PostgreSQL server and no apt-get to install one")
def test_two_workers_share_one_postgresql_study():
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    env = {**os.environ, "PY": sys.executable}
    if versions:
        env["PG_VERSION"] = versions[-1].split("/")[4]
    result = subprocess.run(["bash", str(REPO_ROOT / "tests/postgres/two_workers.sh")], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "no configuration run twice" in result.stdout
