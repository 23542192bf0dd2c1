"""Config classes and recipes: unknown keys and bad values fail at load time, naming the key."""

from __future__ import annotations

import pytest

from llmzip.config import BenchConfig, DistillConfig, Granularity, QuantizeConfig, to_dict
from llmzip.errors import ConfigError
from llmzip.recipe import from_dict, load_recipe, set_dotted


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match="temprature: unknown key"):
        from_dict(DistillConfig, {"temprature": 2})


def test_bad_value_is_named() -> None:
    with pytest.raises(ConfigError, match="alpha: must be in"):
        from_dict(DistillConfig, {"alpha": 1.5})
    with pytest.raises(ConfigError, match="batch_size: expected int"):
        from_dict(DistillConfig, {"batch_size": "many"})


def test_enum_and_list_coercion() -> None:
    q = from_dict(QuantizeConfig, {"weight_granularity": "per-tensor"})
    assert q.weight_granularity is Granularity.PER_TENSOR
    with pytest.raises(ConfigError, match="weight_granularity: 'per-row' is not one of"):
        from_dict(QuantizeConfig, {"weight_granularity": "per-row"})
    assert from_dict(BenchConfig, {"batch_sizes": "1, 8"}).batch_sizes == [1, 8]
    assert from_dict(DistillConfig, {"layers": "0,2,4"}).layers == [0, 2, 4]


def test_nested_data_errors_carry_the_path() -> None:
    with pytest.raises(ConfigError, match=r"distill\.data\.max_length"):
        load_recipe(
            {"model": "m", "distill": {"data": {"max_length": 2}}, "calibrate": {}, "quantize": {}, "export": {}}
        )


def test_recipe_shared_data_is_the_default_for_each_stage() -> None:
    recipe = load_recipe(
        {
            "model": "m",
            "data": {"dataset": "d", "max_length": 64},
            "finetune": {"data": {"max_length": 32}},
            "calibrate": {},
            "quantize": {},
            "export": {},
        }
    )
    assert recipe.stages["finetune"].data.max_length == 32
    assert recipe.stages["finetune"].data.dataset == "d"
    assert recipe.stages["calibrate"].data.max_length == 64
    assert "distill" not in recipe.stages


def test_recipe_requires_model_and_core_stages() -> None:
    with pytest.raises(ConfigError, match="model:"):
        load_recipe({"calibrate": {}, "quantize": {}, "export": {}})
    with pytest.raises(ConfigError, match="quantize"):
        load_recipe({"model": "m", "calibrate": {}, "export": {}})
    with pytest.raises(ConfigError, match="distil: unknown recipe section"):
        load_recipe({"model": "m", "distil": {}})


def test_set_dotted_and_round_trip() -> None:
    values: dict = {"distill": {"num_layers": 3}}
    set_dotted(values, "distill.data.max_length", 64)
    assert values == {"distill": {"num_layers": 3, "data": {"max_length": 64}}}
    plain = to_dict(QuantizeConfig())
    assert plain["weight_granularity"] == "per-channel"
    assert from_dict(QuantizeConfig, plain) == QuantizeConfig()
