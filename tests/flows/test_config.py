"""Run configuration: YAML loading, overrides, and errors that name the field."""
from __future__ import annotations

from pathlib import Path

import pytest

from flows.config import ConfigError, RunConfig, load_config
from tests.paths import SCRIPTED_CONFIG

CFG = SCRIPTED_CONFIG


def test_loads_and_resolves_paths_relative_to_the_file():
    cfg = load_config(CFG)
    assert Path(cfg.sources[0].path).is_absolute()
    assert cfg.sources[0].files()[0].endswith("TruthfulQA.csv")
    assert len(cfg.sources[4].files()) == 6  # the FLAN glob


def test_overrides_parse_values_as_yaml():
    cfg = load_config(CFG, ["seed=7", "sources.1.quota=all", "shard_size=16"], output="memory://x")
    assert (cfg.seed, cfg.sources[1].quota, cfg.shard_size, cfg.output) == (7, "all", 16, "memory://x")


@pytest.mark.parametrize("override, message", [
    ("shard_size=0", "shard_size: Input should be greater than or equal to 1"),
    ("sources.1.quota=lots", "sources.1.quota"),
    ("sources.0.format=xml", "sources.0.format"),
    ("sampling.max_chrs=5", "sampling.max_chrs: Extra inputs are not permitted"),
    ("sources.2.path=missing.json", "sources.2 (ultrachat): file not found"),
    ("generation.k=9", "generation"),
])
def test_invalid_settings_name_the_field(override, message):
    with pytest.raises(ConfigError) as exc:
        load_config(CFG, [override])
    assert message in str(exc.value)


def test_bad_override_syntax_and_missing_file():
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(CFG, ["seed"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("nope.yaml")


def test_duplicate_source_names_rejected():
    raw = load_config(CFG).model_dump()
    raw["sources"].append(raw["sources"][0])
    with pytest.raises(Exception, match="source names must be unique"):
        RunConfig.model_validate(raw)


def test_flow_parameters_are_the_run_config():
    from prefect.utilities.callables import parameter_schema

    from flows.ultrafeedback import ultrafeedback

    schema = parameter_schema(ultrafeedback.fn).model_dump()
    assert schema["properties"]["config"]["$ref"].endswith("RunConfig")
    props = schema["definitions"]["RunConfig"]["properties"]
    assert {"sources", "seed", "shard_size", "output", "generation", "rating", "publish"} <= set(props)
