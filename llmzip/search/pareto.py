"""Pure selection logic of `llmzip compress`: which candidates are Pareto-optimal, which one wins the budget."""

from __future__ import annotations

import math
import statistics
from typing import Any

from llmzip.config.choices import Objective


def latency_score(candidate: dict[str, Any]) -> float:
    """One number for "how fast": the geometric mean over the measured shapes of latency / teacher latency.

    Shapes are compared relative to the teacher measured in the same run, so a noisy minute that slows both
    does not reorder candidates measured at different times.
    """
    ratios = [1.0 / s for s in candidate["speedup_vs_teacher_torch_fp32"].values() if s]
    return math.exp(sum(math.log(r) for r in ratios) / len(ratios)) if ratios else math.inf


def objective_value(candidate: dict[str, Any], objective: Objective) -> float:
    return float(candidate["size_mb"]) if objective is Objective.SIZE else latency_score(candidate)


def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """a is at least as accurate, small and fast as b, and strictly better in one of them."""
    a_key = (-a["accuracy"], a["size_mb"], latency_score(a))
    b_key = (-b["accuracy"], b["size_mb"], latency_score(b))
    return all(x <= y for x, y in zip(a_key, b_key)) and a_key != b_key


def pareto(candidates: list[dict[str, Any]]) -> list[str]:
    """Names of the candidates no other candidate dominates (accuracy ↑, size ↓, latency ↓), most accurate first."""
    front = [c for c in candidates if not any(dominates(o, c) for o in candidates if o is not c)]
    return [c["name"] for c in sorted(front, key=lambda c: (-c["accuracy"], c["size_mb"]))]


def best_within(
    candidates: list[dict[str, Any]], *, teacher_accuracy: float, max_drop_pt: float, objective: Objective
) -> dict[str, Any] | None:
    """The candidate that minimises the objective among those within `max_drop_pt` points of the teacher
    (ties: the more accurate one); None when no candidate fits the budget."""
    floor = teacher_accuracy - max_drop_pt / 100.0
    fits = [c for c in candidates if c["accuracy"] >= floor - 1e-9]
    if not fits:
        return None
    return min(fits, key=lambda c: (objective_value(c, objective), -c["accuracy"]))


def seed_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A candidate trained once per seed: accuracies are the means (with the sample sd), and its export (`path`,
    what `OUT/model` would copy) is the seed that did best on the selection split, never the reported one."""
    report = [r["accuracy"] for r in runs]
    selection = [r["selection_accuracy"] for r in runs]
    best = max(runs, key=lambda r: r["selection_accuracy"])
    return {
        "accuracy": round(statistics.fmean(report), 4),
        "accuracy_sd": round(statistics.stdev(report), 4),
        "selection_accuracy": round(statistics.fmean(selection), 4),
        "selection_accuracy_sd": round(statistics.stdev(selection), 4),
        "seeds": runs,
        "path": best["path"],
        "chosen_seed": best["seed"],
    }
