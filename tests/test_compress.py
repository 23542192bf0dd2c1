"""`llmzip compress`: the search's pure selection logic, its plan validation, and the whole search on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llmzip.config.choices import Objective
from llmzip.errors import ConfigError
from llmzip.search.pareto import best_within, latency_score, pareto
from llmzip.search.plan import build_plan, default_plan
from tests.conftest import compress_recipe, invoke


def _row(name: str, acc: float, size: float, speedup: float) -> dict[str, Any]:
    return {"name": name, "accuracy": acc, "size_mb": size, "speedup_vs_teacher_torch_fp32": {"1x8": speedup}}


def test_pareto_and_budget_choice() -> None:
    rows = [
        _row("big-accurate", 0.90, 20.0, 2.0),
        _row("small", 0.88, 3.0, 6.0),
        _row("dominated", 0.87, 4.0, 5.0),  # worse than "small" on all three
        _row("tiny-bad", 0.70, 1.0, 9.0),
    ]
    assert pareto(rows) == ["big-accurate", "small", "tiny-bad"]
    assert latency_score(rows[1]) == pytest.approx(1 / 6)
    chosen = best_within(rows, teacher_accuracy=0.90, max_drop_pt=2.0, objective=Objective.SIZE)
    assert chosen is not None and chosen["name"] == "small"
    fastest = best_within(rows, teacher_accuracy=0.90, max_drop_pt=25.0, objective=Objective.LATENCY)
    assert fastest is not None and fastest["name"] == "tiny-bad"
    assert best_within(rows, teacher_accuracy=0.95, max_drop_pt=1.0, objective=Objective.SIZE) is None


def test_plan_is_validated_before_any_work() -> None:
    # The demo sample has no test split to report on by default: the report reads one named explicitly.
    base: dict[str, Any] = {"model": "some/teacher", "bench": {"data": {"eval_split": "test"}}}
    with pytest.raises(ConfigError, match="unknown key 'quantise'"):
        build_plan(
            {**base, "compress": {"candidates": [{"name": "a", "quantise": {}}]}}, teacher_shape=None, quick=True
        )
    with pytest.raises(ConfigError, match="appears twice"):
        build_plan({**base, "compress": {"candidates": [{"name": "a"}, {"name": "a"}]}}, teacher_shape=None, quick=True)
    with pytest.raises(ConfigError, match="keep_heads"):
        build_plan(
            {**base, "compress": {"candidates": [{"name": "a", "distill": {"keep_heads": 0}}]}},
            teacher_shape=None,
            quick=True,
        )
    plan = build_plan(base, teacher_shape=(6, 12, 1536, 384, 512), quick=False)
    names = [c.name for c in plan.candidates]
    assert names == [e["name"] for e in default_plan((6, 12, 1536, 384, 512), kd_ablation=True)]
    pruned = next(c for c in plan.candidates if c.name == "3L-pruned-r64-int8")
    assert (pruned.configs["distill"].keep_heads, pruned.configs["distill"].keep_ffn) == (8, 768)
    wide = next(c for c in plan.candidates if c.name == "6L-pruned-r64-int4")
    assert (wide.configs["distill"].keep_heads, wide.configs["quantize"].weight_bits) == (6, 4)
    assert next(c for c in plan.candidates if c.name == "teacher-int8").configs["distill"] is None
    # --quick wins over a candidate's own budget (a smoke run must stay minutes long)
    long = {**base, "compress": {"candidates": [{"name": "a", "distill": {"max_steps": 3000, "augment_pairs": 9999}}]}}
    quick = build_plan(long, teacher_shape=None, quick=True).candidates[0].configs["distill"]
    assert (quick.max_steps, quick.augment_pairs, quick.data.max_train_samples) == (20, 640, 640)


def _recipe(tmp_path: Path, teacher: Path, candidates: list[dict[str, Any]], drop: float = 100.0) -> Path:
    return compress_recipe(tmp_path / "compress.yaml", teacher, candidates, drop)


SHRUNK = {"num_layers": 1, "keep_heads": 1, "keep_ffn": 16, "vocabulary": "task", "embedding_rank": 8}
HEAD_INT8 = {"exclude": ["(^|\\.)classifier(\\.|$)"]}


def test_compress_search_end_to_end(tmp_path: Path, chain: dict[str, Path]) -> None:
    candidates = [
        {"name": "teacher-int8", "distill": None},
        {"name": "1L-int8", "distill": {"num_layers": 1}},
        {"name": "1L-shrunk-int8", "distill": {**SHRUNK, "max_positions": 32}, "quantize": HEAD_INT8},
        {
            "name": "1L-shrunk-int4",
            "distill": {**SHRUNK, "max_positions": 32},
            "quantize": {
                **HEAD_INT8,
                "weight_bits": 4,
                "weight_only": True,
                "weight_block_size": 16,
                "attention": False,
            },
        },
        {"name": "1L-lowrank-int8", "distill": {"num_layers": 1, "linear_rank": 4}, "quantize": HEAD_INT8},
        {"name": "impossible", "distill": {"num_layers": 1, "keep_heads": 99}},
    ]
    recipe = _recipe(tmp_path, chain["teacher"], candidates)
    out = tmp_path / "search"
    result = invoke("compress", "--recipe", recipe, "-o", out, "--quick", "--json")
    assert result.exit_code == 0, result.stderr
    found = json.loads(result.stdout)
    rows = {r["name"]: r for r in found["candidates"]}
    assert "heads must be between 1 and" in rows["impossible"]["error"]  # recorded; the search went on
    ok = [r for r in found["candidates"] if "error" not in r]
    assert len(ok) == 5, [r.get("error") for r in found["candidates"]]
    for r in ok:
        assert set(r["latency_ms"]) == {"1x32", "4x32"} and r["size_mb"] > 0 and 0 <= r["accuracy"] <= 1
    # Every shrinking step makes the ONNX file smaller: fewer heads/neurons, fewer and narrower embedding rows.
    assert rows["1L-shrunk-int8"]["size_mb"] < 0.8 * rows["1L-int8"]["size_mb"]
    assert rows["1L-shrunk-int4"]["size_mb"] < rows["1L-shrunk-int8"]["size_mb"]
    assert rows["1L-shrunk-int8"]["student"]["structure"]["pruning"]["heads_per_layer"] == 1
    assert rows["1L-lowrank-int8"]["size_mb"] < rows["1L-int8"]["size_mb"]  # rank 4 of a 32↔64 FFN pair
    # The budget is wide open, so the smallest model wins and is written as an ordinary export directory.
    assert found["best"] == min(ok, key=lambda r: r["size_mb"])["name"]
    assert found["best"] in found["pareto"]
    manifest = json.loads((out / "model" / "manifest.json").read_text())
    assert manifest["stage"] == "export"
    lineage = [link["stage"] for link in manifest["compress"]["lineage"]]
    assert lineage[:3] == ["export", "quantize", "distill"] and "finetune" in lineage
    bench = invoke("bench", out / "model", "--seq-len", 32, "--iterations", 3, "--batch-sizes", "1", "--json")
    assert bench.exit_code == 0, bench.stderr
    assert (out / "results.json").is_file() and (out / "compress.json").is_file()

    # A second run refuses to touch the search without --resume, and with it rebuilds nothing.
    again = invoke("compress", "--recipe", recipe, "-o", out, "--quick")
    assert again.exit_code != 0 and "--resume" in again.stderr
    stages = sorted(p.name for p in (out / "stages").iterdir())
    resumed = invoke("compress", "--recipe", recipe, "-o", out, "--quick", "--resume", "--json")
    assert resumed.exit_code == 0, resumed.stderr
    assert sorted(p.name for p in (out / "stages").iterdir()) == stages
    assert json.loads(resumed.stdout)["best"] == found["best"]


def test_compress_refuses_an_existing_folder_that_is_not_a_search(tmp_path: Path, chain: dict[str, Path]) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    recipe = _recipe(tmp_path, chain["teacher"], [{"name": "teacher-int8", "distill": None}])
    result = invoke("compress", "--recipe", recipe, "-o", out, "--quick", "--resume")
    assert result.exit_code != 0 and "not a compress search" in result.stderr
    assert (out / "keep.txt").read_text() == "user data"


def test_keys_hash_only_what_differs_from_the_defaults() -> None:
    from llmzip.config import DataConfig, DistillConfig
    from llmzip.search.plan import identity, key

    config = DistillConfig(num_layers=3, data=DataConfig(max_length=64), vocabulary="task-nearest")
    # A field added later with a neutral default would not appear here, so old stage directories keep their key.
    assert identity(config) == {"num_layers": 3, "data": {"max_length": 64}, "vocabulary": "task-nearest"}
    assert key(config) == key(DistillConfig(num_layers=3, data=DataConfig(max_length=64), vocabulary="task-nearest"))
    assert key(config) != key(DistillConfig(num_layers=2, data=DataConfig(max_length=64)))
    assert key("parent-a", config) != key("parent-b", config)


def test_compress_planned_candidates_from_the_command_line(tmp_path: Path, chain: dict[str, Path]) -> None:
    """No recipe: the plan is sized from the teacher's shape; the budget picks among what was measured."""
    out = tmp_path / "planned"
    args = ("compress", chain["teacher"], "-o", out, "--quick", "--max-accuracy-drop", 100, "--objective", "latency")
    report = ("--set", "bench.data.eval_split=train")  # the demo sample has no test split; select on validation
    result = invoke(*args, "--set", "data.max_length=32", "--set", "bench.seq_len=32", *report, "--json")
    assert result.exit_code == 0, result.stderr
    found = json.loads(result.stdout)
    names = [r["name"] for r in found["candidates"]]
    assert names[:2] == ["teacher-int8", "1L-int8"] and "1L-pruned-r5-int8-labels-only" in names
    assert all("error" not in r for r in found["candidates"]), [r.get("error") for r in found["candidates"]]
    ok = found["candidates"]
    fastest = min(ok, key=lambda r: (latency_score(r), -r["accuracy"], r["size_mb"]))
    assert found["objective"] == "latency" and found["best"] in {r["name"] for r in ok}
    assert set(found["pareto"]) <= set(names) and fastest["name"] in found["pareto"]


