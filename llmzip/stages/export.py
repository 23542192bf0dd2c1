"""export: fp32 or quantized model directory → model.onnx, checked against PyTorch and for real int8 kernels."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from llmzip.artifact import EXTERNAL, carry_forward, dir_size_mb, open_artifact, write_manifest
from llmzip.config import CpuTarget, ExportConfig, Provider, Target, as_enum, to_dict
from llmzip.data import data_paths
from llmzip.errors import ExportError
from llmzip.metrics import IGNORED
from llmzip.modeling import load_model, load_tokenizer, source_config
from llmzip.onnx.export import (
    INT8_OPS,
    float_weight_matmuls,
    for_export,
    input_names,
    optimized_graph,
    write_onnx,
)
from llmzip.onnx.graph import fold_int8_matmul_bias, inline_constant_identities
from llmzip.onnx.lm_export import export_causal_lm
from llmzip.outputs import staging
from llmzip.positions import check_length, max_tokens
from llmzip.progress import quiet_libraries, step
from llmzip.quant.calibration import SAMPLES_FILE, read_samples
from llmzip.quant.saturation import target_report
from llmzip.runtime import hardware, tensorrt
from llmzip.tasks import Task, TaskKind, checked_task

ACCEPTS = ("finetune", "distill", "quantize", EXTERNAL)
ONNX_FILE = "model.onnx"


def probe_rows(directory: Path, task: Task, count: int) -> list[dict[str, Any]]:
    """Parity inputs: the calibration samples a quantized model carries, else the demo sample's sentences (in the
    task's row form)."""
    if (directory / SAMPLES_FILE).is_file():
        return read_samples(directory)[:count]
    from llmzip.data import DEMO_DATASET

    lines = (DEMO_DATASET / "validation.tsv").read_text().splitlines()[1:]
    return task.probe_rows([line.split("\t")[0] for line in lines][:count])


def _mismatch(result: dict[str, float], tolerance: float, kernels: dict[str, Any] | None, model_dir: Path) -> str:
    """The one-line error for an ONNX/PyTorch mismatch: this CPU's saturating int8 kernel, or a bug."""
    head = f"ONNX logits differ from PyTorch by {result['max_abs_diff']:.3g} (> tolerance {tolerance})"
    explained = result.get("max_abs_diff_vs_this_cpu_kernel")
    if kernels is not None and explained is not None and explained <= tolerance:
        here = kernels["targets"][kernels["this_cpu"]]
        return (
            f"{head} because this CPU ({kernels['this_cpu']}, no VNNI) adds int8 products in saturating int16 pairs: "
            f"{here['saturating_matmuls']} matmuls saturate on the probe sentences of a model quantized for "
            f"--target-cpu {kernels['quantized_for']}; re-run `llmzip quantize` with --target-cpu any (the default) "
            "or export on a VNNI/AMX machine"
        )
    return f"{head}; this is a bug: report it with the manifest of {model_dir}"


