"""`make bench-speed`: llmzip int8 vs the off-the-shelf int8 recipes and PyTorch, on the reference teacher.

Variants (names fixed by the issue): torch-fp32, torch-bf16, ort-fp32 (llmzip's plain export), ort-dynamic-int8
(onnxruntime quantize_dynamic, per-channel, on that same export), optimum-dynamic-int8 (optimum's own export and
default dynamic int8, built in a separate venv because optimum pins an older transformers), llmzip-int8. Shapes
1×32, 1×128 and 8×128 at 1 and 2 threads; accuracy on all of SST-2 test.tsv once per variant. Every
(shape, threads) cell is one round-robin `measure` run, so the variants share the machine's noise. A per-op
profile of the ONNX variants splits GEMM from everything else.
`python -m llmzip.benchmarks.speed [--quick] [--out runs/bench-speed] [--threads 1,2]`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from llmzip.artifact import EXTERNAL, Artifact, open_artifact
from llmzip.bench.variants import ort_dynamic_int8
from llmzip.benchmarks.common import (
    LLMZIP_QUANT,
    OPTIMUM_VENV,
    REPO,
    SST2,
    TEACHER,
    build_llmzip_int8,
    ensure_optimum_venv,
    optimum_load_check,
    require_shared,
    write_json,
)
from llmzip.config import BenchConfig, DataConfig, ExportConfig
from llmzip.progress import console, stdout_console
from llmzip.stages.bench import Variant, eval_inputs, load_eval_data, load_variant, measure, onnx_file_variant
from llmzip.stages.export import export

SHAPES = [(32, [1]), (128, [1, 8])]  # (seq_len, batch sizes)
# Kernels that are matrix products; everything else (quantize, layer norm, softmax, GELU, reshapes) is "other".
GEMM_OPS = {
    "MatMul",
    "FusedMatMul",
    "Gemm",
    "FusedGemm",
    "MatMulInteger",
    "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul",
    "QLinearMatMul",
    "QGemm",
    "MatMulNBits",
}


def build_optimum(out: Path) -> tuple[Path | None, str]:
    """optimum's default dynamic int8 in its own venv; (None, why) when that venv cannot be built here."""
    target = out / "optimum-dynamic-int8"
    why = ensure_optimum_venv()
    if why is not None:
        return None, f"optimum baseline not built: {why}"
    try:
        subprocess.run(
            [
                str(OPTIMUM_VENV / "bin/python"),
                str(REPO / "benchmarks/optimum/optimum_int8.py"),
                "quantize",
                str(TEACHER),
                str(target),
                "--overwrite",
            ],
            check=True,
            capture_output=True,
            text=True,
        )
    except subprocess.CalledProcessError as err:
        last = (err.stderr or err.stdout or "").strip().splitlines()[-1:] or ["no output"]
        return None, f"optimum baseline not built: {' '.join(err.cmd[:2])} failed: {last[0][:200]}"
    return target / "model_quantized.onnx", "optimum-onnx in .venv-optimum (benchmarks/optimum/requirements.txt)"


def variants_for(paths: dict[str, Any], config: BenchConfig) -> list[Variant]:
    """Fresh variants (sessions are built for config.threads); the first is the fp32 PyTorch baseline."""
    teacher = Artifact(path=TEACHER, stage=EXTERNAL)
    out = [
        load_variant(teacher, "torch-fp32", config, torch_dtype="fp32"),
        load_variant(teacher, "torch-bf16", config, torch_dtype="bf16"),
        load_variant(open_artifact(paths["ort-fp32"], verb="bench", accepts=("export",)), "ort-fp32", config),
        onnx_file_variant(paths["ort-dynamic-int8"], tokenizer_dir=TEACHER, name="ort-dynamic-int8", config=config),
    ]
    if paths.get("optimum-dynamic-int8") is not None:
        out.append(
            onnx_file_variant(
                paths["optimum-dynamic-int8"], tokenizer_dir=TEACHER, name="optimum-dynamic-int8", config=config
            )
        )
    out.append(
        load_variant(open_artifact(paths["llmzip-int8"], verb="bench", accepts=("export",)), "llmzip-int8", config)
    )
    return out


def op_profile(path: Path, feeds: dict[str, np.ndarray], *, threads: int, runs: int) -> dict[str, Any]:
    """Per-op-type kernel time from onnxruntime's profiler (ms per inference), split GEMM vs other."""
    from llmzip.runtime.sessions import session as ort_session

    session = ort_session(path, threads=threads, profile_prefix=str(path.parent / f".profile-{path.stem}"))
    names = {i.name for i in session.get_inputs()}
    feeds = {k: v for k, v in feeds.items() if k in names}
    for _ in range(3):
        session.run(None, feeds)
    walls = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, feeds)
        walls.append((time.perf_counter() - t0) * 1e3)
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    per_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e["args"]["op_name"]
            per_op[op] = per_op.get(op, 0.0) + e["dur"] / 1e3 / (runs + 3)
    gemm = sum(v for k, v in per_op.items() if k in GEMM_OPS)
    other = sum(v for k, v in per_op.items() if k not in GEMM_OPS)
    wall = float(np.median(walls))
    return {
        "latency_ms_median": round(wall, 3),
        "gemm_ms": round(gemm, 3),
        "other_kernels_ms": round(other, 3),
        "latency_over_gemm": round(wall / gemm, 2) if gemm else None,
        "ops_ms": {k: round(v, 3) for k, v in sorted(per_op.items(), key=lambda kv: -kv[1])},
    }


