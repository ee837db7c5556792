"""`python -m harness`: one run end to end; `python -m harness +sweep=rank`: an Optuna sweep.

A thin Hydra entry: compose -> typed config -> run or sweep. Bad input (a malformed data row, an eval set that
changed, a cross-field rule) prints one clear error, leaves no partial run directory, and exits 2; so does a
library installed outside the version range harness is tested with (checked before anything starts). A full disk
or a read-only sweeps directory stops a sweep with one clear error and exit 3; rerunning the same command then
continues it (nothing finished is lost).
Only what Hydra wrote for this process is removed: a run directory that holds anything else, or existed
before, stays.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from harness.config import register_configs, to_run_config
from harness.data import DataError
from harness.faults import check_kill_point
from harness.versions import LibraryVersionError, check_library_versions

log = logging.getLogger("harness")
register_configs()


# Set before Hydra creates the run directory: a directory that already existed is the user's, never removed.
_PREEXISTING_RUN_DIR = next(
    (Path(a.split("=", 1)[1]).resolve() for a in sys.argv[1:] if a.startswith("hydra.run.dir=")), None)
_PREEXISTING_RUN_DIR = _PREEXISTING_RUN_DIR if _PREEXISTING_RUN_DIR and _PREEXISTING_RUN_DIR.exists() else None


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    _redact_hydra_files(run_dir)
    try:
        check_kill_point()
        run_config = to_run_config(cfg)
        if run_config.sweep is not None:
            from harness.sweep import DiskError, run_sweep

            try:
                summary = run_sweep(run_config, list(HydraConfig.get().overrides.task))
            except DiskError as err:
                _remove_hydra_run_dir(run_dir)
                print(f"error: {err}", file=sys.stderr)
                sys.exit(3)
            _remove_hydra_run_dir(run_dir)  # a sweep writes under sweeps/<name>/, not here
            if summary.n_complete == 0:
                sys.exit(1)  # every trial failed or was pruned: nothing to ship
            return
        from harness.run import prepare_inputs, run_experiment, summary_table

        inputs = prepare_inputs(run_config)
    except (DataError, ValueError) as err:
        # Input errors: nothing was trained; remove what Hydra made here so no partial output remains.
        _remove_hydra_run_dir(run_dir)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    results = run_experiment(run_config, run_dir, inputs)
    print(summary_table(results))


def _hydra_files(run_dir: Path) -> list[Path]:
    files = [run_dir / ".hydra" / name for name in ("config.yaml", "hydra.yaml", "overrides.yaml")]
    return [*files, run_dir / f"{HydraConfig.get().job.name}.log"]


def _redact_hydra_files(run_dir: Path) -> None:
    """Hydra copies the command line (a storage URL's password included) into .hydra/: redact it there too."""
    from harness.artifacts import write_text_atomic
    from harness.sweep_storage import redact

    for path in _hydra_files(run_dir)[:3]:
        if path.is_file() and not path.is_symlink():
            text = path.read_text()
            if redact(text) != text:
                write_text_atomic(path, redact(text))


def _remove_hydra_run_dir(run_dir: Path) -> None:
    """Remove Hydra's own files from the run directory (`.hydra/`, the job log), then the directory if that
    left it empty and it did not exist before this process. Anything else in it is not ours: it stays."""
    for path in _hydra_files(run_dir):
        if path.is_file() and not path.is_symlink():
            path.unlink()
    for directory in (run_dir / ".hydra", run_dir):
        if directory == run_dir and _PREEXISTING_RUN_DIR == run_dir.resolve():
            break
        with contextlib.suppress(OSError):  # not empty (someone else's files), or already gone
            directory.rmdir()


def exit_on_untested_libraries() -> None:
    try:
        check_library_versions()
    except LibraryVersionError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    exit_on_untested_libraries()
    from harness import validate

    if sys.argv[1:2] == ["validate"]:  # python -m harness validate <overrides>: checks only, nothing written
        sys.exit(validate.main(sys.argv[2:]))
    validate.precheck(sys.argv[1:])  # config and run-dir errors as one `error:` line, before Hydra starts
    main()
