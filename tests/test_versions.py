"""harness.versions: the tested library ranges come from pyproject.toml, and `python -m harness` enforces them."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from harness.artifacts import REPO_ROOT
from harness.versions import LibraryVersionError, check_library_versions, declared_requirements

# The libraries whose internals harness relies on: each must have a tested upper bound.
PINNED = ("transformers", "peft", "trl", "bitsandbytes", "optuna", "lm-eval")


def _declared(name: str) -> Requirement:
    return next(r for r in declared_requirements() if canonicalize_name(r.name) == canonicalize_name(name))


def _fake_versions(monkeypatch, **fake: str | None) -> None:
    """metadata.version answers `fake` (None: not installed) for the named libraries, the truth otherwise."""
    real = metadata.version
    fake = {canonicalize_name(name): version for name, version in fake.items()}

    def version(name):
        if canonicalize_name(name) not in fake:
            return real(name)
        if fake[canonicalize_name(name)] is None:
            raise metadata.PackageNotFoundError(name)
        return fake[canonicalize_name(name)]

    monkeypatch.setattr(metadata, "version", version)


def test_this_machine_has_the_tested_versions():
    check_library_versions()


def test_installed_metadata_is_this_checkouts_pyproject():
    # The check reads the installed metadata; after an edit of pyproject.toml it is stale until reinstalled.
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))

    def key(requirement: Requirement):
        return canonicalize_name(requirement.name), requirement.specifier, str(requirement.marker)

    expected = {key(Requirement(line)) for line in pyproject["project"]["dependencies"]}
    assert {key(r) for r in declared_requirements()} == expected, (
        "harness's installed metadata differs from pyproject.toml: run `make setup` (pip install -e .)")


@pytest.mark.parametrize("name", PINNED)
def test_libraries_we_patch_have_a_tested_upper_bound(name):
    requirement = _declared(name)
    assert any(s.operator == "<" for s in requirement.specifier), f"{requirement} has no upper bound"
    assert requirement.specifier.contains(metadata.version(name), prereleases=True)


def test_a_newer_trl_is_refused_with_the_range_and_the_fix(monkeypatch):
    assert _declared("trl").specifier == SpecifierSet(">=1.16,<1.17")  # the range the message below names
    _fake_versions(monkeypatch, trl="1.17.0")
    with pytest.raises(LibraryVersionError) as err:
        check_library_versions()
    assert str(err.value) == ("trl 1.17.0 is installed but harness is tested with trl>=1.16,<1.17; "
                              "install a version in that range (pip install 'trl>=1.16,<1.17')")


@pytest.mark.parametrize("name", PINNED)
def test_each_pinned_library_at_its_upper_bound_is_refused(monkeypatch, name):
    upper = next(s.version for s in _declared(name).specifier if s.operator == "<")
    _fake_versions(monkeypatch, **{name: upper})
    with pytest.raises(LibraryVersionError, match=rf"^{name} {upper} is installed but harness is tested with "):
        check_library_versions()


def test_every_problem_is_listed_and_a_missing_library_is_named(monkeypatch):
    _fake_versions(monkeypatch, optuna="4.5.0", peft=None)
    with pytest.raises(LibraryVersionError) as err:
        check_library_versions()
    lines = str(err.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("peft is not installed but harness needs peft>=0.21,<0.22")
    assert lines[1].startswith("optuna 4.5.0 is installed but harness is tested with optuna>=5.0,<5.1")


def test_cli_refuses_to_start_outside_the_range(tmp_path):
    # A fake installed trl 1.17.0, found before the real one, in a fresh interpreter. lora.r=0 would fail the
    # config right after, so a missing version check fails this test fast instead of starting a run.
    dist_info = tmp_path / "site" / "trl-1.17.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: trl\nVersion: 1.17.0\n")
    python_path = os.pathsep.join(filter(None, [str(tmp_path / "site"), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": python_path}
    runs = tmp_path / "runs"
    result = subprocess.run([sys.executable, "-m", "harness", "model=tiny", "lora.r=0",
                             f"hydra.run.dir={runs}/x"],
                            check=False, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: trl 1.17.0 is installed but harness is tested with trl>=1.16,<1.17")
    assert "Traceback" not in result.stderr
    assert not runs.exists()
