"""The variants bench times: an ONNX session or a PyTorch model behind one `run(feeds) -> logits` call.

Built from llmzip stage directories (`load_variant`) or from a bare .onnx file plus a tokenizer folder
(`onnx_file_variant`, for third-party exports such as onnxruntime's quantize_dynamic output).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from llmzip.artifact import EXTERNAL, Artifact, dir_size_mb
from llmzip.config import BenchConfig, EpPrecision, Provider, TorchDtype, as_enum
from llmzip.errors import ArtifactError, ProviderError
from llmzip.modeling import load_model, load_tokenizer
from llmzip.positions import check_length
from llmzip.runtime import sessions
from llmzip.tasks import TASKS, Task, TaskKind, task_of

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Graph ops that mean integer weights, for ONNX files that come without an llmzip manifest.
INT8_OPS = {
    "QLinearMatMul",
    "MatMulInteger",
    "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul",
    "DynamicQuantizeLinear",
    "QuantizeLinear",
    "QAttention",
    "QGemm",
    "QLinearConv",
    "ConvInteger",
}
INT4_OPS = {"MatMulNBits"}

Runner = Callable[[dict[str, np.ndarray]], np.ndarray]


@dataclass
class Variant:
    name: str
    artifact: Artifact
    kind: str  # "onnx" | "torch"
    precision: str
    size_mb: float
    input_names: list[str]
    run: Runner
    tokenizer: Any
    label2id: dict[str, int] | None  # None: the model names no labels, so it gets no accuracy
    warnings: list[str] = field(default_factory=list)
    onnx_path: Path | None = None  # the graph onnxruntime runs (ONNX variants)
    task: Task = field(default_factory=lambda: TASKS[TaskKind.SEQUENCE_CLASSIFICATION])  # encodes eval data, scores
    # Where it runs: the provider, and for OpenVINO the precision it runs an ONNX graph at (None: as written).
    provider: Provider = Provider.CPU
    ep_precision: EpPrecision | None = None


def onnx_size_mb(path: Path) -> float:
    """The one size rule for an ONNX model: its file plus its external-data file, if any."""
    return dir_size_mb([path, path.with_name(path.name + ".data")])


def ort_runner(
    path: Path,
    provider: Provider,
    threads: int,
    precision: EpPrecision = EpPrecision.F32,
    provider_options: dict[str, str] | None = None,
    flush_denormals: bool = False,
) -> tuple[Runner, list[str]]:
    """A session on one ONNX file and the input names its graph takes."""
    session = sessions.session(
        path,
        provider=provider,
        threads=threads,
        load_error="re-run `llmzip export`",
        precision=precision,
        provider_options=provider_options,
        flush_denormals=flush_denormals,
    )
    outputs = [o.name for o in session.get_outputs()]
    output = "logits" if "logits" in outputs else outputs[0]  # third-party exports may name it otherwise

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        return session.run([output], feeds)[0]

    return run, [i.name for i in session.get_inputs()]


def session_runner(path: Path, config: BenchConfig) -> tuple[Runner, list[str]]:
    """ort_runner placed per the bench config: its provider, threads, OpenVINO precision, and for TensorRT the
    int8/fp16 flags, engine cache and shape profile of this graph (llmzip/runtime/tensorrt.py)."""
    from llmzip.runtime import tensorrt

    options = None
    if config.provider is Provider.TENSORRT:
        options = tensorrt.provider_options(
            path, cache_dir=config.engine_cache, batch_sizes=config.batch_sizes, seq_len=config.seq_len
        )
    return ort_runner(path, config.provider, config.threads, config.ep_precision, options, config.flush_denormals)


def torch_runner(artifact: Artifact, provider: Provider, threads: int, dtype: TorchDtype) -> Runner:
    import torch

    torch.set_num_threads(threads)
    device = "cpu"
    if provider.gpu:
        if not torch.cuda.is_available():
            raise ProviderError("PyTorch here has no CUDA device; use --provider cpu")
        device = "cuda"
    elif dtype is TorchDtype.FP16:
        raise ProviderError("PyTorch fp16 is a GPU baseline (CPUs emulate it slowly); use --provider cuda or bf16")
    model = load_model(artifact)
    model.to(device)  # type: ignore[arg-type]  # transformers' wrapper of .to() has a wrong signature
    if dtype is not TorchDtype.FP32:
        model.to(torch.bfloat16 if dtype is TorchDtype.BF16 else torch.float16)  # type: ignore[arg-type]

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            out = model(**{k: torch.from_numpy(v).to(device) for k, v in feeds.items()}).logits
        return out.float().cpu().numpy()

    return run


def _placement(config: BenchConfig) -> dict[str, Any]:
    """Where an ONNX variant runs: the provider, and the precision OpenVINO runs it at."""
    precision = config.ep_precision if config.provider is Provider.OPENVINO else None
    return {"provider": config.provider, "ep_precision": precision}


def _task(model_dir: Path) -> Task:
    """The task of the model whose config.json sits in `model_dir` (a sequence classifier when there is none)."""
    from llmzip.tasks.sentence_embedding import SPEC_KEY, read_spec

    config_file = model_dir / "config.json"
    try:
        values = json.loads(config_file.read_text()) if config_file.is_file() else {}
        architectures, spec = values.get("architectures"), values.get(SPEC_KEY)
    except (json.JSONDecodeError, AttributeError):
        architectures, spec = None, None  # load_variant reports an unreadable config in one line
    if spec is None and model_dir.is_dir():
        spec = read_spec(model_dir)  # a sentence-transformers folder straight from its author
    return task_of(SimpleNamespace(architectures=architectures or [], **({SPEC_KEY: spec} if spec else {})))


def _label2id(model_dir: Path) -> dict[str, int] | None:
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        return None
    mapping = json.loads(config_file.read_text()).get("label2id") or {}
    return {str(k): int(v) for k, v in mapping.items()}


def load_variant(
    artifact: Artifact, name: str, config: BenchConfig, *, torch_dtype: TorchDtype | str | None = None
) -> Variant:
    """An llmzip (or plain Hugging Face) model directory, ready to time; `torch_dtype` overrides the config's."""
    dtype = as_enum(TorchDtype, torch_dtype if torch_dtype is not None else config.torch_dtype, "torch_dtype")
    tokenizer = load_tokenizer(artifact.path)
    label2id = _label2id(artifact.path)
    config_file = artifact.path / "config.json"
    if config_file.is_file():
        try:
            model_config = SimpleNamespace(**json.loads(config_file.read_text()))
        except (json.JSONDecodeError, TypeError) as err:
            raise ArtifactError(f"{config_file}: not a model config ({err})") from None
        check_length(model_config, config.seq_len, "--seq-len", artifact.path)
    if artifact.stage == "export":
        onnx_file = artifact.path / artifact.manifest.get("model_file", "model.onnx")
        run, _ = session_runner(onnx_file, config)
        return Variant(
            name,
            artifact,
            "onnx",
            artifact.manifest["metrics"].get("precision", "fp32"),
            onnx_size_mb(onnx_file),
            list(artifact.manifest.get("inputs", [])),
            run,
            tokenizer,
            label2id,
            onnx_path=onnx_file,
            task=_task(artifact.path),
            **_placement(config),
        )
    names = [n for n in tokenizer.model_input_names if n in MODEL_INPUTS]
    warnings = []
    if artifact.stage == "quantize":
        precision = "int8-fake-quant"
        if dtype is not TorchDtype.FP32:
            # Its scales and zero points are the quantization itself; rounding them to 16 bits changes the model.
            warnings.append(f"{name}: fake-quantized PyTorch models run in fp32; torch_dtype {dtype.value} not applied")
            dtype = TorchDtype.FP32
    else:
        precision = dtype.value
    return Variant(
        name,
        artifact,
        "torch",
        precision,
        dir_size_mb(sorted(artifact.path.glob("*.safetensors"))),
        names,
        torch_runner(artifact, config.provider, config.threads, dtype),
        tokenizer,
        label2id,
        warnings,
        task=_task(artifact.path),
        provider=config.provider if config.provider.gpu else Provider.CPU,  # PyTorch runs OpenVINO's rows on the CPU
    )


