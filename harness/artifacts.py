"""Atomic file writes and the environment facts every results record carries.

A killed process must never leave a half-written file that looks complete: every write goes to a temp file
in the same directory and is renamed into place (rename is atomic on POSIX).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from harness.faults import kill_point

REPO_ROOT = Path(__file__).resolve().parent.parent
TRACKED_LIBRARIES = ("torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "lm_eval", "optuna")


def write_text_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The writer (process namespace and pid) is in the temporary name, so that a later write can remove what a
    # killed writer left.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_writer()}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes owner-only files; results and reports are meant to be shared
        if path.name == "report.html":
            kill_point("during_report")  # test facility (harness.faults): report.md is in place, report.html not
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _remove_dead_writers_temps(path)


def _writer() -> str:
    """This process as `<host, boot and pid namespace hash>.<pid>`: a pid means something only within those."""
    return f"{_namespace_key()}.{os.getpid()}"


def boot_id() -> str:
    with contextlib.suppress(OSError):
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return ""


def pid_namespace() -> str:
    with contextlib.suppress(OSError):
        return os.readlink("/proc/self/ns/pid")
    return ""


@functools.cache
def _namespace_key() -> str:
    return hashlib.sha256(f"{socket.gethostname()}|{boot_id()}|{pid_namespace()}".encode()).hexdigest()[:8]


def _remove_dead_writers_temps(path: Path) -> None:
    """Remove the `.<name>.<writer>-*.tmp` files write_text_atomic made for `path` in a process of this host,
    boot and pid namespace that is gone (killed between writing and renaming). Files of writers elsewhere (a
    container sharing the directory) are left alone, as is anything not named by this function's pattern."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.{_namespace_key()}\.(\d+)-[^/]*\.tmp$")
    for sibling in path.parent.iterdir():
        match = pattern.match(sibling.name)
        if not match or int(match.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(match.group(1)), 0)
            continue  # its writer is alive (or the pid was reused: leave the file)
        except ProcessLookupError:
            sibling.unlink(missing_ok=True)
        except PermissionError:  # alive, another user's
            continue


def write_json_atomic(path: str | Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n")


def write_jsonl_atomic(path: str | Path, rows: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows))


def replace_dir_atomic(staging: Path, final: Path) -> None:
    """Move a fully written staging directory into place, replacing an older one."""
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, final)


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TRACKED_LIBRARIES:
        try:
            versions[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_revision() -> str:
    """The repository's commit, with '+dirty' when tracked files have uncommitted changes."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT, capture_output=True, text=True
        ).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (a config path, resolved as resolve_path does): a data file's identity."""
    return hashlib.sha256(resolve_path(path).read_bytes()).hexdigest()


def resolve_path(path: str | Path) -> Path:
    """A config path: absolute as given, else relative to the working directory, else to the repository."""
    path = Path(path)
    if path.is_absolute() or path.exists():
        return path
    return REPO_ROOT / path
