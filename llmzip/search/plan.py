"""What `llmzip compress` searches: its config, the candidates (planned or from a recipe) and their cache keys.

Pure Python (no torch): the CLI builds and validates the whole plan before any stage runs, so a typo in the
tenth candidate fails in the first second, not after an hour of training.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from llmzip import scope
from llmzip.config import (
    BenchConfig,
    CalibrateConfig,
    DataConfig,
    DistillConfig,
    ExportConfig,
    QuantizeConfig,
)
from llmzip.config.choices import Objective, as_enum
from llmzip.config.data import _check
from llmzip.errors import ConfigError
from llmzip.recipe import from_dict, merge
from llmzip.search import splits

# The stages a candidate is made by, in order; `distill: null` in a candidate means "the teacher itself".
BUILD_STAGES = {"distill": DistillConfig, "calibrate": CalibrateConfig, "quantize": QuantizeConfig}
SECTIONS = {**BUILD_STAGES, "export": ExportConfig, "bench": BenchConfig}


@dataclass
class CompressConfig:
    """The search: candidates are built by the stages, measured by bench's code, and the best one within the
    accuracy budget (on data's eval split, never the bench's reported split) is written out."""

    max_accuracy_drop: float = 1.0  # points below the teacher on the selection split
    objective: Objective = Objective.SIZE
    candidates: list[dict[str, Any]] | None = None  # None: the planned set (default_plan)
    kd_ablation: bool = True  # also train the pruned students on labels only, to measure what KD adds
    # Train every student once per seed: its accuracies are the mean over the seeds (with the spread), so a
    # choice does not rest on one run's noise (±1.1 pt on 872 sentences). None: once, with distill's own seed.
    seeds: list[int] | None = None
    data: DataConfig = field(default_factory=DataConfig)  # training data; eval_split selects

    def __post_init__(self) -> None:
        _check(0 <= self.max_accuracy_drop <= 100, "max_accuracy_drop", "must be in [0, 100] points")
        self.objective = as_enum(Objective, self.objective, "objective")
        _check(
            self.candidates is None or (isinstance(self.candidates, list) and len(self.candidates) > 0),
            "candidates",
            "must be a non-empty list of {name, distill, calibrate, quantize} mappings",
        )
        _check(
            self.seeds is None or (len(self.seeds) > 0 and len(set(self.seeds)) == len(self.seeds)),
            "seeds",
            f"must be a non-empty list of distinct seeds, got {self.seeds}",
        )


@dataclass
class Candidate:
    name: str
    configs: dict[str, Any]  # stage name → resolved config; "distill" is None for the teacher itself
    overrides: dict[str, Any]  # what the plan or recipe set, for the report

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "overrides": self.overrides}


def embedder_plan(shape: tuple[int, ...]) -> list[dict[str, Any]]:
    """The planned candidates for a sentence embedder: the teacher in int8 and layer-subset students (⅔ and ½ of
    its depth) distilled on the embedding alone (alpha 1: no labels), in int8. Pruned or narrower embedder
    students are not built yet (llmzip/scope.py refuses them)."""
    layers = shape[0]
    plan: list[dict[str, Any]] = [{"name": "teacher-int8", "distill": None}]
    for depth in sorted({max(1, layers * 2 // 3), max(1, layers // 2)}, reverse=True):
        if depth < layers:
            plan.append({"name": f"{depth}L-int8", "distill": {"num_layers": depth, "alpha": 1.0}})
    return plan


def default_plan(shape: tuple[int, ...], *, kd_ablation: bool) -> list[dict[str, Any]]:
    """The planned candidates for a teacher of shape (layers, heads, FFN neurons, hidden size, positions).

    The reference student (half depth, int8), then students whose embedding table (half of a MiniLM's weights)
    shrinks to the task vocabulary at a low rank and whose width is pruned: all layers at ½ the heads and ¼ of
    the FFN, half the depth at ⅔ / ½ and at ½ / ¼, in int8 and 4-bit, the first also for this CPU's native int8
    class; plus a labels-only twin, to measure KD.
    """
    layers, heads, ffn, hidden, positions = shape
    half = max(1, layers // 2)
    rank = max(1, min(64, hidden // 6))
    shrink = {"vocabulary": "task-nearest", "max_positions": min(128, positions), "embedding_rank": rank}
    head_int8 = {"exclude": [r"(^|\.)classifier(\.|$)"]}  # the pooler is a hidden² matrix: int8 too
    int4 = {"weight_bits": 4, "weight_only": True, "attention": False, **head_int8}
    wide = {"num_layers": layers, **shrink, "keep_heads": max(1, heads // 2), "keep_ffn": max(1, ffn // 4)}
    deep = {"num_layers": half, **shrink, "keep_heads": max(1, heads * 2 // 3), "keep_ffn": max(1, ffn // 2)}
    deep2 = {**deep, "keep_heads": max(1, heads // 2), "keep_ffn": max(1, ffn // 4)}
    plan: list[dict[str, Any]] = [
        {"name": "teacher-int8", "distill": None},
        {"name": f"{half}L-int8", "distill": {"num_layers": half}},
        {"name": f"{layers}L-pruned-r{rank}-int8", "distill": wide, "quantize": head_int8},
        {"name": f"{layers}L-pruned-r{rank}-int4", "distill": wide, "quantize": int4},
        {"name": f"{half}L-pruned-r{rank}-int8", "distill": deep, "quantize": head_int8},
        {"name": f"{half}L-pruned-r{rank}-int4", "distill": deep, "quantize": int4},
        {"name": f"{half}L-pruned2-r{rank}-int8", "distill": deep2, "quantize": head_int8},
        # this machine's int8 class (full 8 bits on VNNI/AMX) beside the portable default (right on AVX2 too)
        {
            "name": f"{layers}L-pruned-r{rank}-int8-native",
            "distill": wide,
            "quantize": {**head_int8, "target_cpu": "native"},
        },
    ]
    if kd_ablation:
        twin = {**deep, "alpha": 0.0, "hidden_mse": 0.0}
        plan.append({"name": f"{half}L-pruned-r{rank}-int8-labels-only", "distill": twin, "quantize": head_int8})
    names = [e["name"] for e in plan]
    return [e for i, e in enumerate(plan) if e["name"] not in names[:i]]  # a 1- or 2-layer teacher repeats names


def resolve(
    entries: list[dict[str, Any]],
    base: dict[str, dict[str, Any]],
    shared_data: dict[str, Any],
    *,
    quick: bool = False,
    embedder: bool = False,
) -> list[Candidate]:
    """Each entry's stage overrides merged onto the recipe's stage sections, validated into configs."""
    out: list[Candidate] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise ConfigError(f"compress.candidates[{i}]: needs a `name:` and stage sections")
        name = entry["name"]
        unknown = sorted(set(entry) - {"name", *BUILD_STAGES})
        if unknown:
            raise ConfigError(
                f"compress.candidates[{i}] ({name}): unknown key {unknown[0]!r}; use {list(BUILD_STAGES)}"
            )
        if name in seen:
            raise ConfigError(f"compress.candidates: {name!r} appears twice; candidate names must be unique")
        seen.add(name)
        configs: dict[str, Any] = {}
        for stage, cls in BUILD_STAGES.items():
            override = entry.get(stage, {})
            if stage == "distill" and override is None:
                configs[stage] = None
                continue
            if not isinstance(override, dict):
                raise ConfigError(f"compress.candidates[{i}].{stage}: expected a mapping")
            inherited = dict(base.get(stage) or {})
            if stage == "quantize" and (override.get("weight_bits") == 4 or override.get("weight_only")):
                # The base section is an int8 recipe: its activation settings do not carry over to a weight-only
                # candidate (they would be refused as not applied); the candidate's own keys are still checked.
                inherited = {k: v for k, v in inherited.items() if k not in scope.INT8_ACTIVATION_OPTIONS}
            section = merge(inherited, override)
            section["data"] = merge(shared_data, section.get("data") or {})
            if quick:  # a smoke run wins over every candidate's own budget
                quick_section = dict(QUICK_SECTIONS.get(stage, {}))
                if embedder:
                    quick_section.pop("prune_batches", None)
                section = merge(section, quick_section)
                section["data"] = {**section["data"], **QUICK_DATA}
                for extra in ("augment_pairs", "augment_swaps"):
                    if section.get(extra):
                        section[extra] = min(int(section[extra]), QUICK_DATA["max_train_samples"])
            configs[stage] = from_dict(cls, section, prefix=f"compress.candidates[{i}].{stage}.")
        out.append(Candidate(name=name, configs=configs, overrides={k: v for k, v in entry.items() if k != "name"}))
    return out


def identity(value: Any) -> Any:
    """What a config contributes to a key: only the fields that differ from their defaults (recursively).

    So a new llmzip option, added with a default that keeps the old behaviour, does not change the key of any
    stage directory an earlier search built: those are reused, not retrained.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            current = getattr(value, f.name)
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = dataclasses.MISSING
            if current != default:
                out[f.name] = identity(current)
        return out
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [identity(v) for v in value]
    if isinstance(value, dict):
        return {str(k): identity(v) for k, v in value.items()}
    return value


def key(*parts: Any) -> str:
    """A short, stable hash of configs and parent keys: the name of a stage directory in the search's cache."""
    blob = json.dumps([identity(p) for p in parts], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# Defaults of the search's stage sections (a recipe's sections override them, key by key). The distill budget
# is the one bench-compress measured; the int8 recipe is sst2-minilm.yaml's (percentile ranges, int8 attention).
DEFAULT_SECTIONS: dict[str, dict[str, Any]] = {
    "distill": {"alpha": 0.5, "temperature": 2.0, "learning_rate": 1e-4, "batch_size": 32, "max_steps": 2000},
    "calibrate": {"num_samples": 256},
    "quantize": {"method": "percentile", "percentile": 99.99, "attention": True},
    "export": {},
    "bench": {"batch_sizes": [1, 8], "seq_len": 128, "threads": 1, "iterations": 30},
}
# BENCH_QUICK / --quick: every stage runs, on a few rows and steps (minutes on the reference teacher).
QUICK_SECTIONS: dict[str, dict[str, Any]] = {
    "distill": {"max_steps": 20, "prune_batches": 2, "epochs": 1.0},
    "calibrate": {"num_samples": 32},
    "bench": {"iterations": 3, "warmup": 1},
}
QUICK_DATA = {"max_train_samples": 640, "max_eval_samples": 64}
RECIPE_KEYS = {"model", "data", "compress", *SECTIONS}


@dataclass
class Plan:
    teacher: str
    config: CompressConfig
    candidates: list[Candidate]
    export: ExportConfig
    bench: BenchConfig


def teacher_shape(config: Any) -> tuple[int, ...]:
    """(layers, heads, FFN neurons, hidden size, positions) of a model config: what sizes the planned candidates."""
    names = ("num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_size", "max_position_embeddings")
    return tuple(int(getattr(config, n, 0) or 0) for n in names)


def build_plan(
    values: dict[str, Any], *, teacher_shape: tuple[int, ...] | None, quick: bool, task: str | None = None
) -> Plan:
    """A validated search from a recipe mapping (`model`, `data`, stage sections as bases, `compress`).

    `teacher_shape` (see `teacher_shape`) sizes the planned candidates when the recipe lists none; `task` (the
    teacher's, a TaskKind value) picks the planned set: a sentence embedder's students are layer subsets.
    """
    embedder = task == scope.SENTENCE_EMBEDDING
    unknown = sorted(set(values) - RECIPE_KEYS)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown compress recipe section; known: {', '.join(sorted(RECIPE_KEYS))}")
    model = values.get("model")
    if not isinstance(model, str) or not model:
        raise ConfigError("model: the search needs a teacher (`model:` in the recipe, or TEACHER on the command line)")
    shared = dict(values.get("data") or {})
    if quick:
        shared = {**shared, **QUICK_DATA}
    sections: dict[str, dict[str, Any]] = {}
    for name in SECTIONS:
        given = values.get(name) or {}
        if not isinstance(given, dict):
            raise ConfigError(f"{name}: expected a mapping")
        sections[name] = merge(DEFAULT_SECTIONS[name], given)
        if quick:
            quick_section = dict(QUICK_SECTIONS.get(name, {}))
            if embedder:  # no pruning to measure importance for
                quick_section.pop("prune_batches", None)
            sections[name] = merge(sections[name], quick_section)
            if "data" in sections[name]:
                sections[name]["data"] = {**sections[name]["data"], **QUICK_DATA}
    search = dict(values.get("compress") or {})
    search["data"] = merge(shared, search.get("data") or {})
    if quick:
        search["data"] = {**search["data"], **QUICK_DATA}
    config = from_dict(CompressConfig, search, prefix="compress.")
    entries = config.candidates
    if entries is None:
        if teacher_shape is None:
            raise ConfigError("compress.candidates: none listed and the teacher's shape is unknown; list candidates")
        entries = (
            embedder_plan(teacher_shape) if embedder else default_plan(teacher_shape, kd_ablation=config.kd_ablation)
        )
    candidates = resolve(entries, sections, shared, quick=quick, embedder=embedder)
    export = from_dict(
        ExportConfig, {**sections["export"], "data": merge(shared, sections["export"].get("data") or {})}
    )
    bench_section = {**sections["bench"], "data": merge(shared, sections["bench"].get("data") or {})}
    bench = from_dict(BenchConfig, bench_section, prefix="bench.")
    # The reported split is never the selection split (llmzip/search/splits.py): unset, it becomes the data's test.
    given = "eval_split" in (((values.get("bench") or {}).get("data")) or {})
    bench = splits.report_split(config.data, bench, bench_split_given=given)
    return Plan(teacher=model, config=config, candidates=candidates, export=export, bench=bench)