SATURATION_EXAMPLES = 64  # eval examples the emulator check runs per int8 variant (a few seconds for MiniLM)


def int8_saturation(variant: Variant, feeds: dict[str, np.ndarray]) -> dict[str, Any] | None:
    """For an int8 ONNX variant: whether its u8×s8 matmuls saturate under AVX2-class kernels on real eval
    examples, and whether this CPU runs such kernels (None for other variants)."""
    from llmzip.onnx.saturation import saturation_check
    from llmzip.runtime import hardware

    if variant.kind != "onnx" or variant.onnx_path is None or not variant.precision.startswith("int8"):
        return None
    n = min(SATURATION_EXAMPLES, next(iter(feeds.values())).shape[0])
    batches = [{k: v[i : min(i + 32, n)] for k, v in feeds.items()} for i in range(0, n, 32)]
    check = saturation_check(variant.onnx_path, batches)
    here = hardware.this_cpu()
    check.pop("nodes")
    return {
        "this_cpu": here.value if here else None,
        "saturates_here": bool(here is not None and hardware.saturates(here) and check["saturating_matmuls"]),
        **check,
    }


def ort_dynamic_int8(source: Path, target: Path) -> Path:
    """onnxruntime's own dynamic int8 (quantize_dynamic, per-channel s8 weights): the off-the-shelf baseline."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), per_channel=True, weight_type=QuantType.QInt8)
    return target


def onnx_precision(path: Path) -> str:
    """int8 / int4-weight-only / fp32, read from the graph's ops (never from the file name)."""
    import onnx

    ops = {node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node}
    if ops & INT4_OPS:
        return "int4-weight-only"
    return "int8" if ops & INT8_OPS else "fp32"


def onnx_file_variant(
    path: Path, *, tokenizer_dir: Path, name: str, config: BenchConfig, precision: str | None = None
) -> Variant:
    """A bare .onnx file (no llmzip manifest, e.g. onnxruntime's quantize_dynamic output) with a tokenizer folder.

    Labels come from `tokenizer_dir/config.json` when it has one; precision from the graph unless given.
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such ONNX file")
    run, inputs = session_runner(path, config)
    return Variant(
        name,
        Artifact(path=path, stage=EXTERNAL),
        "onnx",
        precision or onnx_precision(path),
        onnx_size_mb(path),
        inputs,
        run,
        load_tokenizer(tokenizer_dir),
        _label2id(Path(tokenizer_dir)),
        onnx_path=path,
        task=_task(Path(tokenizer_dir)),
        **_placement(config),
    )
