"""Which option applies to which task and method: one table, checked once the model's task is known.

An option that is accepted, recorded in the manifest and then not applied is worse than an error: the user
believes a model was made in a way it was not. Every stage (and `run` / `compress`, for every section of a recipe,
before any work) calls `check` with the model's task; an option set away from its default where its rule does not
hold is refused with one line naming it. The rules live here, not as `if`s scattered over the stages.

Pure Python (like config.py): the CLI imports it, and `llmzip --help` must not pay for torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmzip.config import (
    BenchConfig,
    CalibrationMethod,
    DataConfig,
    DistillConfig,
    ExportConfig,
    Provider,
    QuantizeConfig,
    WeightAlgorithm,
)
from llmzip.errors import ConfigError

CAUSAL_LM = "causal-lm"
SEQUENCE_CLASSIFICATION = "sequence-classification"
SENTENCE_EMBEDDING = "sentence-embedding"


@dataclass(frozen=True)
class Scope:
    """What the options are applied to: the model's task and, for quantize, whether activations stay float."""

    task: str  # a TaskKind value: "sequence-classification", "token-classification" or "causal-lm"
    task_weight_only: bool = False  # the task quantizes weights only whatever the flags say (causal LMs)
    where: str = "the model"  # named in the error

    @property
    def is_lm(self) -> bool:
        return self.task == CAUSAL_LM


@dataclass(frozen=True)
class Rule:
    holds: Callable[[Any, Scope], bool]  # (the config holding the option, scope) → does the option apply
    says: str  # what the option is for, completing "OPTION is for …"


def _weight_only(config: Any, scope: Scope) -> bool:
    return bool(config.weight_only or config.weight_bits == 4 or scope.task_weight_only)


LM = Rule(lambda c, s: s.is_lm, "causal LMs")
CLASSIFIER = Rule(lambda c, s: not s.is_lm, "classifiers (a causal LM is measured by perplexity and tokens/s)")
SEQUENCE = Rule(
    lambda c, s: s.task == SEQUENCE_CLASSIFICATION,
    "sequence classifiers (one label per text; a token classifier reads one sentence's words and scores every word)",
)
WEIGHT_ONLY = Rule(_weight_only, "weight-only quantization (--weight-bits 4 or --weight-only; implied for a causal LM)")
INT8_ACTIVATIONS = Rule(
    lambda c, s: not _weight_only(c, s),
    "int8 activations; weight-only quantization (--weight-bits 4, --weight-only, any causal LM) keeps them float",
)
PERCENTILE = Rule(lambda c, s: c.method is CalibrationMethod.PERCENTILE, "--method percentile")
GPTQ = Rule(lambda c, s: c.algorithm is WeightAlgorithm.GPTQ, "--algorithm gptq")
NOT_SOURCE = Rule(
    lambda c, s: c.algorithm is not WeightAlgorithm.SOURCE,
    "choosing codes; with --algorithm source the GGUF file's own blocks set bits, block size and zero points",
)
QAT = Rule(lambda c, s: c.qat_steps > 0, "quantization-aware training (--qat-steps N)")
ENCODER_STUDENT = Rule(
    lambda c, s: not s.is_lm and s.task != SENTENCE_EMBEDDING,
    "encoder students of classifiers; a causal-LM or sentence-embedding student is a layer subset (so far)",
)


PAIRS = Rule(
    lambda c, s: s.task in (SEQUENCE_CLASSIFICATION, SENTENCE_EMBEDDING),
    "sequence classifiers (text pairs as one input) and sentence embedders (scored on pairs: STS-B)",
)


OPENVINO = Rule(lambda c, s: c.provider is Provider.OPENVINO, "--provider openvino")


def _baselines(config: BenchConfig, scope: Scope) -> bool:
    lm_only = {b for b in config.baselines if b.startswith("genai-")}
    return lm_only == set(config.baselines) if scope.is_lm else not lm_only


BASELINES = Rule(
    _baselines, "their task: genai-int4/genai-fp32 for causal LMs, torch-bf16/ort-dynamic-int8 for classifiers"
)

