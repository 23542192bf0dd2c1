"""How `llmzip compress` measures a candidate: bench's own code, beside the PyTorch fp32 teacher in the same run.

Each candidate is timed round-robin with the teacher (so its speedup does not depend on how busy the machine was
when another candidate ran), its accuracy is taken on the bench's eval split (reported) and on the selection
split (data.eval_split of the search: what the budget is checked on, so the reported split is never used to
choose).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from llmzip.artifact import EXTERNAL, open_artifact
from llmzip.config import BenchConfig, DataConfig
from llmzip.stages.bench import Variant, accuracy, eval_inputs, load_eval_data, load_variant, measure

TEACHER_NAME = "teacher-torch-fp32"


def shape_key(batch: int, seq_len: int) -> str:
    return f"{batch}x{seq_len}"


class Measurer:
    """Holds the teacher variant and both eval sets, loaded once for the whole search."""

    def __init__(self, teacher_dir: Path, bench: BenchConfig, selection: DataConfig) -> None:
        self.bench = bench
        self.selection_bench = dataclasses.replace(bench, data=selection)
        self.teacher = load_variant(
            open_artifact(teacher_dir, verb="compress", accepts=("finetune", "distill", "import", EXTERNAL)),
            TEACHER_NAME,
            bench,
        )
        self.report_ds, _ = load_eval_data(bench)
        self.selection_ds, _ = load_eval_data(self.selection_bench)
        self.teacher_feeds, self.report_labels = eval_inputs(self.teacher, self.report_ds, bench)

    def accuracies(self, variant: Variant, feeds: dict[str, Any] | None = None) -> tuple[float, float]:
        """(reported-split accuracy, selection-split accuracy); `feeds`: the variant's reported-split inputs."""
        report_feeds, labels = eval_inputs(variant, self.report_ds, self.bench) if feeds is None else (feeds, None)
        labels = self.report_labels if labels is None else labels
        sel_feeds, sel_labels = eval_inputs(variant, self.selection_ds, self.selection_bench)
        if labels is None or sel_labels is None:
            from llmzip.errors import ModelError

            raise ModelError(f"{variant.name}: the model names no labels, so it has no accuracy to search on")
        batch = max(self.bench.batch_sizes)
        return accuracy(variant, report_feeds, labels, batch), accuracy(variant, sel_feeds, sel_labels, batch)

    def teacher_row(self) -> dict[str, Any]:
        report, selection = self.accuracies(self.teacher)
        return {"accuracy": round(report, 4), "selection_accuracy": round(selection, 4)}

    def export_accuracies(self, export_dir: Path, name: str) -> tuple[float, float]:
        """(reported, selection) accuracy of one export: another seed of a measured candidate needs no timing."""
        return self.accuracies(
            load_variant(open_artifact(export_dir, verb="compress", accepts=("export",)), name, self.bench)
        )

    def candidate(self, export_dir: Path, name: str) -> dict[str, Any]:
        """Size, accuracies, and p50 latency + speedup over the teacher at every bench shape."""
        variant = load_variant(open_artifact(export_dir, verb="compress", accepts=("export",)), name, self.bench)
        feeds, _ = eval_inputs(variant, self.report_ds, self.bench)
        report, selection = self.accuracies(variant, feeds)
        timed = measure([self.teacher, variant], [self.teacher_feeds, feeds], self.bench, labels=None, saturation=False)
        latency: dict[str, float] = {}
        teacher_latency: dict[str, float] = {}
        speedup: dict[str, float] = {}
        interval: dict[str, list[float]] = {}
        for row in timed["variants"]:
            shape = shape_key(row["batch"], row["seq_len"])
            if row["name"] == TEACHER_NAME:
                teacher_latency[shape] = row["latency_ms"]["p50"]
            else:
                latency[shape] = row["latency_ms"]["p50"]
                speedup[shape] = row["speedup_vs_baseline"]
                interval[shape] = row["speedup_ci95"]
        return {
            "name": name,
            "path": str(export_dir),
            "precision": variant.precision,
            "accuracy": round(report, 4),
            "selection_accuracy": round(selection, 4),
            "size_mb": variant.size_mb,
            "latency_ms": latency,
            "teacher_latency_ms": teacher_latency,
            "speedup_vs_teacher_torch_fp32": speedup,
            "speedup_ci95": interval,
            "cpu_load": timed["machine"].get("cpu_load"),
            "warnings": timed["warnings"],
        }
