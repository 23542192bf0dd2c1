"""llmzip/scope.py: the one table of which option applies to which task and method."""

from __future__ import annotations

import dataclasses

import pytest

from llmzip import scope
from llmzip.config import BenchConfig, DataConfig, QuantizeConfig
from llmzip.errors import ConfigError

LM = scope.Scope("causal-lm", task_weight_only=True, where="lm")
BERT = scope.Scope("sequence-classification", where="bert")


def test_every_rule_names_a_real_option() -> None:
    for cls, table in scope.RULES.items():
        fields = {f.name for f in dataclasses.fields(cls)}
        assert set(table) <= fields, (cls.__name__, set(table) - fields)


def test_defaults_are_never_refused() -> None:
    for config in (QuantizeConfig(), BenchConfig(), DataConfig()):
        scope.check(config, LM)
        scope.check(config, BERT)


def test_an_option_set_where_it_does_not_apply_is_named() -> None:
    with pytest.raises(ConfigError, match=r"^algorithm=gptq: applies only to weight-only"):
        scope.check(QuantizeConfig(algorithm="gptq"), BERT)
    scope.check(QuantizeConfig(algorithm="gptq"), LM)  # a causal LM is weight-only
    scope.check(QuantizeConfig(algorithm="gptq", weight_bits=4), BERT)
    with pytest.raises(ConfigError, match=r"^data\.skip_tokens=5: .*causal LMs"):
        scope.check(QuantizeConfig(data=DataConfig(skip_tokens=5)), BERT)
    with pytest.raises(ConfigError, match="takes --max-perplexity-increase"):
        scope.check(QuantizeConfig(max_accuracy_drop=1.0), LM)
    with pytest.raises(ConfigError, match=r"^gptq_damp=0.05: applies only to --algorithm gptq"):
        scope.check(QuantizeConfig(weight_bits=4, gptq_damp=0.05), BERT)


def test_baselines_follow_the_task() -> None:
    scope.check(BenchConfig(baselines=["genai-int4"]), LM)
    scope.check(BenchConfig(baselines=["ort-dynamic-int8"]), BERT)
    for config, where in ((BenchConfig(baselines=["genai-int4"]), BERT), (BenchConfig(baselines=["torch-bf16"]), LM)):
        with pytest.raises(ConfigError, match="baselines"):
            scope.check(config, where)