# config class → option → the rules that must all hold when the option is set away from its default.
RULES: dict[type, dict[str, tuple[Rule, ...]]] = {
    DataConfig: {
        "skip_tokens": (LM,),
        "text_pair_column": (PAIRS,),
        "label_column": (CLASSIFIER,),
    },
    DistillConfig: {
        **{
            k: (ENCODER_STUDENT,)
            for k in (
                "keep_heads",
                "keep_ffn",
                "prune_batches",
                "prune_rounds",
                "vocabulary",
                "embedding_rank",
                "max_positions",
                "linear_rank",
                "linear_rank_pattern",
                # narrower students: a causal LM's embeddings, head and KV heads would need resizing
                "hidden_size",
                "intermediate_size",
                "num_attention_heads",
            )
        },
        "augment_pairs": (SEQUENCE,),  # joined texts have no per-word tags
        "augment_swaps": (SEQUENCE,),
        # Causal-LM and token-classifier teachers run online (llmzip/tasks): there is no logit cache to set.
        "teacher_cache": (SEQUENCE,),
        "teacher_cache_max_gb": (SEQUENCE,),
        "teacher_top_k": (LM,),
    },
    QuantizeConfig: {
        "weight_block_size": (WEIGHT_ONLY, NOT_SOURCE),
        "weight_symmetric": (NOT_SOURCE,),
        "algorithm": (WEIGHT_ONLY,),
        "gptq_damp": (WEIGHT_ONLY, GPTQ),
        "head_bits": (WEIGHT_ONLY, NOT_SOURCE),
        "weight_granularity": (INT8_ACTIVATIONS,),  # weight-only scales are per block of inputs
        **{
            k: (INT8_ACTIVATIONS,)
            for k in (
                "activation_symmetric",
                "activations",
                "attention",
                "target_cpu",
                "saturation_fix",
                "saturation_margin",
                "method",
                "smoothquant",
                "qat_steps",
            )
        },
        "percentile": (INT8_ACTIVATIONS, PERCENTILE),
        **{k: (INT8_ACTIVATIONS, QAT) for k in ("qat_learning_rate", "qat_batch_size", "qat_alpha")},
        "max_accuracy_drop": (CLASSIFIER,),
        "max_perplexity_increase": (LM,),
        "max_perplexity_ratio": (LM,),
        "fallback_latency": (CLASSIFIER,),
    },
    ExportConfig: {
        "lm_graph": (LM,),
        "float_zero_points": (LM,),
        "eval_accuracy": (CLASSIFIER,),
        "fold_bias": (CLASSIFIER,),  # a causal LM's layers are weight-only MatMulNBits: no int8 bias to fold
    },
    BenchConfig: {
        **{k: (LM,) for k in ("prefill_lengths", "prompt_tokens", "new_tokens", "lm_repeats", "also_score")},
        **{
            k: (CLASSIFIER,)
            for k in (
                "batch_sizes",
                "seq_len",
                "warmup",
                "iterations",
                "torch_dtype",
                "min_speedup",
                "max_accuracy_drop",
            )
        },
        "baselines": (BASELINES,),
        "ep_precision": (OPENVINO,),
    },
}


# Options that only a model with int8 activations has (a recipe's int8 section does not carry them to int4).
INT8_ACTIVATION_OPTIONS = frozenset(k for k, rules in RULES[QuantizeConfig].items() if INT8_ACTIVATIONS in rules)

# The option to use instead, where there is one, named in the error.
INSTEAD = {
    "max_accuracy_drop": "a causal LM takes --max-perplexity-increase",
    "max_perplexity_increase": "a classifier takes --max-accuracy-drop",
}


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def check(config: Any, scope: Scope, *, prefix: str = "") -> None:
    """Refuse, with one line, the first option set away from its default that does not apply in `scope`;
    nested configs (e.g. `data`) are checked with their own rules."""
    rules = {}
    for cls, table in RULES.items():
        if isinstance(config, cls):
            rules.update(table)
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check(value, scope, prefix=f"{prefix}{f.name}.")
            continue
        if value == _default(f):
            continue
        for rule in rules.get(f.name, ()):
            if not rule.holds(config, scope):
                shown = value.value if hasattr(value, "value") else value
                raise ConfigError(
                    f"{prefix}{f.name}={shown}: applies only to {rule.says}, so it would be recorded but not applied "
                    f"to {scope.where} ({scope.task}); drop it" + (f" ({INSTEAD[f.name]})" if f.name in INSTEAD else "")
                )


def check_stages(sections: dict[str, Any], scope: Scope) -> None:
    """Every stage section of a recipe (name → config), e.g. before `run` or `compress` starts any work."""
    for name, config in sections.items():
        if config is not None:
            check(config, scope, prefix=f"{name}.")


__all__ = ["INT8_ACTIVATION_OPTIONS", "RULES", "Scope", "check", "check_stages"]
