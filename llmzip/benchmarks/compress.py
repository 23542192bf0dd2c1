"""`make bench-compress`: the compress search on the reference SST-2 teacher, then every candidate and the reference
rows (PyTorch fp32 teacher, its fp32 ONNX, onnxruntime quantize_dynamic of it) timed together in one bench run.

The search (configs/compress-sst2.yaml) selects on sst2-sentences validation (full held-out sentences); the
targets are read on test.tsv (GLUE SST-2 dev), as the issues state them. Results: runs/bench-compress/{results.json,
report.md, pareto_size.png, pareto_latency.png}; the search directory (resumable) is runs/bench-compress/search.
`python -m llmzip.benchmarks.compress [--quick] [--out runs/bench-compress]` (BENCH_QUICK=1 for --quick).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from llmzip.artifact import EXTERNAL, open_artifact
from llmzip.bench import plots
from llmzip.bench.variants import ort_dynamic_int8
from llmzip.benchmarks.common import SHARED, TEACHER, model_accuracy, require_shared, write_json
from llmzip.config import BenchConfig
from llmzip.modeling import source_config
from llmzip.progress import console, stdout_console
from llmzip.recipe import read_yaml
from llmzip.runtime.machine import machine_info
from llmzip.search import pareto
from llmzip.search.compress import compress
from llmzip.search.measure import TEACHER_NAME, shape_key
from llmzip.search.plan import build_plan, teacher_shape
from llmzip.search.report import markdown
from llmzip.stages.bench import eval_inputs, load_eval_data, load_variant, measure, onnx_file_variant

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "configs" / "compress-sst2.yaml"
REFERENCE_STUDENT = "3L-int8"  # the current 3-layer int8 student (configs/sst2-minilm.yaml's recipe)


def joint_run(search: dict[str, Any], bench: BenchConfig, out: Path) -> dict[str, Any]:
    """Every candidate and reference row in one round-robin bench run (accuracy on bench's eval split)."""
    teacher_onnx = Path(search["teacher"]["onnx_path"])
    dynamic = ort_dynamic_int8(teacher_onnx / "model.onnx", out / "teacher-ort-dynamic-int8.onnx")
    variants = [
        load_variant(open_artifact(TEACHER, verb="bench", accepts=(EXTERNAL,)), TEACHER_NAME, bench),
        load_variant(open_artifact(teacher_onnx, verb="bench", accepts=("export",)), "teacher-ort-fp32", bench),
        onnx_file_variant(dynamic, tokenizer_dir=teacher_onnx, name="teacher-ort-dynamic-int8", config=bench),
    ]
    for row in search["candidates"]:
        if "error" not in row:
            artifact = open_artifact(Path(row["path"]), verb="bench", accepts=("export",))
            variants.append(load_variant(artifact, row["name"], bench))
    ds, _ = load_eval_data(bench)
    inputs = [eval_inputs(v, ds, bench) for v in variants]
    return measure(variants, [f for f, _ in inputs], bench, labels=[y for _, y in inputs], saturation=False)


def rows_by_name(joint: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for r in joint["variants"]:
        entry = out.setdefault(
            r["name"],
            {"name": r["name"], "accuracy": r["accuracy"], "size_mb": r["size_mb"], "precision": r["precision"]},
        )
        shape = shape_key(r["batch"], r["seq_len"])
        entry.setdefault("latency_ms", {})[shape] = r["latency_ms"]["p50"]
        entry.setdefault("speedup_vs_teacher_torch_fp32", {})[shape] = r["speedup_vs_baseline"]
        entry.setdefault("speedup_ci95", {})[shape] = r["speedup_ci95"]
    return out


def targets(teacher: dict[str, Any], candidates: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 20's targets, on the reported split (SST-2 dev; a student's accuracy is its mean over the seeds) and
    the joint run's latencies."""
    acc = teacher["accuracy"]
    size_ok = [c for c in candidates if c["accuracy"] >= acc - 0.015 - 1e-9]
    speed_ok = [c for c in candidates if c["accuracy"] >= acc - 0.010 - 1e-9]
    small = [c for c in candidates if c["size_mb"] <= 5.0]
    smallest = min(size_ok, key=lambda c: c["size_mb"], default=None)
    fastest = min(speed_ok, key=pareto.latency_score, default=None)
    best_small = max(small, key=lambda c: c["accuracy"], default=None)
    limit = teacher["onnx_size_mb"] / 10
    out: dict[str, Any] = {
        "5mb_at_0.883": {
            "candidate": best_small and best_small["name"],
            "accuracy": best_small and best_small["accuracy"],
            "size_mb": best_small and best_small["size_mb"],
            "met": bool(best_small and best_small["accuracy"] >= 0.883),
        },
        "size_10x_within_1.5pt": {
            "candidate": smallest and smallest["name"],
            "size_mb": smallest and smallest["size_mb"],
            "ratio": smallest and round(teacher["onnx_size_mb"] / smallest["size_mb"], 2),
            "limit_mb": round(limit, 3),
            "met": bool(smallest and smallest["size_mb"] <= limit),
        },
        "speed_4x_within_1.0pt": {
            "candidate": fastest and fastest["name"],
            "speedup": fastest and fastest["speedup_vs_teacher_torch_fp32"],
            "met": bool(fastest and all(s >= 4.0 for s in fastest["speedup_vs_teacher_torch_fp32"].values())),
        },
    }
    by = {c["name"]: c for c in candidates}
    pairs = []
    for c in candidates:
        twin = by.get(c["name"] + "-labels-only")
        if twin is not None:
            pairs.append(
                {
                    "kd": c["name"],
                    "kd_accuracy": c["accuracy"],
                    "kd_sd": c.get("accuracy_sd"),
                    "labels_only_accuracy": twin["accuracy"],
                    "labels_only_sd": twin.get("accuracy_sd"),
                    "gain_pt": round(100 * (c["accuracy"] - twin["accuracy"]), 2),
                }
            )
    out["kd_gain_over_labels_only"] = {
        "pairs": pairs,
        "target_pt": 1.0,
        "met": bool(pairs) and all(p["gain_pt"] >= 1.0 for p in pairs),
    }
    return out


def vocabulary_effect() -> dict[str, Any]:
    """What dropping the token ids SST-2's training split never uses costs by itself: the teacher, untrained after
    the change, on SST-2 dev — full vocabulary, dropped ids read as [UNK], dropped ids read as their nearest kept
    row (PyTorch fp32, max length 64)."""
    from llmzip.config import DataConfig
    from llmzip.data import load_split, texts
    from llmzip.modeling import load_pretrained, load_tokenizer
    from llmzip.shrink import embeddings

    tokenizer = load_tokenizer(TEACHER)
    data = DataConfig(dataset=str(SHARED / "data" / "sst2-sentences"))
    loaded = load_split(data, "train")
    assert loaded is not None
    kept = embeddings.task_vocabulary(tokenizer, texts(loaded[0], data)[0])
    dev = load_split(data, "test")
    assert dev is not None
    out: dict[str, Any] = {
        "rows_kept": len(kept),
        "vocab": int(tokenizer.vocab_size),
        "dev_unknown_rate": round(embeddings.unknown_rate(tokenizer, texts(dev[0], data)[0], kept), 5),
        "full": round(model_accuracy(load_pretrained(TEACHER), tokenizer), 4),
    }
    for name, nearest in (("task_unk", False), ("task_nearest", True)):
        model = load_pretrained(TEACHER)
        embeddings.prune_vocabulary(model, kept, unk_id=int(tokenizer.unk_token_id), nearest=nearest)
        out[name] = round(model_accuracy(model, tokenizer), 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", default=os.environ.get("BENCH_QUICK") == "1")
    parser.add_argument("--out", type=Path, default=None, help="default runs/bench-compress (-quick with --quick)")
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    args = parser.parse_args()
    if args.out is None:  # a smoke run never overwrites the real results
        args.out = Path("runs/bench-compress-quick" if args.quick else "runs/bench-compress")
    require_shared()
    started = time.time()
    values = read_yaml(args.recipe)
    values["model"] = str(TEACHER)
    values.setdefault("data", {})["dataset"] = str(SHARED / "data" / "sst2-sentences")  # the leak-free selection split
    c = source_config(TEACHER)
    plan = build_plan(values, teacher_shape=teacher_shape(c), quick=args.quick)
    search_dir = args.out / "search"
    search = compress(plan, search_dir, resume=search_dir.exists())
    console.rule("[bold]one bench run: every candidate beside the reference rows")
    joint = joint_run(search, plan.bench, args.out)
    measured = rows_by_name(joint)
    teacher = {**search["teacher"], "accuracy": measured[TEACHER_NAME]["accuracy"]}
    candidates = []
    for row in search["candidates"]:
        if "error" in row:
            candidates.append(row)
            continue
        m = measured[row["name"]]
        # one seed's export is timed; a student trained per seed keeps the search's mean accuracy over its seeds
        taken = ("size_mb", "latency_ms", "speedup_vs_teacher_torch_fp32", "speedup_ci95")
        accuracy = row["accuracy"] if "seeds" in row else m["accuracy"]
        candidates.append(
            {
                **row,
                **{k: m[k] for k in taken},
                "accuracy": accuracy,
                "search_latency_ms": row["latency_ms"],
                "size_ratio_vs_teacher_onnx": round(teacher["onnx_size_mb"] / m["size_mb"], 2),
                "accuracy_drop_pt": round(100 * (teacher["accuracy"] - accuracy), 2),
            }
        )
    ok = [r for r in candidates if "error" not in r]
    result = {
        "teacher": teacher,
        "objective": search["objective"],
        "max_accuracy_drop_pt": search["max_accuracy_drop_pt"],
        "best": search["best"],
        "model": search.get("model"),
        "candidates": candidates,
        "references": [measured[n] for n in (TEACHER_NAME, "teacher-ort-fp32", "teacher-ort-dynamic-int8")],
        "reference_student": REFERENCE_STUDENT,
        "pareto": pareto.pareto(ok),
        "targets": targets(teacher, ok),
        "vocabulary_effect_on_teacher": vocabulary_effect(),
        "machine": joint["machine"],
        "warnings": joint["warnings"],
        "quick": args.quick,
        "search_wall_s": search["wall_s"],
        "wall_s": round(time.time() - started, 1),
    }
    write_json(args.out / "results.json", result)
    text = markdown(result)
    (args.out / "report.md").write_text(text + "\n")
    if plots.available() and ok:
        front = set(result["pareto"])
        for axis, label in (("size_mb", "ONNX size (MB)"), ("latency_1x128", "p50 ms at 1×128, 1 thread")):
            points = [
                {
                    "name": ("* " if r["name"] in front else "") + r["name"],
                    "size_mb": r["size_mb"],
                    "latency_1x128": r["latency_ms"].get("1x128", 0.0),
                    "accuracy": r["accuracy"],
                }
                for r in ok
            ]
            plots.scatter_png(
                args.out / f"pareto_{axis.split('_')[0]}.png",
                points,
                x=axis,
                y="accuracy",
                title=f"bench-compress: SST-2 dev accuracy vs {label} (* = Pareto)",
                xlabel=label,
                ylabel="accuracy",
                hline=teacher["accuracy"] - 0.015,
            )
    out = stdout_console()
    out.print(text, markup=False, highlight=False)
    for name, value in result["targets"].items():
        out.print(f"{name}: {value}", markup=False, highlight=False)
    out.print(f"machine: {machine_info().get('cpu')}; load during the joint run: {joint['machine'].get('cpu_load')}")


if __name__ == "__main__":
    main()
