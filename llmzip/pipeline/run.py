"""run: the whole chain from one recipe: finetune → distill → calibrate → quantize → export → bench.

Every stage writes its own directory under OUT (each one atomic), and `run.json` is written last, so a run
without it is one that did not finish. With `--overwrite`, a previous OUT is moved aside (not deleted) while the
new run writes, put back if the run fails or is interrupted (or, after a SIGKILL, by the next run on OUT), and
deleted only once the new run has written `run.json`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from llmzip import scope
from llmzip.artifact import atomic_write_text, read_manifest, resolve_pip_model, strict_json
from llmzip.config import to_dict
from llmzip.data import data_paths
from llmzip.outputs import check_output, rebuilt
from llmzip.progress import console
from llmzip.recipe import Recipe
from llmzip.sources.gguf import gguf_source

RUN_FILE = "run.json"
# Variant names the benchmarks and README quote; keep them stable.
BENCH_NAMES = {
    "teacher": "teacher-torch-fp32",
    "teacher_onnx": "teacher-ort-fp32",
    "student_onnx": "student-ort-fp32",
    "student_int8": "student-llmzip-int8",
}


def _banner(name: str, target: Path) -> None:
    console.rule(f"[bold]{name}[/] → {target}")


def check_options(recipe: Recipe) -> None:
    """Every section's options against the task of the recipe's model, before any stage runs (llmzip/scope.py)."""
    from llmzip.modeling import source_config
    from llmzip.tasks import TaskKind, get, task_of

    if gguf_source(str(recipe.model)) is not None:
        task = get(TaskKind.CAUSAL_LM)  # import reads GGUF files as causal LMs only
    else:
        task = task_of(source_config(resolve_pip_model(recipe.model)))
    where = scope.Scope(task.kind.value, task_weight_only=task.weight_only, where=recipe.model)
    scope.check_stages(recipe.stages, where)


def run(recipe: Recipe, out_dir: Path, *, overwrite: bool = False) -> dict[str, Any]:
    out_dir = Path(out_dir)
    check_options(recipe)
    data = [p for c in recipe.stages.values() if hasattr(c, "data") for p in data_paths(c.data)]

    def decide() -> bool:
        check_output(out_dir, overwrite=overwrite)
        return False  # a run is always made anew

    def complete(path: Path) -> bool:
        return (path / RUN_FILE).is_file()

    with rebuilt(out_dir, inputs=[Path(recipe.model), *data], complete=complete, decide=decide, keep_partial=False):
        result = _chain(recipe, out_dir)
        atomic_write_text(out_dir / RUN_FILE, strict_json(result, where=RUN_FILE))
    return result


def _chain(recipe: Recipe, out_dir: Path) -> dict[str, Any]:
    from llmzip.stages.bench import bench
    from llmzip.stages.calibrate import calibrate
    from llmzip.stages.distill import distill
    from llmzip.stages.export import export
    from llmzip.stages.finetune import finetune
    from llmzip.stages.quantize import quantize

    started = time.time()
    s = recipe.stages
    dirs: dict[str, Path] = {}

    teacher: str | Path = recipe.model
    if gguf_source(str(recipe.model)) is not None:  # a llama.cpp file: converted once into a safetensors folder
        from llmzip.stages.import_model import import_model

        _banner("import", out_dir / "imported")
        teacher = dirs["imported"] = import_model(str(recipe.model), out_dir / "imported")
    if "finetune" in s:
        _banner("finetune", out_dir / "teacher")
        teacher = dirs["teacher"] = finetune(str(teacher), out_dir / "teacher", config=s["finetune"])
    student: str | Path = teacher
    if "distill" in s:
        _banner("distill", out_dir / "student")
        student = dirs["student"] = distill(str(teacher), out_dir / "student", config=s["distill"])
    _banner("calibrate", out_dir / "calibration")
    dirs["calibration"] = calibrate(Path(student), out_dir / "calibration", config=s["calibrate"])
    precision = f"int{s['quantize'].weight_bits}"
    _banner("quantize", out_dir / f"student-{precision}")
    dirs["quantized"] = quantize(
        Path(student), dirs["calibration"], out_dir / f"student-{precision}", config=s["quantize"]
    )
    _banner("export", out_dir / "onnx")
    dirs["onnx_int8"] = export(dirs["quantized"], out_dir / "onnx" / f"student-{precision}", config=s["export"])
    result: dict[str, Any] = {"recipe": recipe.raw, "resolved": {k: to_dict(v) for k, v in s.items()}}
    if "bench" in s:
        # The fp32 baselines are measured in the same run, on the same machine, beside the int8 model.
        dirs["onnx_teacher"] = export(Path(teacher), out_dir / "onnx" / "teacher-fp32", config=s["export"])
        bench_dirs = [Path(teacher), dirs["onnx_teacher"]]
        names = [BENCH_NAMES["teacher"], BENCH_NAMES["teacher_onnx"]]
        if "distill" in s:
            dirs["onnx_student"] = export(Path(student), out_dir / "onnx" / "student-fp32", config=s["export"])
            bench_dirs.append(dirs["onnx_student"])
            names.append(BENCH_NAMES["student_onnx"])
        bench_dirs.append(dirs["onnx_int8"])
        names.append(BENCH_NAMES["student_int8"].replace("int8", precision))
        _banner("bench", out_dir / "bench")
        result["bench"] = bench(bench_dirs, config=s["bench"], names=names, out_dir=out_dir / "bench")
        dirs["bench"] = out_dir / "bench"
    result["stages"] = {}
    for key, path in dirs.items():
        manifest = read_manifest(path) or {}
        result["stages"][key] = {
            "path": str(path),
            "stage": manifest.get("stage"),
            "duration_s": manifest.get("duration_s"),
            "metrics": manifest.get("metrics", {}),
        }
    result["duration_s"] = round(time.time() - started, 1)
    return result
