"""The closed choices of the stage configs (Enums, so Typer lists them in --help), and the typed enum reader.

Pure Python on purpose, like config.py: the CLI imports it and `llmzip --help` must not pay for torch.
"""

from __future__ import annotations

import enum
from typing import Any, TypeVar

from llmzip.errors import ConfigError


class TaskKind(str, enum.Enum):
    """What a model does (llmzip/tasks has one module each); a model's architecture names it, `finetune --task`
    chooses it for a pretrained encoder that has no task head yet."""

    SEQUENCE_CLASSIFICATION = "sequence-classification"
    TOKEN_CLASSIFICATION = "token-classification"
    CAUSAL_LM = "causal-lm"
    SENTENCE_EMBEDDING = "sentence-embedding"


class Provider(str, enum.Enum):
    """onnxruntime execution provider (torch variants map cuda/tensorrt to the CUDA device and run openvino's
    rows on the CPU). openvino is Intel's plugin EP (`pip install 'llmzip[openvino]'`), on the CPU device."""

    CPU = "cpu"
    CUDA = "cuda"
    TENSORRT = "tensorrt"
    OPENVINO = "openvino"

    @property
    def gpu(self) -> bool:
        return self in (Provider.CUDA, Provider.TENSORRT)


class Target(str, enum.Enum):
    """The runtime an int8 graph is written for.

    onnxruntime: uint8 activations × int8 weights, the QDQ pattern its CPU provider fuses into integer kernels.
    tensorrt: TensorRT's explicit quantization (through onnxruntime's TensorRT provider or trtexec): signed int8
    activations with zero point 0, symmetric per-channel int8 weights, float Softmax/LayerNorm/embeddings, plain
    ONNX ops only (no onnxruntime contrib ops). onnxruntime's CPU provider runs the same file
    (llmzip/runtime/tensorrt.py).
    """

    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt"


class EpPrecision(str, enum.Enum):
    """The inference precision an execution provider may run an fp32 graph at (OpenVINO's INFERENCE_PRECISION_HINT):
    f32 computes what the graph says; bf16 rounds activations and weights to bfloat16 (fast on AMX/AVX512-BF16)."""

    F32 = "f32"
    BF16 = "bf16"


class CalibrationMethod(str, enum.Enum):
    """How `quantize` turns a recorded activation histogram into a clip range."""

    MINMAX = "minmax"
    PERCENTILE = "percentile"
    ENTROPY = "entropy"
    MSE = "mse"


class Activations(str, enum.Enum):
    """Static: scales fixed by calibration (QLinear/MatMulIntegerToFloat). Dynamic: per call (DynamicQuantizeMatMul)."""

    STATIC = "static"
    DYNAMIC = "dynamic"


class CpuTarget(str, enum.Enum):
    """The x86 CPU class an int8 model must be right on (see llmzip/runtime/hardware.py for what each class runs).

    any: every x86 CPU (the default): u8×s8 products must not saturate the int16 pair sums of AVX2 kernels.
    avx2 / avx512: AVX2, or AVX-512 without VNNI (Skylake-SP): the same saturating kernels, so the same rule.
    vnni / amx: AVX-VNNI, AVX512-VNNI or AMX: exact int32 dot products, the full 8 bits everywhere.
    native: whatever this machine is (resolved and recorded at quantize time).
    """

    ANY = "any"
    AVX2 = "avx2"
    AVX512 = "avx512"
    VNNI = "vnni"
    AMX = "amx"
    NATIVE = "native"


class SaturationFix(str, enum.Enum):
    """Which weight rows get 7 bits for a saturating target.

    measured: only the weight rows that can saturate for inputs in the ranges the calibration samples take.
    all: every row of every layer (NNCF's overflow_fix="enable"): no saturation for any input.
    """

    MEASURED = "measured"
    ALL = "all"


class LmGraph(str, enum.Enum):
    """A causal LM's ONNX form: onnxruntime's fused decoder ops where the architecture allows (auto), always
    (fused: an error otherwise), or the traced PyTorch graph (portable to any ONNX runtime)."""

    AUTO = "auto"
    FUSED = "fused"
    TRACED = "traced"


class WeightAlgorithm(str, enum.Enum):
    """How weight-only codes are chosen: nearest code (RTN), GPTQ's Hessian-weighted error feedback, AWQ's
    activation-aware scales and clipping, or the source's own blocks kept exactly (a GGUF import)."""

    RTN = "rtn"
    GPTQ = "gptq"
    AWQ = "awq"
    SOURCE = "source"


class Vocabulary(str, enum.Enum):
    """A student's word-embedding rows: all of the teacher's (full), or only the token ids its training data uses
    (task: the others map to the unknown token inside the graph, so the tokenizer stays the same; task-nearest:
    to the kept token whose teacher embedding is the most similar)."""

    FULL = "full"
    TASK = "task"
    TASK_NEAREST = "task-nearest"  # as task, but a dropped id reads its most similar kept row instead of [UNK]


class LayerSelection(str, enum.Enum):
    """Which teacher layers a layer-subset student keeps: evenly spaced (DistilBERT), or the most influential ones
    by block influence, 1 − cos(layer input, layer output) on training data (ShortGPT): a layer that barely turns
    its input is the cheapest to drop."""

    EVEN = "even"
    INFLUENCE = "influence"


class Objective(str, enum.Enum):
    """What `llmzip compress` minimises among the candidates within the accuracy budget."""

    SIZE = "size"
    LATENCY = "latency"


class Granularity(str, enum.Enum):
    PER_CHANNEL = "per-channel"
    PER_TENSOR = "per-tensor"


E = TypeVar("E", bound=enum.Enum)


def as_enum(kind: type[E], value: Any, key: str) -> E:
    try:
        return kind(value)
    except ValueError:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(str(m.value) for m in kind)}") from None


class TorchDtype(str, enum.Enum):
    """The dtype bench runs PyTorch variants in (ONNX variants run in the dtype their graph was exported with)."""

    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"  # on a CUDA device only (the framework baseline of GPU benches)
