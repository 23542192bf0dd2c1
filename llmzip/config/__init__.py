"""Typed, validated configuration for every stage, and the YAML recipe that maps onto them.

Pure Python on purpose: the CLI imports this module, and `llmzip --help` must not pay for torch.
Defaults live here and nowhere else; the CLI only overrides fields that the user set.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from llmzip.config.choices import Activations as Activations
from llmzip.config.choices import CalibrationMethod as CalibrationMethod
from llmzip.config.choices import CpuTarget as CpuTarget
from llmzip.config.choices import EpPrecision as EpPrecision
from llmzip.config.choices import Granularity as Granularity
from llmzip.config.choices import LayerSelection as LayerSelection
from llmzip.config.choices import LmGraph as LmGraph
from llmzip.config.choices import Provider as Provider
from llmzip.config.choices import SaturationFix as SaturationFix
from llmzip.config.choices import Target as Target
from llmzip.config.choices import TaskKind as TaskKind
from llmzip.config.choices import TorchDtype as TorchDtype
from llmzip.config.choices import Vocabulary as Vocabulary
from llmzip.config.choices import WeightAlgorithm as WeightAlgorithm
from llmzip.config.choices import as_enum as as_enum
from llmzip.config.data import DataConfig as DataConfig
from llmzip.config.outputs import BENCH_BASELINES as BENCH_BASELINES
from llmzip.config.outputs import BenchConfig as BenchConfig
from llmzip.config.outputs import ExportConfig as ExportConfig
from llmzip.config.quantize import DEFAULT_EXCLUDE as DEFAULT_EXCLUDE
from llmzip.config.quantize import CalibrateConfig as CalibrateConfig
from llmzip.config.quantize import QuantizeConfig as QuantizeConfig
from llmzip.config.training import DistillConfig as DistillConfig
from llmzip.config.training import FinetuneConfig as FinetuneConfig
from llmzip.config.training import TrainConfig as TrainConfig

STAGE_CONFIGS: dict[str, type] = {
    "finetune": FinetuneConfig,
    "distill": DistillConfig,
    "calibrate": CalibrateConfig,
    "quantize": QuantizeConfig,
    "export": ExportConfig,
    "bench": BenchConfig,
}


def to_dict(config: Any) -> dict[str, Any]:
    """The fully resolved config as plain JSON-able data (enums as their values)."""

    def plain(value: Any) -> Any:
        if isinstance(value, enum.Enum):
            return value.value
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(config))
