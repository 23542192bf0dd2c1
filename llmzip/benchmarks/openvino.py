"""`make bench-openvino`: the reference teacher on onnxruntime's CPU provider and on the OpenVINO plugin EP.

Models: the teacher's fp32 export, llmzip int8 (bias-folded, the default) and llmzip int8 as plain QDQ
(`export --plain-qdq`), and onnxruntime's `quantize_dynamic` of the fp32 export (the one-line peer). Each runs on the
CPU provider, on OpenVINO at f32 (the graph's own precision) and on OpenVINO at bf16 (its INFERENCE_PRECISION_HINT:
fast where the CPU has AMX/AVX512-BF16, emulated and slow elsewhere) — every (model, runtime) pair is one variant of
one round-robin run, so they share the machine's noise. SST-2 test accuracy per row, and how far each row's logits
are from the same model on the CPU provider. Needs `pip install 'llmzip[openvino]'`; without the plugin the command
says so in one line and exits 0 (nothing to measure).
`python -m llmzip.benchmarks.openvino [--quick] [--out runs/bench-openvino] [--threads 1]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from llmzip.bench.variants import ort_dynamic_int8
from llmzip.benchmarks.common import SST2, TEACHER, build_llmzip_int8, require_shared, write_json
from llmzip.config import BenchConfig, DataConfig, EpPrecision, ExportConfig, Provider
from llmzip.errors import ProviderError
from llmzip.progress import console
from llmzip.stages.bench import Variant, eval_inputs, load_eval_data, load_variant, measure, onnx_file_variant

RUNTIMES = [("cpu", Provider.CPU, EpPrecision.F32), ("ov-f32", Provider.OPENVINO, EpPrecision.F32)]
RUNTIMES.append(("ov-bf16", Provider.OPENVINO, EpPrecision.BF16))


def build(out: Path, quick: bool) -> dict[str, Path]:
    from llmzip.stages.export import export

    fp32 = export(TEACHER, out / "teacher-fp32", config=ExportConfig(), overwrite=True)
    folded = build_llmzip_int8(out, quick)
    plain_dir = out / "llmzip-int8-plain-qdq"
    export(out / "llmzip-int8-model", plain_dir, config=ExportConfig(fold_bias=False), overwrite=True)
    return {
        "teacher-fp32": fp32 / "model.onnx",
        "llmzip-int8": folded / "model.onnx",
        "llmzip-int8-plain-qdq": plain_dir / "model.onnx",
        "ort-dynamic-int8": ort_dynamic_int8(fp32 / "model.onnx", out / "ort-dynamic-int8.onnx"),
    }


def variants_for(models: dict[str, Path], config: BenchConfig) -> list[Variant]:
    out = [load_variant(_artifact(TEACHER), "torch-fp32", dataclasses.replace(config, provider=Provider.CPU))]
    for runtime, provider, precision in RUNTIMES:
        placed = dataclasses.replace(config, provider=provider, ep_precision=precision)
        for model, path in models.items():
            out.append(onnx_file_variant(path, tokenizer_dir=TEACHER, name=f"{model}@{runtime}", config=placed))
    return out


def _artifact(path: Path) -> Any:
    from llmzip.artifact import EXTERNAL, Artifact

    return Artifact(path=path, stage=EXTERNAL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", default=os.environ.get("BENCH_QUICK") == "1")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-openvino"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    require_shared()
    from llmzip.runtime.sessions import openvino_cpu

    try:
        openvino_cpu()
    except ProviderError as err:
        console.print(f"bench-openvino skipped: {err}")
        return
    started = time.time()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    console.rule("[bold]building the models")
    models = build(out, args.quick)
    data = DataConfig(dataset=str(SST2 / "test.tsv"), max_eval_samples=64 if args.quick else None)
    iterations, warmup = (5, 1) if args.quick else (40, 5)
    config = BenchConfig(data=data, batch_sizes=[1, 8], seq_len=128, threads=args.threads, warmup=warmup,
                         iterations=iterations)  # fmt: skip
    console.rule("[bold]measuring every model on every runtime, round-robin")
    variants = variants_for(models, config)
    eval_ds, source = load_eval_data(config)
    inputs = [eval_inputs(v, eval_ds, config) for v in variants]
    result = measure(variants, [f for f, _ in inputs], config, labels=[y for _, y in inputs], saturation=False)
    drift = logit_drift(variants, inputs[0][0])
    for row in result["variants"]:
        row["max_abs_logit_diff_vs_cpu"] = drift.get(row["name"])
    report = {
        "machine": result["machine"],
        "data": {**source.describe(), "split": "test"},
        "teacher": str(TEACHER),
        "runtimes": {name: {"provider": p.value, "precision": e.value} for name, p, e in RUNTIMES},
        "variants": result["variants"],
        "warnings": result["warnings"],
        "wall_s": round(time.time() - started, 1),
        "quick": args.quick,
    }
    write_json(out / "results.json", report)
    render(report)


def logit_drift(variants: list[Variant], feeds: dict[str, np.ndarray], rows: int = 64) -> dict[str, float]:
    """Max |logit − the same model's logits on the CPU provider| over the first eval rows."""
    sample = {k: v[:rows] for k, v in feeds.items()}
    reference = {v.name.split("@")[0]: v.run(sample) for v in variants if v.name.endswith("@cpu")}
    return {
        v.name: round(float(np.abs(v.run(sample) - reference[v.name.split("@")[0]]).max()), 5)
        for v in variants
        if "@" in v.name
    }


def render(report: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"bench-openvino: {report['machine'].get('cpu', '?')}, SST-2 test")
    for column in ("variant", "provider", "precision", "batch", "p50 ms", "speedup vs torch", "accuracy", "Δlogit"):
        table.add_column(column)
    for v in report["variants"]:
        table.add_row(
            v["name"],
            v["provider"],
            v.get("ep_precision") or v["precision"],
            f"{v['batch']}×{v['seq_len']}",
            f"{v['latency_ms']['p50']:.2f}",
            f"{v['speedup_vs_baseline']:.2f}",
            f"{v['accuracy']:.4f}" if v["accuracy"] is not None else "—",
            str(v.get("max_abs_logit_diff_vs_cpu", "—")),
        )
    console.print(table)


if __name__ == "__main__":
    main()