def real_positions(logits: np.ndarray, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """Per-token logits ([batch, tokens, classes]) at the real tokens only, as [real tokens, classes]: a padding
    position's output is never read (and its int8 activations were never calibrated), so it is not compared."""
    if logits.ndim != 3 or "attention_mask" not in feeds:
        return logits
    return logits[feeds["attention_mask"].astype(bool)]


def parity(
    onnx_path: Path, model: nn.Module, feeds: dict[str, np.ndarray], provider: Provider = Provider.CPU
) -> tuple[dict[str, float], np.ndarray]:
    from llmzip.runtime.sessions import session as ort_session

    session = ort_session(onnx_path, provider=provider)
    got = session.run([session.get_outputs()[0].name], feeds)[0]  # the task's first output (logits)
    with torch.no_grad():
        want = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()
    got, want = real_positions(got, feeds), real_positions(want, feeds)
    for side, logits in (("onnxruntime", got), ("PyTorch", want)):
        if not np.isfinite(logits).all():  # NaN would pass `diff > tolerance`: refuse it explicitly
            raise ExportError(f"{side} returns NaN/Inf logits on the probe sentences; the model is not usable")
    diff = np.abs(got - want)
    cos = float((got * want).sum() / (np.linalg.norm(got) * np.linalg.norm(want) + 1e-12))
    return {
        "max_abs_diff": float(diff.max()),
        "max_abs_logit": float(np.abs(want).max()),
        "mean_abs_diff": float(diff.mean()),
        "cosine": cos,
        "argmax_agreement": float((got.argmax(-1) == want.argmax(-1)).mean()),
        "samples": int(next(iter(feeds.values())).shape[0]),
    }, got


def task_accuracy(
    onnx_path: Path, model: Any, tokenizer: Any, names: list[str], config: ExportConfig, task: Task
) -> dict[str, Any]:
    """The task metric (accuracy, entity F1) of onnxruntime and of PyTorch on the eval split, and how often their
    predictions agree."""
    from llmzip import data as data_mod
    from llmzip.runtime.sessions import session as ort_session

    d = config.data
    loaded = data_mod.load_split(d, d.eval_split, limit=d.max_eval_samples)
    assert loaded is not None
    label2id = {str(k): int(v) for k, v in (model.config.label2id or {}).items()}
    id2label = {v: k for k, v in label2id.items()}
    check_length(model.config, d.max_length, "--max-length", "the model")
    enc = task.encode(tokenizer, loaded[0], d, label2id, max_length=d.max_length, padding=False)
    session = ort_session(onnx_path, provider=config.provider)
    got, want, labels = [], [], []
    for i in range(0, len(enc), 64):
        rows = enc[i : i + 64]
        padded = tokenizer.pad({k: rows[k] for k in names}, return_tensors="np")
        feeds = {k: padded[k].astype(np.int64) for k in names}
        got.append(session.run([session.get_outputs()[0].name], feeds)[0])
        with torch.no_grad():
            want.append(model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy())
        labels.append(_padded_labels(rows["labels"], feeds[names[0]].shape[1]))
    agree = np.concatenate([task.predictions(a, y) == task.predictions(b, y) for a, b, y in zip(got, want, labels)])
    return {
        "metric": task.metric,
        "onnx": round(task.score(got, labels, id2label), 4),
        "pytorch": round(task.score(want, labels, id2label), 4),
        "prediction_agreement": round(float(agree.mean()), 4),
        "samples": len(enc),
        "split": d.eval_split,
        "data": loaded[1].describe(),
    }


def _padded_labels(labels: list[Any], width: int) -> np.ndarray:
    """One label per example as is; one per token (a list each) right-padded with the ignored label to `width`."""
    if not labels or not isinstance(labels[0], list):
        return np.asarray(labels)
    out = np.full((len(labels), width), IGNORED, dtype=np.int64)
    for i, row in enumerate(labels):
        out[i, : len(row)] = row
    return out


def _finish(
    tmp: Path,
    source: Any,
    tokenizer: Any,
    config: ExportConfig,
    metrics: dict[str, Any],
    started: float,
    task: TaskKind,
    inputs: list[str],
) -> None:
    """Tokenizer and config beside the graph, its size, then the manifest (last: its file table covers all)."""
    tokenizer.save_pretrained(str(tmp))
    carry_forward(source.path, tmp, config=source_config(source.path))
    metrics["size_mb"] = dir_size_mb([p for p in tmp.iterdir() if p.name.startswith(ONNX_FILE)])
    write_manifest(
        tmp,
        stage="export",
        parents=[source],
        inputs={},
        config=to_dict(config),
        metrics=metrics,
        seed=config.seed,
        started=started,
        extra={"task": task.value, "model_file": ONNX_FILE, "inputs": inputs},
    )


def _export_lm(
    model: Any,
    tokenizer: Any,
    source: Any,
    tmp: Path,
    config: ExportConfig,
    started: float,
    attention: str,
    task: TaskKind,
) -> None:
    """A causal LM: one graph with a KV cache (llmzip/onnx/lm_export.py), checked on prefill and decode steps."""
    quantized = source.stage == "quantize"
    measured = source.manifest["metrics"] if quantized else {}
    weight_bits = int(measured.get("weight_bits") or 8) if quantized else 32
    path = tmp / ONNX_FILE
    precision = f"int{weight_bits}-weight-only" if quantized else "fp32"
    if measured.get("source_types"):  # a GGUF source's own blocks: say which
        precision = "gguf-exact (" + ", ".join(f"{t}×{n}" for t, n in measured["source_types"].items()) + ")"
    step(f"exporting {precision} ONNX with a KV cache")
    metrics = export_causal_lm(
        model,
        path,
        source=source.path,
        tokenizer=tokenizer,
        config=config,
        quantized=quantized,
        weight_bits=weight_bits,
    )
    metrics.update(precision=precision, attention_implementation=attention)
    _finish(tmp, source, tokenizer, config, metrics, started, task, metrics["signature"]["inputs"])


def export(model_dir: Path, out_dir: Path, *, config: ExportConfig, overwrite: bool = False) -> Path:
    """Write `model.onnx` (dynamic batch and sequence axes) and record parity with the PyTorch model."""
    import onnx

    started = time.time()
    source = open_artifact(Path(model_dir), verb="export", accepts=ACCEPTS, role="model directory")
    quantized = source.stage == "quantize"
    quiet_libraries()
    task = checked_task(config, source_config(source.path), model_dir)
    target = _target(source, config, task.generative)
    with staging(out_dir, overwrite=overwrite, inputs=[source.path, *data_paths(config.data)]) as tmp:
        step(f"loading {model_dir}")
        model = load_model(source)
        attention = for_export(model)
        tokenizer = load_tokenizer(source.path)
        if task.generative:  # a decoder: one graph with a KV cache
            _export_lm(model, tokenizer, source, tmp, config, started, attention, task.kind)
            return out_dir
        names = input_names(tokenizer)
        rows = probe_rows(source.path, task, config.parity_samples)
        probe_length = min(128, max_tokens(model.config) or 128)
        enc = task.batches(tokenizer, rows, max_length=probe_length, batch_size=len(rows))[0]
        feeds = {n: enc[n].numpy().astype(np.int64) for n in names}
        path = tmp / ONNX_FILE
        step(f"exporting {'quantized' if quantized else 'fp32'} ONNX (opset {config.opset})")
        write_onnx(model, names, feeds, path, opset=config.opset, source=model_dir, outputs=task.onnx_outputs())
        try:
            onnx.checker.check_model(str(path))
        except onnx.checker.ValidationError as err:
            raise ExportError(f"the exported graph fails onnx.checker: {str(err).splitlines()[0]}") from None
        written = _for_target(path, target, config, quantized)
        parity_block, kernels = _checked_parity(path, model, feeds, source, config, Path(model_dir), target)
        if config.eval_accuracy:
            step(f"task {task.metric} of onnxruntime and PyTorch on {config.data.eval_split}")
            parity_block["task_accuracy"] = task_accuracy(path, model, tokenizer, names, config, task)
        metrics: dict[str, Any] = {
            "parity": parity_block,
            **_runtime_graph(path, source, target, config.fp16),
            "attention_implementation": attention,
            **({"int8_kernels_by_cpu": kernels} if kernels is not None else {}),
            **written,
        }
        _finish(tmp, source, tokenizer, config, metrics, started, task.kind, names)
    return out_dir


def _target(source: Any, config: ExportConfig, generative: bool) -> Target:
    """The runtime the graph is written for: as asked, else what the model was quantized for (checked before any
    work)."""
    quantized_for = Target(source.manifest.get("metrics", {}).get("target", Target.ONNXRUNTIME.value))
    target = config.target or (quantized_for if source.stage == "quantize" else Target.ONNXRUNTIME)
    if source.stage == "quantize" and target is not quantized_for:
        raise ExportError(
            f"{source.path} was quantized for {quantized_for.value}; re-run `llmzip quantize --target "
            f"{target.value}` (the zero points and activation types differ), or drop --target"
        )
    if generative and (target is Target.TENSORRT or config.fp16):
        raise ExportError("causal LMs export for onnxruntime (a KV-cache graph) only; drop --target/--fp16")
    if config.fp16 and source.stage == "quantize":
        raise ExportError(f"{source.path} is quantized: --fp16 converts float models only; export its fp32 parent")
    return target


def _for_target(path: Path, target: Target, config: ExportConfig, quantized: bool) -> dict[str, Any]:
    """The written graph made right for its runtime: onnxruntime's bias folding (int8 for onnxruntime), float16
    (--fp16), or TensorRT's explicit-quantization rules checked (refused with the first broken rule)."""
    import onnx

    out: dict[str, Any] = {"target": target.value, "bias_folded_matmuls": 0}
    if quantized and config.fold_bias and target is Target.ONNXRUNTIME:
        graph = onnx.load(str(path))
        out["bias_folded_matmuls"] = fold_int8_matmul_bias(graph)
        onnx.save(graph, str(path))
    if config.fp16:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        step("converting the graph to float16 (inputs and outputs unchanged)")
        onnx.save(convert_float_to_float16(onnx.load(str(path)), keep_io_types=True), str(path))
    if target is Target.TENSORRT:
        graph = onnx.load(str(path))
        inline_constant_identities(graph.graph)
        onnx.save(graph, str(path))
        step("checking the graph against TensorRT's explicit-quantization rules")
        out["tensorrt_check"] = check = tensorrt.check_file(path)
        if not check["passed"]:
            raise ExportError(
                f"{len(check['rejected'])} nodes break TensorRT's explicit-quantization rules (first: "
                f"{check['rejected'][0]}); quantize with --target tensorrt, or report it with the manifest"
            )
    return out


def _checked_parity(
    path: Path,
    model: Any,
    feeds: dict[str, np.ndarray],
    source: Any,
    config: ExportConfig,
    model_dir: Path,
    target: Target,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """ONNX vs PyTorch logits on the probe rows, within tolerance; for int8, what each CPU class's kernel does."""
    quantized = source.stage == "quantize"
    step("checking onnxruntime against PyTorch")
    result, got = parity(path, model, feeds, config.provider)
    scale = max(1.0, result["max_abs_logit"])
    tolerance = config.fp32_tolerance
    if quantized or config.fp16:
        relative = config.fp16_tolerance
        if quantized:
            default = 0.10 if target is Target.TENSORRT else 0.05
            relative = default if config.int8_tolerance is None else config.int8_tolerance
        tolerance = round(relative * scale, 6)
    kernels: dict[str, Any] | None = None
    if quantized:
        step("emulating each CPU class's int8 kernel on the probe sentences")
        kernels, emulated = target_report(
            model,
            [{k: torch.from_numpy(v) for k, v in feeds.items()}],
            # Typed back from the manifest; one written before --target-cpu existed was quantized without the
            # saturation fix, i.e. for VNNI-class CPUs.
            as_enum(CpuTarget, source.manifest["metrics"].get("target_cpu", CpuTarget.VNNI.value), "target_cpu"),
        )
        here = hardware.this_cpu()
        kernels["this_cpu"] = here.value if here else None
        if here is not None and hardware.saturates(here):
            result["max_abs_diff_vs_this_cpu_kernel"] = float(
                np.abs(got - real_positions(emulated.numpy(), feeds)).max()
            )
    if result["max_abs_diff"] > tolerance:
        raise ExportError(_mismatch(result, tolerance, kernels, model_dir))
    reference = "fake-quantized PyTorch model" if quantized else "fp32 PyTorch model"
    if config.fp16:
        reference += " (graph in float16)"
    return {**result, "tolerance": tolerance, "reference": reference}, kernels


def _runtime_graph(path: Path, source: Any, target: Target, fp16: bool) -> dict[str, Any]:
    """The graph onnxruntime actually runs: its ops, and (int8) that every quantized layer became an integer kernel and
    no constant-weight fp32 MatMul is left beyond the layers quantize kept fp32.

    A tensorrt-target graph is written for TensorRT: on the CPU provider, onnxruntime turns an int8 activation into
    uint8 for its integer kernels only where one GEMM reads it (its QDQ s8→u8 pass wants a single reader), so the
    three projections reading one LayerNorm output (Q, K, V) run as float GEMMs on dequantized weights there —
    the same numbers, at float speed. That is recorded, not refused.
    """
    import onnx

    quantized = source.stage == "quantize"
    graph_ops = Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)
    runtime = optimized_graph(path)
    runtime_ops = Counter(n.op_type for n in runtime.node)
    float_linears = float_weight_matmuls(runtime)
    int8_kernels = sum(c for op, c in runtime_ops.items() if op in INT8_OPS)
    weight_bits = source.manifest["metrics"].get("weight_bits", 8) if quantized else 32
    out: dict[str, Any] = {
        "precision": "fp16" if fp16 else {32: "fp32", 8: "int8", 4: "int4-weight-only"}[weight_bits],
        "graph_ops": dict(sorted(graph_ops.items())),
        "runtime_ops": dict(sorted(runtime_ops.items())),
        "int8_kernels": int8_kernels,
        "float_weight_matmuls": len(float_linears),
    }
    if not quantized:
        return out
    q = source.manifest["metrics"]
    expected = int(q["quantized_layers"]) + int(q.get("quantized_attention_matmuls", 0))
    out["quantized_layers"] = expected
    if target is Target.TENSORRT:
        out["cpu_provider_int8_kernels"] = f"{int8_kernels} of {expected} (the rest: float GEMMs on the same codes)"
        return out
    if int8_kernels < expected:
        raise ExportError(
            f"onnxruntime runs only {int8_kernels} int8 kernels for {expected} quantized layers and matmuls: "
            "the QDQ pattern did not fuse; report it with the manifest"
        )
    kept = int(q.get("fp32_linear_layers", 0))
    if len(float_linears) > kept:
        raise ExportError(
            f"onnxruntime runs {len(float_linears)} fp32 MatMuls with constant weights where quantize kept "
            f"{kept} layers fp32 (e.g. {float_linears[0]}): int8 was asked for; report it with the manifest"
        )
    return out
