"""bench: model directories (ONNX and/or PyTorch) + eval data → latency, throughput, size and accuracy, side by side.

Variants are timed round-robin (one call each, order rotated every round) so that machine noise lands on all
of them alike instead of on whichever happened to run during a busy second.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmzip import data as data_mod
from llmzip.artifact import EXTERNAL, Artifact, dir_size_mb, open_artifact, staging, write_manifest
from llmzip.config import BenchConfig, Provider, to_dict
from llmzip.errors import ConfigError, ProviderError
from llmzip.machine import machine_info
from llmzip.modeling import load_model, load_tokenizer
from llmzip.progress import progress, quiet_libraries, step

ACCEPTS = ("finetune", "distill", "quantize", "export", EXTERNAL)
RESULTS_FILE = "results.json"
ORT_PROVIDERS = {
    Provider.CPU: ["CPUExecutionProvider"],
    Provider.CUDA: ["CUDAExecutionProvider", "CPUExecutionProvider"],
    Provider.TENSORRT: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}

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
    label2id: dict[str, int]


def ort_runner(path: Path, provider: Provider, threads: int) -> Runner:
    import onnxruntime as ort

    wanted = ORT_PROVIDERS[provider]
    available = ort.get_available_providers()
    if wanted[0] not in available:
        raise ProviderError(
            f"onnxruntime here has no {wanted[0]} (available: {', '.join(available)}); "
            f"install the matching onnxruntime build or use --provider cpu"
        )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=[p for p in wanted if p in available])

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        return session.run(["logits"], feeds)[0]

    return run


def torch_runner(artifact: Artifact, provider: Provider, threads: int) -> Runner:
    import torch

    torch.set_num_threads(threads)
    device = "cpu"
    if provider is not Provider.CPU:
        if not torch.cuda.is_available():
            raise ProviderError("PyTorch here has no CUDA device; use --provider cpu")
        device = "cuda"
    model = load_model(artifact)
    model.to(device)  # type: ignore[arg-type]  # transformers' wrapper of .to() has a wrong signature

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            out = model(**{k: torch.from_numpy(v).to(device) for k, v in feeds.items()}).logits
        return out.float().cpu().numpy()

    return run


def load_variant(artifact: Artifact, name: str, config: BenchConfig) -> Variant:
    tokenizer = load_tokenizer(artifact.path)
    model_config = json.loads((artifact.path / "config.json").read_text())
    label2id = {str(k): int(v) for k, v in (model_config.get("label2id") or {}).items()}
    if artifact.stage == "export":
        onnx_file = artifact.path / artifact.manifest.get("model_file", "model.onnx")
        files = [onnx_file, onnx_file.with_name(onnx_file.name + ".data")]
        return Variant(
            name,
            artifact,
            "onnx",
            artifact.manifest["metrics"].get("precision", "fp32"),
            dir_size_mb(files),
            list(artifact.manifest.get("inputs", [])),
            ort_runner(onnx_file, config.provider, config.threads),
            tokenizer,
            label2id,
        )
    names = [n for n in tokenizer.model_input_names if n in ("input_ids", "attention_mask", "token_type_ids")]
    precision = "int8-fake-quant" if artifact.stage == "quantize" else "fp32"
    return Variant(
        name,
        artifact,
        "torch",
        precision,
        dir_size_mb(sorted(artifact.path.glob("*.safetensors"))),
        names,
        torch_runner(artifact, config.provider, config.threads),
        tokenizer,
        label2id,
    )


def variant_names(dirs: list[Path], names: list[str] | None) -> list[str]:
    if names:
        if len(names) != len(dirs):
            raise ConfigError(f"--name was given {len(names)} times for {len(dirs)} model directories; give one each")
        return names
    out = [d.name for d in dirs]
    return [f"{d.parent.name}/{d.name}" if out.count(d.name) > 1 else d.name for d in dirs]


def accuracy(variant: Variant, feeds: dict[str, np.ndarray], labels: np.ndarray, batch: int) -> float:
    correct = 0
    for i in range(0, len(labels), batch):
        logits = variant.run({k: v[i : i + batch] for k, v in feeds.items()})
        correct += int((logits.argmax(-1) == labels[i : i + batch]).sum())
    return correct / len(labels)


def _batch(feeds: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """The first `size` rows (repeated if the eval set is smaller): real text, real padding."""
    n = next(iter(feeds.values())).shape[0]
    idx = np.arange(size) % n
    return {k: np.ascontiguousarray(v[idx]) for k, v in feeds.items()}


def time_round_robin(
    variants: list[Variant], feeds: list[dict[str, np.ndarray]], config: BenchConfig, label: str
) -> list[np.ndarray]:
    """Latencies in ms, one array per variant; each round times every variant once, in a rotated order."""
    for v, f in zip(variants, feeds):
        for _ in range(config.warmup):
            v.run(f)
    times: list[list[float]] = [[] for _ in variants]
    with progress() as bar:
        task = bar.add_task(label, total=config.iterations, info="")
        for r in range(config.iterations):
            for j in range(len(variants)):
                k = (j + r) % len(variants)
                t0 = time.perf_counter()
                variants[k].run(feeds[k])
                times[k].append((time.perf_counter() - t0) * 1e3)
            bar.advance(task)
    return [np.asarray(t) for t in times]


def summary(ms: np.ndarray, batch: int) -> dict[str, Any]:
    p50, p90, p99 = (float(np.percentile(ms, q)) for q in (50, 90, 99))
    return {
        "latency_ms": {
            "p50": round(p50, 3),
            "p90": round(p90, 3),
            "p99": round(p99, 3),
            "mean": round(float(ms.mean()), 3),
            "std": round(float(ms.std()), 3),
            "iqr": round(float(np.percentile(ms, 75) - np.percentile(ms, 25)), 3),
        },
        "throughput": round(batch * len(ms) / (ms.sum() / 1e3), 2),
    }


def bench(
    model_dirs: list[Path],
    *,
    config: BenchConfig,
    names: list[str] | None = None,
    out_dir: Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Measure every model directory on the same data and machine; returns {machine, config, variants}."""
    started = time.time()
    if not model_dirs:
        raise ConfigError("bench needs at least one model directory")
    artifacts = [open_artifact(Path(d), verb="bench", accepts=ACCEPTS, role="model directory") for d in model_dirs]
    labels_for = variant_names([Path(d) for d in model_dirs], names)
    quiet_libraries()
    d = config.data
    loaded = data_mod.load_split(d, d.eval_split, limit=d.max_eval_samples)
    assert loaded is not None
    eval_ds, source = loaded
    machine = machine_info()
    variants, eval_feeds, accuracies = [], [], []
    for artifact, name in zip(artifacts, labels_for):
        step(f"loading {name} ({artifact.path})")
        variant = load_variant(artifact, name, config)
        enc = data_mod.encode(
            variant.tokenizer, eval_ds, d, variant.label2id, max_length=config.seq_len, padding="max_length"
        )
        feeds = {k: np.asarray(enc[k], dtype=np.int64) for k in variant.input_names}
        labels = np.asarray(enc["labels"])
        step(f"accuracy of {name} on {len(labels)} examples")
        accuracies.append(accuracy(variant, feeds, labels, batch=max(config.batch_sizes)))
        variants.append(variant)
        eval_feeds.append(feeds)
    results = []
    for batch in config.batch_sizes:
        batch_feeds = [_batch(f, batch) for f in eval_feeds]
        latencies = time_round_robin(variants, batch_feeds, config, f"latency batch {batch}×{config.seq_len}")
        for v, ms, acc in zip(variants, latencies, accuracies):
            results.append(
                {
                    "name": v.name,
                    "kind": v.kind,
                    "precision": v.precision,
                    "path": str(v.artifact.path),
                    "provider": config.provider.value,
                    "threads": config.threads,
                    "batch": batch,
                    "seq_len": config.seq_len,
                    **summary(ms, batch),
                    "size_mb": v.size_mb,
                    "accuracy": round(acc, 4),
                    "eval_samples": int(len(eval_ds)),
                }
            )
    machine["load_avg_1m_end"] = machine_info().get("load_avg_1m")
    result = {
        "machine": machine,
        "config": to_dict(config),
        "data": {**source.describe(), "split": d.eval_split},
        "baseline": variants[0].name,
        "variants": results,
    }
    add_speedups(result)
    if out_dir is not None:
        with staging(Path(out_dir), overwrite=overwrite) as tmp:
            (tmp / RESULTS_FILE).write_text(json.dumps(result, indent=2) + "\n")
            write_manifest(
                tmp,
                stage="bench",
                parents=artifacts,
                inputs={"eval": result["data"]},
                config=to_dict(config),
                metrics={"variants": len(results)},
                seed=config.seed,
                started=started,
            )
    return result


def add_speedups(result: dict[str, Any]) -> None:
    """p50 speedup of every variant over the baseline (the first directory) at the same batch size."""
    base = {v["batch"]: v["latency_ms"]["p50"] for v in result["variants"] if v["name"] == result["baseline"]}
    for v in result["variants"]:
        v["speedup_vs_baseline"] = (
            round(base[v["batch"]] / v["latency_ms"]["p50"], 3) if v["latency_ms"]["p50"] else None
        )