def test_compress_exits_8_when_nothing_meets_the_budget(
    tmp_path: Path, chain: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Results are printed and written first; then the exit code tells a CI job that the budget was not met."""
    import llmzip.search.compress as stage

    teacher = {"accuracy": 0.9, "selection_accuracy": 0.9, "onnx_size_mb": 1.0}
    row = _row("too-weak", 0.5, 0.1, 9.0) | {"selection_accuracy": 0.5, "latency_ms": {"1x8": 1.0}}
    row |= {"accuracy_drop_pt": 40.0, "size_ratio_vs_teacher_onnx": 10.0, "within_budget": False}
    fake = {"teacher": teacher, "objective": "size", "max_accuracy_drop_pt": 1.0, "candidates": [row]}
    monkeypatch.setattr(stage, "compress", lambda *a, **k: {**fake, "pareto": ["too-weak"], "best": None})
    recipe = _recipe(tmp_path, chain["teacher"], [{"name": "too-weak", "distill": None}], drop=1.0)
    result = invoke("compress", "--recipe", recipe, "-o", tmp_path / "strict", "--quick")
    assert result.exit_code == 8
    assert "no candidate is within 1.0 pt" in result.stderr and "too-weak" in result.stdout


def _split_folder(root: Path, *, test: bool, phrases: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    train = ["a wonderful film with a great cast", "the plot drags on and on", "an utterly charming story"]
    held = ["a wonderful film", "drags on", "charming story"] if phrases else ["a dull mess", "great fun", "so slow"]
    (root / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{i % 2}\n" for i, t in enumerate(train)))
    (root / "validation.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{i % 2}\n" for i, t in enumerate(held)))
    if test:
        (root / "test.tsv").write_text("sentence\tlabel\nnot bad at all\t1\nawful\t0\n")
    return root


def test_the_reported_split_defaults_to_test_and_is_never_the_selection_split(tmp_path: Path) -> None:
    candidates = {"candidates": [{"name": "a", "distill": {"num_layers": 1}}]}
    with_test = _split_folder(tmp_path / "with-test", test=True)
    plan = build_plan({"model": "t", "data": {"dataset": str(with_test)}, "compress": candidates},
                      teacher_shape=None, quick=True)  # fmt: skip
    assert plan.config.data.eval_split == "validation" and plan.bench.data.eval_split == "test"
    without = _split_folder(tmp_path / "no-test", test=False)
    with pytest.raises(ConfigError, match="reported split is the selection split"):
        build_plan({"model": "t", "data": {"dataset": str(without)}, "compress": candidates},
                   teacher_shape=None, quick=True)  # fmt: skip
    given = {"model": "t", "data": {"dataset": str(with_test)}, "compress": candidates,
             "bench": {"data": {"eval_split": "validation"}}}  # fmt: skip
    with pytest.raises(ConfigError, match="bench.data.eval_split"):  # asked for explicitly: refused, not moved
        build_plan(given, teacher_shape=None, quick=True)


def test_a_selection_split_of_training_phrases_is_flagged(tmp_path: Path) -> None:
    from llmzip.config import DataConfig
    from llmzip.search.splits import leak_warning

    leaky = DataConfig(dataset=str(_split_folder(tmp_path / "phrases", test=True, phrases=True)))
    clean = DataConfig(dataset=str(_split_folder(tmp_path / "clean", test=True)))
    warning = leak_warning(leaky)
    assert warning is not None and "3 of 3" in warning and "verbatim inside training rows" in warning
    assert leak_warning(clean) is None


def test_students_trained_once_per_seed_report_the_mean(tmp_path: Path, chain: dict[str, Path]) -> None:
    import yaml

    candidates = [{"name": "teacher-int8", "distill": None}, {"name": "1L-int8", "distill": {"num_layers": 1}}]
    recipe = _recipe(tmp_path, chain["teacher"], candidates)
    values = yaml.safe_load(recipe.read_text())
    values["compress"]["seeds"] = [0, 1, 2]
    recipe.write_text(yaml.safe_dump(values))
    result = invoke("compress", "--recipe", recipe, "-o", tmp_path / "s", "--quick", "--json")
    assert result.exit_code == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)["candidates"]}
    student, teacher = rows["1L-int8"], rows["teacher-int8"]
    assert "seeds" not in teacher  # the teacher itself is not retrained: one measurement
    runs = student["seeds"]
    assert [r["seed"] for r in runs] == [0, 1, 2] and len({r["path"] for r in runs}) == 3  # three students
    assert student["accuracy"] == pytest.approx(sum(r["accuracy"] for r in runs) / 3, abs=1e-4)
    assert student["selection_accuracy"] == pytest.approx(sum(r["selection_accuracy"] for r in runs) / 3, abs=1e-4)
    best = max(runs, key=lambda r: r["selection_accuracy"])
    assert student["path"] == best["path"] and student["chosen_seed"] == best["seed"]
    distilled = [p for p in (tmp_path / "s" / "stages").iterdir() if p.name.startswith("distill-")]
    seeds = sorted(json.loads((p / "manifest.json").read_text())["config"]["seed"] for p in distilled)
    assert seeds == [0, 1, 2]
    assert "±" in invoke("compress", "--recipe", recipe, "-o", tmp_path / "s", "--quick", "--resume").stdout
    with pytest.raises(ConfigError, match="distinct"):
        build_plan({**values, "compress": {**values["compress"], "seeds": [1, 1]}}, teacher_shape=None, quick=True)
