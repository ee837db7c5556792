"""The override list that rebuilds a sweep trial's exact config, and the check that it does.

    overrides = trial_overrides(cfg, params, task_overrides)   # sweep settings + Hydra task overrides + params
    verify_overrides(overrides, trial_cfg)                     # ValueError naming the first field that differs
    command = trial_command(overrides)                         # "python -m harness train.sft.max_steps=30 ..."

A trial's config is the composed config (`python -m harness <task overrides> +sweep=<name>`) with the sweep's own
settings (everything conf/sweep/<name>.yaml sets outside `sweep:`, including a `defaults` group override such as
`override /train: sft_dpo`) and the trial's sampled parameters on top. The command without `+sweep=` must carry
all three, in that order: Hydra applies later overrides over earlier ones, as the user's command line did over
the sweep's YAML. The sweep verifies every trial's list by composing it before the trial trains, so a recorded
command that would run another experiment fails the trial instead of being written down.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from harness.artifacts import REPO_ROOT

CONF_DIR = REPO_ROOT / "conf"


def trial_overrides(cfg, params: dict, task_overrides: Sequence[str] | None) -> list[str]:
    """The overrides that rebuild the trial: the sweep YAML's settings, the user's, then the sampled params.

    `task_overrides` None (a sweep started from Python with a config built some other way): every setting where
    the sweep's config differs from the default composition, so the command still rebuilds it exactly.
    """
    from harness.sweep import trial_settings

    param_overrides = [f"{key}={override_value(value)}" for key, value in trial_settings(cfg, params).items()]
    if task_overrides is None:
        return [*config_overrides(cfg), *param_overrides]
    option = sweep_option(task_overrides, cfg.sweep.name)
    user = [o for o in task_overrides if not _is_sweep_or_hydra(o)]
    user_keys = {_key(o) for o in user}
    sweep_settings = [o for o in sweep_yaml_overrides(CONF_DIR / "sweep" / f"{option}.yaml")
                      if _key(o) not in user_keys]
    return [*sweep_settings, *user, *param_overrides]


def config_overrides(cfg) -> list[str]:
    """`key=value` for every leaf where `cfg` (its sweep node aside) differs from `python -m harness`'s default."""
    from dataclasses import replace

    default = OmegaConf.to_container(OmegaConf.structured(compose_run_config([])))
    wanted = OmegaConf.to_container(OmegaConf.structured(replace(cfg, sweep=None)))
    return [f"{key}={override_value(want)}"
            for (key, got), (_, want) in zip(_leaves(default, ""), _leaves(wanted, ""), strict=True) if got != want]


def trial_command(overrides: Sequence[str]) -> str:
    return shlex.join(["python", "-m", "harness", *overrides])


def sweep_option(task_overrides: Sequence[str], default: str) -> str:
    """The sweep config's file name from `+sweep=<option>` (the sweep's name when it was composed otherwise)."""
    for override in task_overrides:
        if override.lstrip("+~").startswith("sweep="):
            return override.split("=", 1)[1]
    return default


def sweep_yaml_overrides(path: Path) -> list[str]:
    """Everything a `# @package _global_` sweep YAML sets outside its `sweep:` node, as overrides."""
    if not path.is_file():
        return []
    node = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    overrides = []
    for entry in node.pop("defaults", None) or []:
        if isinstance(entry, dict):
            for group, option in entry.items():
                overrides.append(f"{group.removeprefix('override ').lstrip('/')}={option}")
    node.pop("sweep", None)
    overrides += [f"{key}={override_value(value)}" for key, value in _leaves(node, "")]
    return overrides


def override_value(value) -> str:
    """A value in Hydra's override grammar: compact (no spaces, so one shell word once quoted), strings quoted unless
    plainly safe (a string that looks like a number, bool or null stays a string)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{override_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if re.fullmatch(r"[A-Za-z_/][A-Za-z0-9_./-]*", text) and text not in ("true", "false", "null"):
        return text
    # Inside Hydra's quoted strings a backslash escapes only a quote or the backslashes before one (and before the
    # closing quote): double those, escape the quotes, leave every other backslash as it is.
    escaped = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    return "'" + re.sub(r"(\\+)$", lambda m: m.group(1) * 2, escaped) + "'"


def compose_run_config(overrides: Sequence[str]):
    """The RunConfig `python -m harness <overrides>` would run (Hydra's compose API, no launch)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from harness.config import register_configs, to_run_config

    register_configs()
    if GlobalHydra.instance().is_initialized():  # inside @hydra.main: compose with the app's own search path
        return to_run_config(compose("config", overrides=list(overrides)))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return to_run_config(compose("config", overrides=list(overrides)))


def verify_overrides(overrides: Sequence[str], trial_cfg) -> None:
    """Raise ValueError naming the first dotted field where `overrides` would build another config."""
    rebuilt = OmegaConf.to_container(OmegaConf.structured(compose_run_config(overrides)))
    wanted = OmegaConf.to_container(OmegaConf.structured(trial_cfg))
    for (key, got), (_, want) in zip(_leaves(rebuilt, ""), _leaves(wanted, ""), strict=True):
        if got != want:
            raise ValueError(f"the trial's recorded command would not rebuild its config: {key} would be {got!r}, "
                             f"the trial runs {want!r} (pass the Hydra overrides the sweep was composed with to "
                             "run_sweep)")


def _leaves(node, prefix: str):
    if isinstance(node, dict) and (node or not prefix):
        for key in sorted(node):
            yield from _leaves(node[key], f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, node


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _is_sweep_or_hydra(override: str) -> bool:
    key = _key(override)
    return key == "sweep" or key.startswith(("sweep.", "hydra.", "hydra/")) or key == "hydra"
