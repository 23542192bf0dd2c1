"""The one place an onnxruntime session is made: provider (with a one-line error naming what this build has),
threads, logging, idle spinning, and the optimized-graph dump — for export's parity checks, bench, the causal-LM
runners, generate, the saturation and kernel checks alike, so `--provider` and thread settings mean the same
everywhere.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from llmzip.config import EpPrecision, Provider
from llmzip.errors import ModelError, ProviderError

ORT_PROVIDERS = {
    Provider.CPU: ["CPUExecutionProvider"],
    Provider.CUDA: ["CUDAExecutionProvider", "CPUExecutionProvider"],
    Provider.TENSORRT: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
OPENVINO_EXTRA = "pip install 'llmzip[openvino]' (the onnxruntime-ep-openvino plugin)"


@cache
def openvino_cpu() -> Any:
    """The OpenVINO plugin's CPU device, its library registered with onnxruntime once per process.

    A plugin EP (onnxruntime ≥ 1.23) is not in get_available_providers(): it is registered from its wheel's shared
    library and attached to a session by device, with its options (threads, precision) in `load_config`."""
    import onnxruntime as ort

    try:
        import onnxruntime_ep_openvino as plugin
    except ImportError:
        raise ProviderError(f"--provider openvino needs the OpenVINO plugin: {OPENVINO_EXTRA}") from None
    try:
        ort.register_execution_provider_library("openvino", plugin.get_library_path())
    except Exception as err:  # an onnxruntime too old for plugin EPs, or a plugin built for another one
        raise ProviderError(
            f"onnxruntime cannot load the OpenVINO plugin ({str(err)[:160]}); {OPENVINO_EXTRA}"
        ) from None
    devices = [
        d for d in ort.get_ep_devices() if d.ep_name == plugin.get_ep_name() and d.ep_metadata.get("ov_device") == "CPU"
    ]
    if not devices:
        raise ProviderError("the OpenVINO plugin found no CPU device here; use --provider cpu")
    return devices[0]


def openvino_options(threads: int | None, precision: EpPrecision) -> dict[str, str]:
    """OpenVINO's CPU plugin reads threads and precision from `load_config` (its `num_of_threads` option is not what
    the CPU plugin's stream executor uses)."""
    cpu: dict[str, str] = {"INFERENCE_PRECISION_HINT": precision.value}
    if threads is not None:
        cpu["INFERENCE_NUM_THREADS"] = str(threads)
    return {"load_config": json.dumps({"CPU": cpu})}


def providers(provider: Provider) -> list[str]:
    """The execution providers (with fallbacks) a session on `provider` uses; refused when this build lacks it."""
    import onnxruntime as ort

    if provider is Provider.OPENVINO:
        openvino_cpu()  # attached per session by device (see `session`)
        return ["OpenVINOExecutionProvider", "CPUExecutionProvider"]
    wanted = ORT_PROVIDERS[provider]
    available = ort.get_available_providers()
    if wanted[0] not in available:
        raise ProviderError(
            f"onnxruntime here has no {wanted[0]} (available: {', '.join(available)}); "
            "install the matching onnxruntime build or use --provider cpu"
        )
    return [p for p in wanted if p in available]


def session(
    model: Path | str | bytes,
    *,
    provider: Provider = Provider.CPU,
    threads: int | None = None,
    optimized_path: Path | None = None,
    optimize: bool = True,
    load_error: str | None = None,
    precision: EpPrecision = EpPrecision.F32,
    profile_prefix: str | None = None,
    provider_options: dict[str, str] | None = None,
    flush_denormals: bool = False,
) -> Any:
    """An InferenceSession on an ONNX file (or serialized model). `threads` sets intra-op threads (None: onnxruntime
    decides) with one inter-op thread and no idle spinning beyond one thread; `optimized_path` writes the graph
    onnxruntime really runs after its fusions; `optimize=False` runs the graph as written (no fusions: what a
    check of the graph's own numbers needs); `precision` is OpenVINO's inference precision; `profile_prefix` turns on
    onnxruntime's per-kernel profiler (its JSON lands at that prefix); `provider_options` configure the first provider
    (TensorRT's int8/fp16 flags and engine cache: llmzip/runtime/tensorrt.py); `load_error` turns a model that
    does not load into a one-line ModelError (else onnxruntime's own exception propagates)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if threads > 1:
            # onnxruntime's workers spin after each call by default. Timed round-robin beside other variants, that
            # spinning steals the cores the next variant's threads need (PyTorch fp32 at 1×32 on 2 threads
            # measured 87 ms beside spinning sessions vs 15 ms alone), so every session yields its cores when idle.
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if flush_denormals:  # its pool threads; the calling thread: hardware.denormals_flushed
        opts.add_session_config_entry("session.set_denormal_as_zero", "1")
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if optimized_path is not None:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = str(optimized_path)
    source = model if isinstance(model, bytes) else str(model)
    try:
        if provider is Provider.OPENVINO:
            opts.add_provider_for_devices([openvino_cpu()], openvino_options(threads, precision))
            return ort.InferenceSession(source, opts)  # nodes OpenVINO does not take fall back to the CPU EP
        chosen: list[Any] = list(providers(provider))
        if provider_options:
            chosen[0] = (chosen[0], provider_options)
        made = ort.InferenceSession(source, opts, providers=chosen)
    except ProviderError:
        raise
    except Exception as err:  # onnxruntime raises its own Fail/InvalidProtobuf/NoSuchFile types for one problem
        if load_error is None:
            raise
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ModelError(f"{model}: onnxruntime cannot load it ({first}); {load_error}") from None
    _check_placement(made, provider)
    return made


def _check_placement(made: Any, provider: Provider) -> None:
    """onnxruntime falls back to the next provider when one fails to start (a TensorRT provider whose libnvinfer is
    missing runs everything on CUDA, with a log line): a row labelled TensorRT must not silently be something else."""
    wanted = ORT_PROVIDERS.get(provider, [None])[0]
    active = made.get_providers()
    if wanted is not None and wanted not in active:
        raise ProviderError(
            f"onnxruntime could not start {wanted} (it fell back to {', '.join(active)}): check that its CUDA/"
            "TensorRT libraries are installed and on LD_LIBRARY_PATH, or use another --provider"
        )