def targets(rows: list[dict[str, Any]], profile: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, computed from this run's medians (threads 1)."""
    cell = {(r["name"], r["batch"], r["seq_len"], r["threads"]): r for r in rows}
    fp32_acc = next(r["accuracy"] for r in rows if r["name"] == "ort-fp32")
    out: dict[str, Any] = {}
    for batch, seq in ((1, 128), (8, 128)):
        mine = cell[("llmzip-int8", batch, seq, 1)]["latency_ms"]["p50"]
        peers = {
            n: cell[(n, batch, seq, 1)]["latency_ms"]["p50"]
            for n in ("ort-dynamic-int8", "optimum-dynamic-int8")
            if (n, batch, seq, 1) in cell
        }
        best_peer = min(peers, key=lambda n: peers[n])
        bf16 = cell[("torch-bf16", batch, seq, 1)]["latency_ms"]["p50"]
        out[f"{batch}x{seq}"] = {
            "speedup_vs_best_dynamic_peer": round(peers[best_peer] / mine, 3),
            "best_dynamic_peer": best_peer,
            "met_1.3x": peers[best_peer] / mine >= 1.3,
            "speedup_vs_torch_bf16": round(bf16 / mine, 3),
            "faster_than_torch_bf16": mine < bf16,
        }
    acc = next(r["accuracy"] for r in rows if r["name"] == "llmzip-int8")
    out["accuracy_drop_pt"] = round(100 * (fp32_acc - acc), 2)
    out["accuracy_within_0.5pt"] = 100 * (fp32_acc - acc) <= 0.5
    ratios = {k: v["llmzip-int8"]["latency_over_gemm"] for k, v in profile.items() if "llmzip-int8" in v}
    out["llmzip_latency_over_gemm"] = ratios
    out["met_latency_le_1.5x_gemm"] = all(r is not None and r <= 1.5 for r in ratios.values())
    return out


def agreement(first: Path, second: Path) -> dict[str, Any]:
    """Relative difference of every p50 between two results.json files (same variant, shape and threads)."""

    def cells(path: Path) -> dict[tuple[Any, ...], float]:
        rows = json.loads(path.read_text())["variants"]
        return {(r["name"], r["threads"], r["batch"], r["seq_len"]): r["latency_ms"]["p50"] for r in rows}

    a, b = cells(first), cells(second)
    diffs = {k: abs(a[k] - b[k]) / min(a[k], b[k]) for k in a.keys() & b.keys()}
    worst = max(diffs, key=lambda k: diffs[k])
    return {
        "cells": len(diffs),
        "max_rel_diff": round(diffs[worst], 4),
        "worst_cell": "/".join(map(str, worst)),
        "within_10pct": all(d <= 0.10 for d in diffs.values()),
        "threads_1_max_rel_diff": round(max(d for k, d in diffs.items() if k[1] == 1), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", default=os.environ.get("BENCH_QUICK") == "1")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-speed"))
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--skip-optimum", action="store_true", help="leave the optimum baseline out")
    parser.add_argument("--compare", nargs=2, type=Path, metavar="RESULTS", help="only compare two results.json")
    args = parser.parse_args()
    if args.compare:
        stdout_console().print_json(json.dumps(agreement(*args.compare)))
        return
    require_shared()
    started = time.time()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    console.rule("[bold]building the variants")
    paths: dict[str, Any] = {"ort-fp32": export(TEACHER, out / "ort-fp32", config=ExportConfig(), overwrite=True)}
    paths["ort-dynamic-int8"] = ort_dynamic_int8(paths["ort-fp32"] / "model.onnx", out / "ort-dynamic-int8.onnx")
    optimum_note = "left out (--skip-optimum)"
    if not args.skip_optimum:
        paths["optimum-dynamic-int8"], optimum_note = build_optimum(out)
    paths["llmzip-int8"] = build_llmzip_int8(out, args.quick)
    texts = [line.split("\t")[0] for line in (SST2 / "test.tsv").read_text().splitlines()[1:33]]
    optimum_check = optimum_load_check(paths["llmzip-int8"], out, texts) if OPTIMUM_VENV.exists() else None

    data = DataConfig(dataset=str(SST2 / "test.tsv"), max_eval_samples=64 if args.quick else None)
    iterations, warmup = (5, 1) if args.quick else (40, 5)
    threads = [int(t) for t in args.threads.split(",")]
    rows: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    accuracy: dict[str, float | None] = {}
    profile: dict[str, Any] = {}
    for n_threads in threads:
        for seq, batches in SHAPES:
            config = BenchConfig(
                data=data, batch_sizes=batches, seq_len=seq, threads=n_threads, warmup=warmup, iterations=iterations
            )
            console.rule(f"[bold]{'/'.join(map(str, batches))}×{seq}, {n_threads} thread(s)")
            variants = variants_for(paths, config)
            eval_ds, _ = load_eval_data(config)
            inputs = [eval_inputs(v, eval_ds, config) for v in variants]
            # Accuracy once per variant, at seq 128 (no SST-2 sentence is cut there); reused for every other cell.
            labels = [y for _, y in inputs] if not accuracy and seq == 128 else None
            result = measure(variants, [f for f, _ in inputs], config, labels=labels)
            if labels is not None:
                accuracy = {r["name"]: r["accuracy"] for r in result["variants"]}
            runs.append(result)
            if n_threads == threads[0]:
                for batch in batches:
                    key = f"{batch}x{seq}"
                    profile[key] = {}
                    for v, (feeds, _) in zip(variants, inputs):
                        if v.kind == "onnx":
                            sample = {k: np.ascontiguousarray(a[:batch]) for k, a in feeds.items()}
                            path = Path(v.artifact.path)
                            onnx = path if path.suffix == ".onnx" else path / "model.onnx"
                            profile[key][v.name] = op_profile(onnx, sample, threads=n_threads, runs=iterations)
    for result in runs:
        for row in result["variants"]:
            row["accuracy"] = accuracy.get(row["name"])
            rows.append(row)
    report = {
        "machine": runs[0]["machine"],
        "teacher": str(TEACHER),
        "eval": str(SST2 / "test.tsv"),
        "optimum": optimum_note,
        "optimum_loads_llmzip_int8_export": optimum_check,
        "llmzip_quantize": LLMZIP_QUANT,
        "baseline": "torch-fp32",
        "variants": rows,
        "cells": [
            {"config": r["config"], "cpu_load": r["machine"].get("cpu_load"), "warnings": r["warnings"]} for r in runs
        ],
        "profile": profile,
        "wall_s": round(time.time() - started, 1),
    }
    report["targets"] = targets(rows, profile) if not args.quick else None
    write_json(out / "results.json", report)
    write_markdown(report, runs, out)
    render(report)


def write_markdown(report: dict[str, Any], runs: list[dict[str, Any]], out: Path) -> None:
    """report.md (+ latency_vs_accuracy.png of the 1-thread ×128 cell): bench's report per cell, then the verdicts."""
    from llmzip.bench import report as bench_report

    main_cell = next(r for r in runs if r["config"]["threads"] == 1 and r["config"]["seq_len"] == 128)
    bench_report.write_report(main_cell, out)
    parts = [(out / "report.md").read_text()]
    parts += [
        bench_report.render_markdown(r).replace("# llmzip bench", "## Cell", 1) for r in runs if r is not main_cell
    ]
    parts.append(
        "## Profile (onnxruntime per-op, 1 thread)\n\n```json\n" + json.dumps(report["profile"], indent=1) + "\n```\n"
    )
    if report.get("targets"):
        parts.append("## Targets\n\n```json\n" + json.dumps(report["targets"], indent=1) + "\n```\n")
    (out / "report.md").write_text("\n".join(parts))


def render(report: dict[str, Any]) -> None:
    from rich.table import Table

    from llmzip.bench import report as bench_report

    table = Table(title=f"bench-speed: reference teacher, {report['machine'].get('cpu')}")
    for col in (
        "variant",
        "threads",
        "batch×seq",
        "p50 ms",
        "p90 ms",
        "IQR",
        "speedup vs torch-fp32",
        "MB",
        "accuracy",
    ):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for v in sorted(report["variants"], key=lambda r: (r["threads"], r["seq_len"], r["batch"])):
        lat = v["latency_ms"]
        speed = bench_report.speedup_text(v, report["baseline"])
        acc = v.get("accuracy")
        table.add_row(
            v["name"],
            str(v["threads"]),
            f"{v['batch']}×{v['seq_len']}",
            f"{lat['p50']:.2f}",
            f"{lat['p90']:.2f}",
            f"{lat['iqr']:.2f}",
            speed,
            f"{v['size_mb']:.1f}",
            "–" if acc is None else f"{acc:.4f}",
        )
    console_out = stdout_console()
    console_out.print(table)
    for key, variants in report["profile"].items():
        parts = [
            f"{n}: {p['latency_ms_median']:.2f} ms = GEMM {p['gemm_ms']:.2f} + other {p['other_kernels_ms']:.2f} "
            f"(×{p['latency_over_gemm']})"
            for n, p in variants.items()
        ]
        console_out.print(f"profile {key}, 1 thread: " + "; ".join(parts))
    if report.get("targets"):
        console_out.print_json(json.dumps(report["targets"]))
    console_out.print(f"optimum: {report['optimum']}")
    console_out.print(
        f"optimum's ORTModelForSequenceClassification on llmzip-int8: {report['optimum_loads_llmzip_int8_export']}"
    )


if __name__ == "__main__":
    main()
