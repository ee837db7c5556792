"""Every shipped config composes; unknown keys and wrong types fail at compose time, naming the key."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from harness.artifacts import REPO_ROOT
from harness.config import RunConfig
from tests.conftest import compose_config, make_config

CONF = REPO_ROOT / "conf"
GROUP_YAMLS = sorted(p for p in CONF.rglob("*.yaml") if p.parent != CONF)


def _override_for(path: Path) -> list[str]:
    group = path.parent.relative_to(CONF).as_posix()
    overrides = [f"{'+' if group == 'sweep' else ''}{group}={path.stem}"]
    if group == "model" and path.stem == "hf":
        overrides.append("model.name_or_path=/models/some-local-model")
    if group == "data" and path.stem == "custom":
        overrides.append("data.sft_file=somewhere.jsonl")
    return overrides


def test_conf_has_every_group():
    groups = {p.parent.name for p in GROUP_YAMLS}
    assert {"model", "quant", "lora", "data", "eval", "train"} <= groups


@pytest.mark.parametrize("path", GROUP_YAMLS, ids=lambda p: p.relative_to(CONF).as_posix())
def test_every_yaml_composes_into_typed_config(path):
    cfg = make_config(_override_for(path))
    assert isinstance(cfg, RunConfig)
    # Every value the YAML sets reaches the typed config (a group merged at the wrong package would not).
    values = OmegaConf.to_container(OmegaConf.load(path))
    if not path.read_text().startswith("# @package _global_"):
        values = {path.parent.name: values}
    _assert_values_set(values, asdict(cfg), path.stem)


def _assert_values_set(expected, actual, where: str) -> None:
    if isinstance(expected, dict):
        for key, value in expected.items():
            if key != "defaults" and value != "???":
                assert key in actual, f"{where}.{key} is not in the typed config"
                _assert_values_set(value, actual[key], f"{where}.{key}")
    elif isinstance(expected, list) and expected and isinstance(expected[0], dict):
        assert len(expected) == len(actual), where
        for index, (item, typed) in enumerate(zip(expected, actual)):
            _assert_values_set(item, typed, f"{where}[{index}]")
    else:
        assert actual == expected, f"{where}: the YAML sets {expected!r}, the typed config has {actual!r}"


def test_defaults_are_the_embedded_model_with_nf4():
    cfg = make_config()
    assert cfg.model.kind == "smollm2"
    assert cfg.quant.method == "nf4" and cfg.quant.double_quant
    assert cfg.train.stages == ["sft"]


def test_unknown_key_fails_naming_it():
    with pytest.raises(ConfigCompositionException) as err:
        compose_config(["lora.pork=1"])
    # Hydra's own message echoes any failing override; the schema's names the key and the dataclass.
    assert "Key 'pork' not in 'LoraConfig'" in str(err.value.__cause__)


def test_unknown_key_in_a_group_yaml_fails_naming_it(tmp_path):
    from hydra import compose, initialize_config_dir

    conf = tmp_path / "conf"
    import shutil

    shutil.copytree(CONF, conf)
    (conf / "lora" / "typo.yaml").write_text("r: 8\nalpah: 16\n")
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        with pytest.raises(Exception) as err:
            compose("config", overrides=["lora=typo"])
    text = f"{err.value} {err.value.__cause__}"
    assert "alpah" in text


def test_wrong_type_fails_naming_the_key():
    with pytest.raises(ConfigCompositionException) as err:
        compose_config(["lora.r=sixteen"])
    # Not the override echoed back ("Error merging override lora.r=sixteen"): the schema's type check.
    assert isinstance(err.value.__cause__, ValidationError)
    assert "could not be converted to Integer" in str(err.value.__cause__)
    assert "full_key: lora.r" in str(err.value.__cause__)


@pytest.mark.parametrize(
    "overrides, field",
    [
        (["lora.alpha=0"], "lora.alpha"),
        (["lora.r=0"], "lora.r"),
        (["train.dpo.beta=0"], "train.dpo.beta"),
        (["quant.method=int3"], "quant.method"),
        (["train.stages=[dpo]", "data.preference_file=null"], "data.preference_file"),
    ],
)
def test_cross_field_rules_name_the_fields(overrides, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        make_config(overrides)
