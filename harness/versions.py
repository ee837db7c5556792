"""Refuse to run on library versions harness is not tested with.

harness overrides trl 1.16's trainers, loads task YAMLs with lm-eval's private loader and drives Optuna's private
heartbeat and storage API, so pyproject.toml pins those libraries to the ranges the test suite passed on. pip
enforces the ranges only when it installs harness; a later `pip install -U trl` would break a run deep inside
training instead. `python -m harness` therefore checks every installed library against the ranges first.

The ranges are read from harness's installed metadata (pyproject.toml as pip installed it), so there is one
source; `make setup` reinstalls whenever pyproject.toml changes.

    from harness.versions import check_library_versions
    check_library_versions()  # raises LibraryVersionError naming each library outside its range
"""

from __future__ import annotations

from importlib import metadata

from packaging.requirements import Requirement

# Lower bounds first, so a range reads like pyproject.toml's ("trl>=1.16,<1.17").
_OPERATOR_ORDER = {">=": 0, ">": 0, "~=": 1, "==": 1, "===": 1, "!=": 2, "<=": 3, "<": 3}


class LibraryVersionError(RuntimeError):
    """An installed library is missing or outside the range harness is tested with."""


def check_library_versions() -> None:
    """Raise LibraryVersionError, one line per library, if any installed version is outside its tested range."""
    problems = []
    for requirement in declared_requirements():
        wanted = format_requirement(requirement)
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{requirement.name} is not installed but harness needs {wanted} (pip install '{wanted}')")
            continue
        # Pre-releases inside the range count as in it (a 1.16.1rc1 for >=1.16,<1.17; never a 1.17.0.dev0).
        if not requirement.specifier.contains(installed, prereleases=True):
            problems.append(
                f"{requirement.name} {installed} is installed but harness is tested with {wanted}; "
                f"install a version in that range (pip install '{wanted}')"
            )
    if problems:
        raise LibraryVersionError("\n".join(problems))


def declared_requirements() -> list[Requirement]:
    """harness's own dependencies (not its optional extras) from the installed package metadata."""
    requirements = [Requirement(line) for line in metadata.requires("harness") or []]
    return [r for r in requirements if r.marker is None or r.marker.evaluate({"extra": ""})]


def format_requirement(requirement: Requirement) -> str:
    specifiers = sorted(requirement.specifier, key=lambda s: (_OPERATOR_ORDER.get(s.operator, 1), s.version))
    return requirement.name + ",".join(str(s) for s in specifiers)
