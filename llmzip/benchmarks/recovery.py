"""`make bench-recovery`: which recovery method pays for a pruned student, over seeds.

One pruned student of the reference SST-2 teacher (the `3L-pruned` candidate of configs/compress-sst2.yaml: 3 of
6 layers, 8 of 12 heads, 768 of 1,536 FFN neurons, task vocabulary, rank-64 embeddings, 128 positions), trained
with each method at the same budget (steps, batch, learning rate, data) for every seed; selected on
sst2-sentences/validation (1,000 held-out full sentences), reported on its test split (GLUE SST-2 dev, 872
sentences) as mean ± sd over the seeds (a single run on 872 sentences has ±1.1 pt standard error).

Methods: labels only (CE), logit KD (cached teacher logits, α = 0.5, T = 2), logit KD plus layer distillation
(hidden-state MSE of each student layer against the teacher layer it maps to: CoFi's layer loss; the teacher's
states cached), logit KD on the data plus 30,000 teacher-labelled word-swapped texts (llmzip/shrink/augment.py),
and logit KD with the pruning done in 3 rounds, each followed by a third of the steps.
`python -m llmzip.benchmarks.recovery [--quick] [--seeds 0,1,2] [--steps N] [--out runs/bench-recovery]`;
finished students are reused, so an interrupted run continues.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

from llmzip.artifact import read_manifest
from llmzip.benchmarks.common import SHARED, TEACHER, require_shared, test_accuracy, write_json
from llmzip.config import DataConfig, DistillConfig, Vocabulary
from llmzip.progress import stdout_console
from llmzip.runtime.machine import machine_info
from llmzip.stages.distill import distill

SENTENCES = SHARED / "data" / "sst2-sentences"
STUDENT = {
    "num_layers": 3,
    "keep_heads": 8,
    "keep_ffn": 768,
    "vocabulary": Vocabulary.TASK_NEAREST,
    "embedding_rank": 64,
    "max_positions": 128,
}
METHODS: dict[str, dict[str, Any]] = {
    "labels-only": {"alpha": 0.0},
    "logit-kd": {"alpha": 0.5},
    "logit+layer-kd": {"alpha": 0.5, "hidden_mse": 1.0},
    # TinyBERT-style augmentation: 30,000 teacher-labelled word-swapped long texts beside the 56,187 rows
    "logit-kd+swaps": {"alpha": 0.5, "augment_swaps": 30000},
    # pruned in 3 rounds (12→11→9→8 heads, 1536→1280→1024→768 neurons), a third of the steps after each
    "logit-kd+3-rounds": {"alpha": 0.5, "prune_rounds": 3},
}


def train(method: str, seed: int, steps: int, quick: bool, out: Path) -> dict[str, Any]:
    """One student (reused when its directory is finished); its dev accuracy, validation accuracy and cost."""
    folder = out / "students" / f"{method}-seed{seed}"
    started = time.time()
    if not (folder / "manifest.json").is_file():
        data = DataConfig(
            dataset=str(SENTENCES),
            max_length=64,
            max_train_samples=640 if quick else None,
            max_eval_samples=64 if quick else None,
        )
        config = DistillConfig(
            data=data,
            max_steps=steps,
            batch_size=32,
            learning_rate=1e-4,
            temperature=2.0,
            seed=seed,
            **STUDENT,  # type: ignore[arg-type]
            **METHODS[method],
        )
        distill(str(TEACHER), folder, config=config, overwrite=True)
    manifest = read_manifest(folder)
    assert manifest is not None
    accuracy, params = test_accuracy(folder, max_length=64)
    stage = manifest["metrics"]["stages"]["prediction"]
    return {
        "method": method,
        "seed": seed,
        "accuracy": round(accuracy, 4),
        "val_accuracy": manifest["metrics"]["eval_accuracy"],
        "params": params,
        "steps": stage["steps"],
        "step_time_s": stage.get("step_time_s"),
        "train_wall_s": manifest.get("duration_s"),
        "wall_s_this_run": round(time.time() - started, 1),
    }


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± sd of each method's dev accuracy over its seeds, and each KD method's gain over labels only."""
    by: dict[str, list[float]] = {}
    for r in runs:
        by.setdefault(r["method"], []).append(r["accuracy"])
    rows = {
        m: {
            "seeds": accs,
            "mean": round(statistics.fmean(accs), 4),
            "sd": round(statistics.stdev(accs), 4) if len(accs) > 1 else None,
        }
        for m, accs in by.items()
    }
    base = rows.get("labels-only")
    if base is not None:
        for m, row in rows.items():
            if m != "labels-only":
                gain = 100 * (row["mean"] - base["mean"])
                # standard error of a difference of two means over n seeds each
                se = (
                    100 * ((row["sd"] ** 2 + base["sd"] ** 2) / len(row["seeds"])) ** 0.5
                    if row["sd"] is not None and base["sd"] is not None
                    else None
                )
                row["gain_over_labels_pt"] = {"value": round(gain, 2), "se": None if se is None else round(se, 2)}
    return rows


def render(result: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"bench-recovery: 3L-pruned student, SST-2 dev (teacher {result['teacher_accuracy']:.4f})")
    for col in ("method", "seeds", "dev acc mean ± sd", "per seed", "gain over labels-only (pt ± se)"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for method, row in result["methods"].items():
        gain = row.get("gain_over_labels_pt")
        table.add_row(
            method,
            str(len(row["seeds"])),
            f"{row['mean']:.4f} ± {row['sd']:.4f}" if row["sd"] is not None else f"{row['mean']:.4f}",
            " ".join(f"{a:.4f}" for a in row["seeds"]),
            "—" if gain is None else f"{gain['value']:+.2f}" + ("" if gain["se"] is None else f" ± {gain['se']:.2f}"),
        )
    stdout_console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", default=os.environ.get("BENCH_QUICK") == "1")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per student (default 2000)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    require_shared()
    out = args.out or Path("runs/bench-recovery-quick" if args.quick else "runs/bench-recovery")
    steps = args.steps or (20 if args.quick else 2000)
    seeds = [int(s) for s in args.seeds.split(",")]
    started = time.time()
    runs = [
        train(method, seed, steps, args.quick, out) for seed in seeds for method in args.methods.split(",")
    ]  # seed-major: an interrupted run still has every method at the first seeds
    teacher_accuracy, teacher_params = test_accuracy(TEACHER, max_length=64)
    result = {
        "teacher": str(TEACHER),
        "teacher_accuracy": round(teacher_accuracy, 4),
        "teacher_params": teacher_params,
        "student": {k: getattr(v, "value", v) for k, v in STUDENT.items()},
        "budget": {"steps": steps, "batch_size": 32, "learning_rate": 1e-4, "max_length": 64, "seeds": seeds},
        "data": {"train": str(SENTENCES / "train.tsv"), "select": "validation", "report": "test (GLUE SST-2 dev)"},
        "runs": runs,
        "methods": summary(runs),
        "machine": machine_info(),
        "wall_s": round(time.time() - started, 1),
        "quick": args.quick,
    }
    write_json(out / "results.json", result)
    render(result)


if __name__ == "__main__":
    main()
