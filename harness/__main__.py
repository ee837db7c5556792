"""`python -m harness`: one run end to end; `python -m harness +sweep=rank`: an Optuna sweep.

A thin Hydra entry: compose -> typed config -> run or sweep. Bad input (a malformed data row, an eval set that
changed, a cross-field rule) prints one clear error, leaves no partial run directory, and exits 2; so does a
library installed outside the version range harness is tested with (checked before anything starts).
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from harness.config import register_configs, to_run_config
from harness.data import DataError
from harness.versions import LibraryVersionError, check_library_versions

log = logging.getLogger("harness")
register_configs()


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        run_config = to_run_config(cfg)
        if run_config.sweep is not None:
            from harness.sweep import run_sweep

            summary = run_sweep(run_config)
            shutil.rmtree(run_dir, ignore_errors=True)  # a sweep writes under sweeps/<name>/, not here
            if summary.n_complete == 0:
                sys.exit(1)  # every trial failed or was pruned: nothing to ship
            return
        from harness.run import prepare_inputs, run_experiment, summary_table

        inputs = prepare_inputs(run_config)
    except (DataError, ValueError) as err:
        # Input errors: nothing was trained; remove the run directory Hydra made so no partial output remains.
        shutil.rmtree(run_dir, ignore_errors=True)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    results = run_experiment(run_config, run_dir, inputs)
    print(summary_table(results))


def exit_on_untested_libraries() -> None:
    try:
        check_library_versions()
    except LibraryVersionError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    exit_on_untested_libraries()
    main()
