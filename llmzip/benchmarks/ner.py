"""`make bench-ner`: token classification through the whole chain on CoNLL-2003, beside the tools a user would pick.

The reference encoder (../shared/models/minilm-l6-sst2, MiniLM-L6-H384, uncased) is fine-tuned into an NER teacher
(`finetune --task token-classification`), distilled into a shallower student (KD on the teacher's per-token
distributions + CE on the first sub-token of each word), calibrated, quantized to static int8 and exported. Rows:

- teacher-torch-fp32 (the baseline), teacher-ort-fp32 (llmzip's fp32 export), teacher-ort-dynamic-int8
  (onnxruntime's `quantize_dynamic` on that export: the one-line peer), student-torch-fp32, student-llmzip-int8.

Entity-level micro F1 (conlleval chunking, llmzip/metrics.py) on CoNLL-2003 test (3,453 sentences; the teacher and
student pick their checkpoints on validation), latency at 1×128 and 8×128 on 1 thread, all variants round-robin in
one run. optimum's `ORTModelForTokenClassification` loads the int8 export (in .venv-optimum, when it exists: `make
bench-speed` builds it). `python -m llmzip.benchmarks.ner [--quick] [--out runs/bench-ner]`.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from llmzip.bench.variants import ort_dynamic_int8
from llmzip.benchmarks.common import (
    SHARED,
    TEACHER,
    ensure_optimum_venv,
    optimum_load_check,
    reuse_stage,
    rows_by_variant,
    write_json,
)
from llmzip.config import (
    BenchConfig,
    CalibrateConfig,
    DataConfig,
    DistillConfig,
    ExportConfig,
    FinetuneConfig,
    QuantizeConfig,
    TaskKind,
)
from llmzip.errors import DataError
from llmzip.progress import console
from llmzip.stages.bench import eval_inputs, load_eval_data, load_variant, measure, onnx_file_variant

CONLL = SHARED / "data" / "conll2003"
COLUMNS: dict[str, Any] = {"text_column": "tokens", "label_column": "ner_tags", "max_length": 128}
TEACHER_TRAINING: dict[str, Any] = {"epochs": 3.0, "learning_rate": 1e-4, "batch_size": 32}
STUDENT_LAYERS = 4
STUDENT_TRAINING: dict[str, Any] = {
    "epochs": 3.0,
    "learning_rate": 1e-4,
    "batch_size": 32,
    "alpha": 0.5,
    "temperature": 2.0,
}
# The quantize recipe bench-speed measured best on this encoder (percentile ranges, int8 attention matmuls too).
QUANT: dict[str, Any] = {"method": "percentile", "percentile": 99.99, "attention": True}
SHAPES = [1, 8]  # batch sizes at 128 tokens


def build(out: Path, quick: bool) -> dict[str, Path]:
    from llmzip.stages.calibrate import calibrate
    from llmzip.stages.distill import distill
    from llmzip.stages.export import export
    from llmzip.stages.finetune import finetune
    from llmzip.stages.quantize import quantize

    limit: dict[str, Any] = {"max_train_samples": 512, "max_eval_samples": 256} if quick else {}
    train = DataConfig(dataset=str(CONLL), eval_split="validation", **COLUMNS, **limit)
    steps: dict[str, Any] = {"max_steps": 20} if quick else {}
    teacher = reuse_stage(
        out / "teacher",
        lambda: finetune(
            str(TEACHER),
            out / "teacher",
            config=FinetuneConfig(data=train, task=TaskKind.TOKEN_CLASSIFICATION, **TEACHER_TRAINING, **steps),
        ),
    )
    student = reuse_stage(
        out / "student",
        lambda: distill(
            str(teacher),
            out / "student",
            config=DistillConfig(data=train, num_layers=STUDENT_LAYERS, **STUDENT_TRAINING, **steps),
        ),
    )
    calib = reuse_stage(
        out / "student-calibration",
        lambda: calibrate(student, out / "student-calibration", config=CalibrateConfig(data=train, num_samples=256)),
    )
    int8 = reuse_stage(
        out / "student-int8", lambda: quantize(student, calib, out / "student-int8", config=QuantizeConfig(**QUANT))
    )
    test = DataConfig(dataset=str(CONLL), eval_split="test", **COLUMNS)
    paths = {
        "teacher": teacher,
        "student": student,
        "student-llmzip-int8": reuse_stage(
            out / "student-llmzip-int8",
            lambda: export(int8, out / "student-llmzip-int8", config=ExportConfig(data=test, eval_accuracy=True)),
        ),
        "teacher-ort-fp32": reuse_stage(
            out / "teacher-ort-fp32", lambda: export(teacher, out / "teacher-ort-fp32", config=ExportConfig())
        ),
    }
    paths["teacher-ort-dynamic-int8"] = ort_dynamic_int8(
        paths["teacher-ort-fp32"] / "model.onnx", out / "teacher-ort-dynamic-int8.onnx"
    )
    return paths


def targets(rows: dict[str, dict[str, Any]], optimum: dict[str, Any] | None) -> dict[str, Any]:
    """The issue's targets, each with the measured numbers it rests on."""
    teacher, student = rows["teacher-torch-fp32"], rows["student-llmzip-int8"]
    drop = round(100 * (teacher["f1"] - student["f1"]), 2)
    speed = {shape: round(teacher["latency_ms"][shape] / student["latency_ms"][shape], 2) for shape in ("1x128",)}
    return {
        "int8_student_within_1_f1_of_teacher": {"f1_drop_pt": drop, "met": drop <= 1.0},
        "int8_student_2x_faster_than_torch_fp32_at_1x128": {"speedup": speed["1x128"], "met": speed["1x128"] >= 2.0},
        "optimum_loads_the_int8_export": {"met": bool(optimum and optimum.get("ok")), "check": optimum},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", default=os.environ.get("BENCH_QUICK") == "1")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-ner"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    for path in (TEACHER / "config.json", CONLL / "test.jsonl"):
        if not path.exists():
            raise DataError(f"{path}: missing; benchmarks read ../shared (set LLMZIP_SHARED to its location)")
    started = time.time()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    console.rule("[bold]building the variants")
    paths = build(out, args.quick)
    sentences = [" ".join(r) for r in _test_words(32)]
    optimum, why = None, ensure_optimum_venv()
    if why is None:
        optimum = optimum_load_check(paths["student-llmzip-int8"], out, sentences, task="token-classification")
    else:
        console.print(f"· optimum's load check left out: {why}")

    console.rule("[bold]measuring (round-robin, one run)")
    test = DataConfig(dataset=str(CONLL), eval_split="test", **COLUMNS, max_eval_samples=128 if args.quick else None)
    iterations, warmup = (5, 1) if args.quick else (40, 5)
    config = BenchConfig(
        data=test, batch_sizes=SHAPES, seq_len=128, threads=args.threads, warmup=warmup, iterations=iterations
    )
    from llmzip.artifact import open_artifact

    def stage(name: str) -> Any:
        return open_artifact(paths[name], verb="bench", accepts=("finetune", "distill", "export"))

    variants = [
        load_variant(stage("teacher"), "teacher-torch-fp32", config),
        load_variant(stage("teacher-ort-fp32"), "teacher-ort-fp32", config),
        onnx_file_variant(
            paths["teacher-ort-dynamic-int8"],
            tokenizer_dir=paths["teacher"],
            name="teacher-ort-dynamic-int8",
            config=config,
        ),
        load_variant(stage("student"), "student-torch-fp32", config),
        load_variant(stage("student-llmzip-int8"), "student-llmzip-int8", config),
    ]
    eval_ds, source = load_eval_data(config)
    inputs = [eval_inputs(v, eval_ds, config) for v in variants]
    result = measure(variants, [f for f, _ in inputs], config, labels=[y for _, y in inputs])
    rows = rows_by_variant(result, metric="f1", baseline="teacher_torch_fp32")
    report = {
        "machine": result["machine"],
        "data": {**source.describe(), "split": "test", "sentences": len(eval_ds)},
        "metric": "entity micro F1 (conlleval chunking), first sub-token of each word",
        "teacher_source": str(TEACHER),
        "training": {
            "teacher": {**TEACHER_TRAINING, "train_sentences": _manifest_rows(paths["teacher"])},
            "student": {
                **STUDENT_TRAINING,
                "layers": STUDENT_LAYERS,
                "train_sentences": _manifest_rows(paths["student"]),
            },
        },
        "quantize": QUANT,
        "variants": list(rows.values()),
        "warnings": result["warnings"],
        "optimum_loads_llmzip_int8_export": optimum,
        "wall_s": round(time.time() - started, 1),
        "quick": args.quick,
    }
    report["targets"] = None if args.quick else targets(rows, optimum)
    write_json(out / "results.json", report)
    _render(report)


def _test_words(count: int) -> list[list[str]]:
    import json

    lines = (CONLL / "test.jsonl").read_text().splitlines()[:count]
    return [json.loads(line)["tokens"] for line in lines]


def _manifest_rows(model_dir: Path) -> int | None:
    from llmzip.artifact import read_manifest

    inputs = (read_manifest(model_dir) or {}).get("inputs") or {}
    rows = (inputs.get("train") or {}).get("rows")
    return int(rows) if rows is not None else None


def _render(report: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"bench-ner: CoNLL-2003 test, {report['machine'].get('cpu', '?')}, 1 thread")
    for column in ("variant", "precision", "F1", "size MB", "p50 1×128 ms", "p50 8×128 ms", "speedup 1×128"):
        table.add_column(column)
    for v in report["variants"]:
        table.add_row(
            v["name"],
            f"{v['kind']} {v['precision']}",
            f"{100 * v['f1']:.2f}",
            f"{v['size_mb']:.1f}",
            f"{v['latency_ms'].get('1x128', float('nan')):.2f}",
            f"{v['latency_ms'].get('8x128', float('nan')):.2f}",
            str((v["speedup_vs_teacher_torch_fp32"].get("1x128") or {}).get("p50_ratio")),
        )
    console.print(table)
    for name, target in (report["targets"] or {}).items():
        console.print(
            f"{'✓' if target['met'] else '✗'} {name}: { ({k: v for k, v in target.items() if k != 'check'}) }"
        )


if __name__ == "__main__":
    main()
