"""compress: teacher + data → the smallest (or fastest) model within an accuracy budget, by a measured search.

Every candidate is made by the ordinary stages (distill → calibrate → quantize → export) into
`OUT/stages/<stage>-<key>`, where the key hashes the teacher, the data files, the stage config and the parent's
key: a second run (`--resume`, or a wider plan) reuses every stage and measurement whose inputs did not change,
and candidates that share a student share its directory. Each candidate is measured by bench's code beside the
PyTorch teacher (llmzip/search/measure.py); the Pareto list goes to results.json + pareto.png, and the winner
is copied to `OUT/model`, an ordinary export directory whose manifest carries its whole lineage.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

from llmzip import tasks
from llmzip.artifact import (
    EXTERNAL,
    MANIFEST,
    atomic_write_text,
    open_model_source,
    read_manifest,
    sha256_paths,
    strict_json,
)
from llmzip.bench.variants import onnx_size_mb
from llmzip.config import BenchConfig, ExportConfig, TaskKind, to_dict
from llmzip.data import data_paths
from llmzip.errors import ArtifactError, LlmzipError, Terminated
from llmzip.outputs import rebuilt, staging
from llmzip.progress import console, step
from llmzip.search import pareto, splits
from llmzip.search.plan import Candidate, CompressConfig, Plan, key

ACCEPTS = ("finetune", "distill", "import", EXTERNAL)
MARKER = "compress.json"  # written first: OUT is a search directory (what --resume continues)
RESULTS = "results.json"


def _open_out(out_dir: Path, *, resume: bool, overwrite: bool, marker: dict[str, Any]) -> bool:
    """What to do with an existing OUT: True = continue it (--resume on the same search), False = build anew
    (nothing there, or --overwrite); anything else is refused before any work."""
    if not out_dir.exists() or overwrite:
        return False
    if not out_dir.is_dir() or not (out_dir / MARKER).is_file():
        raise ArtifactError(f"{out_dir} exists and is not a compress search; choose another --out or pass --overwrite")
    if not resume:
        raise ArtifactError(
            f"{out_dir} holds a compress search; pass --resume to continue it (measured candidates are reused) "
            "or --overwrite to start over"
        )
    _check_same_search(out_dir, marker)
    return True


def _check_options(plan: Plan, teacher: Path) -> None:
    """Every candidate's stage configs, and export's and bench's, against the teacher's task (llmzip/scope.py)."""
    from llmzip import scope
    from llmzip.modeling import source_config
    from llmzip.tasks import task_of

    task = task_of(source_config(teacher))
    where = scope.Scope(task.kind.value, task_weight_only=task.weight_only, where=plan.teacher)
    for candidate in plan.candidates:
        for stage, config in candidate.configs.items():
            if config is not None:
                scope.check(config, where, prefix=f"candidate {candidate.name}: {stage}.")
    scope.check_stages({"export": plan.export, "bench": plan.bench, "compress": plan.config}, where)


def _check_same_search(out_dir: Path, new: dict[str, Any]) -> None:
    """--resume continues only the search OUT holds: same teacher, same data, and every candidate it already
    has still means the same thing (new candidates and another budget or objective are fine: the rest is
    re-ranked). Otherwise its results, records and model/ would be replaced by another search's."""
    try:
        old = json.loads((out_dir / MARKER).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ArtifactError(f"{out_dir / MARKER}: unreadable ({err}); pass --overwrite to start over") from None
    fix = "choose another --out, or pass --overwrite to replace it"
    old_teacher, new_teacher = old.get("teacher") or {}, new["teacher"]
    if old_teacher.get("sha256") != new_teacher.get("sha256"):
        raise ArtifactError(
            f"{out_dir} is a search of another teacher ({old_teacher.get('path')}, sha256 "
            f"{str(old_teacher.get('sha256'))[:12]}…), not of {new_teacher['path']} ({new_teacher['sha256'][:12]}…); "
            f"--resume would replace its results: {fix}"
        )
    if old.get("root_key") != new["root_key"]:
        raise ArtifactError(
            f"{out_dir} is a search on other data files (or other contents of them); --resume would replace its "
            f"results: {fix}"
        )
    before = {c.get("name"): c for c in old.get("candidates") or []}
    for candidate in new["candidates"]:
        was = before.get(candidate["name"])
        if was is None:
            continue
        if was.get("overrides") != candidate["overrides"] or was.get("plan", candidate["plan"]) != candidate["plan"]:
            raise ArtifactError(
                f"{out_dir}: candidate {candidate['name']!r} was planned with other settings there (its overrides, "
                f"the recipe's stage sections or --quick differ); give it another name, {fix}"
            )


def compress(plan: Plan, out_dir: Path, *, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Build, measure and rank the plan's candidates; returns the search result (also OUT/results.json)."""
    config, candidates, bench_config = plan.config, plan.candidates, plan.bench
    started = time.time()
    out_dir = Path(out_dir)
    source = open_model_source(plan.teacher, verb="compress", accepts=ACCEPTS)
    _check_options(plan, source.path)
    selection_warning = splits.leak_warning(config.data)
    if selection_warning is not None:
        console.print(f"[bold yellow]warning:[/] {selection_warning}")
    data_files = sorted({p for c in candidates for s in c.configs.values() if s for p in data_paths(s.data)})
    data_files += [p for p in data_paths(bench_config.data) if p not in data_files]
    inputs = [source.path, *data_files]
    root = key(source.hash, sha256_paths([Path(p) for p in data_files if Path(p).is_file()]))
    marker = {
        "teacher": source.ref(),
        "root_key": root,
        "config": to_dict(config),
        "candidates": [{**c.describe(), "plan": key(*c.configs.values())} for c in candidates],
    }

    def decide() -> bool:
        return _open_out(out_dir, resume=resume, overwrite=overwrite, marker=marker)

    def start(resumed: bool) -> None:  # the marker first: even a search killed at once can be resumed
        if resumed:  # keep every candidate the search has ever had
            old = json.loads((out_dir / MARKER).read_text())
            names = {c["name"] for c in marker["candidates"]}
            marker["candidates"] = [c for c in old.get("candidates") or [] if c.get("name") not in names] + marker[
                "candidates"
            ]
        atomic_write_text(out_dir / MARKER, strict_json(marker, where=MARKER))

    try:
        with rebuilt(out_dir, inputs=inputs, complete=_finished, decide=decide, keep_partial=True, start=start):
            result = _search(out_dir, plan, source.path, root)
            result["splits"] = {"selection": config.data.eval_split, "report": bench_config.data.eval_split}
            result["selection_warnings"] = [selection_warning] if selection_warning else []
            result["wall_s"] = round(time.time() - started, 1)
            atomic_write_text(out_dir / RESULTS, strict_json(result, where=RESULTS))
            _plot(out_dir / "pareto.png", result)
    except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM: say what is left, and how to go on
        what = "terminated (SIGTERM)" if isinstance(err, Terminated) else "interrupted"
        raise type(err)(
            f"{what}; any previous search in {out_dir} is back as it was, a new one keeps what it finished: "
            "`--resume` continues it"
        ) from None
    return result


def _finished(out_dir: Path) -> bool:
    return (out_dir / RESULTS).is_file()


def _search(out_dir: Path, plan: Plan, teacher: Path, root: str) -> dict[str, Any]:
    """Build and measure every candidate into `out_dir`, rank them and write the winner to `out_dir/model`."""
    config, candidates = plan.config, plan.candidates
    (out_dir / "stages").mkdir(exist_ok=True)
    (out_dir / "candidates").mkdir(exist_ok=True)
    search = _Search(out_dir, teacher, root, config, plan.export, plan.bench)
    teacher_row = search.teacher()
    rows: list[dict[str, Any]] = []
    for i, candidate in enumerate(candidates, 1):
        console.rule(f"[bold]candidate {i}/{len(candidates)}: {candidate.name}")
        try:
            rows.append(search.candidate(candidate))
        except LlmzipError as err:  # one bad candidate (e.g. a parity failure) must not end the search
            step(f"{candidate.name} failed: {err}")
            rows.append({"name": candidate.name, "error": str(err), "overrides": candidate.overrides})
    result = _rank(config, teacher_row, rows)
    if result["best"] is not None:
        best = next(r for r in rows if r["name"] == result["best"])
        _write_model(Path(best["path"]), out_dir / "model", best, result, search.lineage(Path(best["path"])))
        result["model"] = str(out_dir / "model")
    return result


class _Search:
    """The stage cache of one search directory and the measurer (loaded on first use)."""

    def __init__(
        self,
        out: Path,
        teacher: Path,
        root: str,
        config: CompressConfig,
        export_config: ExportConfig,
        bench: BenchConfig,
    ) -> None:
        self.out, self.teacher_path, self.root, self.config = out, teacher, root, config
        self.export_config, self.bench = export_config, bench
        self._measurer: Any = None

    def measurer(self) -> Any:
        if self._measurer is None:  # loading the teacher and both eval sets: only when something is measured
            from llmzip.search.measure import Measurer

            self._measurer = Measurer(self.teacher_path, self.bench, self.config.data)
        return self._measurer

    def _stage(self, name: str, parent_key: str, stage_config: Any, build: Any) -> tuple[Path, str]:
        k = key(parent_key, name, stage_config)
        target = self.out / "stages" / f"{name}-{k}"
        if (target / MANIFEST).is_file():
            step(f"{name}: reusing {target}")
        else:
            build(target)
        return target, k

    def teacher(self) -> dict[str, Any]:
        from llmzip.stages.export import export

        cached = self.out / "candidates" / "_teacher.json"
        k = key(self.root, "teacher", self.bench, self.config.data, self.export_config)
        if cached.is_file():
            row = json.loads(cached.read_text())
            if row.get("key") == k:
                return dict(row)
        onnx_dir, _ = self._stage(
            "export", self.root, self.export_config, lambda t: export(self.teacher_path, t, config=self.export_config)
        )
        onnx = read_manifest(onnx_dir) or {}
        step("teacher accuracy (PyTorch fp32)")
        row = {
            "key": k,
            "path": str(self.teacher_path),
            **self.measurer().teacher_row(),
            "onnx_size_mb": onnx_size_mb(onnx_dir / onnx.get("model_file", "model.onnx")),
            "onnx_path": str(onnx_dir),
            "metric": tasks.get(onnx.get("task") or TaskKind.SEQUENCE_CLASSIFICATION.value).metric,
        }
        atomic_write_text(cached, strict_json(row, where=str(cached)))
        return row

    def _build(self, c: Candidate, distill_config: Any) -> tuple[Path, Path, str]:
        """One candidate's chain through the stages (each reused when built before): (model, export, key)."""
        from llmzip.stages.calibrate import calibrate
        from llmzip.stages.distill import distill
        from llmzip.stages.export import export
        from llmzip.stages.quantize import quantize

        model, k = self.teacher_path, self.root
        if distill_config is not None:
            model, k = self._stage(
                "distill", k, distill_config, lambda t: distill(str(self.teacher_path), t, config=distill_config)
            )
        student = model
        calib, k = self._stage(
            "calibrate", k, c.configs["calibrate"], lambda t: calibrate(student, t, config=c.configs["calibrate"])
        )
        quant, k = self._stage(
            "quantize", k, c.configs["quantize"], lambda t: quantize(student, calib, t, config=c.configs["quantize"])
        )
        onnx, k = self._stage("export", k, self.export_config, lambda t: export(quant, t, config=self.export_config))
        return model, onnx, k

    def candidate(self, c: Candidate) -> dict[str, Any]:
        """Build a candidate (a student once per seed), measure it beside the teacher: size and latency once,
        accuracies per seed, the row's accuracies their mean."""
        base = c.configs["distill"]
        seeds = self.config.seeds if base is not None and self.config.seeds else [None]
        configs = [base if s is None else dataclasses.replace(base, seed=s) for s in seeds]
        if len(seeds) > 1:
            step(f"{c.name}: one student per seed {seeds}")
        chains = [self._build(c, config) for config in configs]
        measured = self.out / "candidates" / f"{c.name}.json"
        keys = chains[0][2] if len(chains) == 1 else [k for _, _, k in chains]
        mk = key(keys, self.bench, self.config.data)
        if measured.is_file():
            row = json.loads(measured.read_text())
            if row.get("key") == mk:
                step(f"{c.name}: reusing its measurement")
                return dict(row)
        step(f"measuring {c.name} beside the teacher")
        row = {"key": mk, **self.measurer().candidate(chains[0][1], c.name), "overrides": c.overrides}
        if len(chains) > 1:
            runs = [{"seed": seeds[0], "accuracy": row["accuracy"], "selection_accuracy": row["selection_accuracy"]}]
            for seed, (_, onnx, _) in zip(seeds[1:], chains[1:]):
                report, selection = self.measurer().export_accuracies(onnx, c.name)
                runs.append({"seed": seed, "accuracy": round(report, 4), "selection_accuracy": round(selection, 4)})
            for run, (_, onnx, _) in zip(runs, chains):
                run["path"] = str(onnx)
            row.update(pareto.seed_summary(runs))
        chosen = next((m for m, onnx, _ in chains if str(onnx) == row["path"]), chains[0][0])  # the chosen seed's
        row["student"] = _student_info(chosen) if base is not None else None
        atomic_write_text(measured, strict_json(row, where=str(measured)))
        return row

    def lineage(self, export_dir: Path) -> list[dict[str, Any]]:
        """The export and every directory it descends from, back to the teacher: stage, path, sha256, config."""
        chain: list[dict[str, Any]] = []
        current: Path | None = export_dir
        while current is not None and (current / MANIFEST).is_file():
            m = read_manifest(current) or {}
            chain.append(
                {
                    "stage": m.get("stage"),
                    "path": str(current),
                    "parents": m.get("parents"),
                    "config": m.get("config"),
                    "metrics": m.get("metrics"),
                }
            )
            parents = m.get("parents") or []
            current = Path(parents[0]["path"]) if parents else None
            if current is not None and not (current / MANIFEST).is_file():
                chain.append({"stage": "teacher", **parents[0]})
                current = None
        return chain


def _student_info(model_dir: Path) -> dict[str, Any]:
    m = read_manifest(model_dir) or {}
    metrics = m.get("metrics", {})
    out = {k: metrics.get(k) for k in ("student_params", "student_layers", "eval_accuracy", "steps", "losses")}
    out["structure"] = (metrics.get("init") or {}).get("structure")
    return out


def _rank(config: CompressConfig, teacher: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in rows if "error" not in r]
    # Selection uses the selection split; the reported `accuracy` (bench's eval split) never chooses.
    views = [{**r, "accuracy": r["selection_accuracy"]} for r in ok]
    chosen = pareto.best_within(
        views,
        teacher_accuracy=teacher["selection_accuracy"],
        max_drop_pt=config.max_accuracy_drop,
        objective=config.objective,
    )
    for r in ok:
        r["size_ratio_vs_teacher_onnx"] = round(teacher["onnx_size_mb"] / r["size_mb"], 2)
        r["accuracy_drop_pt"] = round(100 * (teacher["accuracy"] - r["accuracy"]), 2)
        r["selection_drop_pt"] = round(100 * (teacher["selection_accuracy"] - r["selection_accuracy"]), 2)
        r["within_budget"] = r["selection_drop_pt"] <= config.max_accuracy_drop + 1e-9
    return {
        "teacher": teacher,
        "objective": config.objective.value,
        "max_accuracy_drop_pt": config.max_accuracy_drop,
        "candidates": rows,
        "pareto": pareto.pareto(ok),
        "best": None if chosen is None else chosen["name"],
    }


def _write_model(
    export_dir: Path, target: Path, row: dict[str, Any], result: dict[str, Any], lineage: list[dict[str, Any]]
) -> None:
    """Copy the winning export as OUT/model (atomically), its manifest extended with how it was chosen."""
    with staging(target, overwrite=True) as tmp:
        for item in export_dir.iterdir():
            if item.is_file():
                shutil.copy2(item, tmp / item.name)
        manifest = json.loads((tmp / MANIFEST).read_text())
        manifest["compress"] = {
            "candidate": row["name"],
            "objective": result["objective"],
            "max_accuracy_drop_pt": result["max_accuracy_drop_pt"],
            "measured": {k: row[k] for k in ("accuracy", "selection_accuracy", "size_mb", "latency_ms")},
            "teacher": {k: result["teacher"][k] for k in ("accuracy", "selection_accuracy", "onnx_size_mb")},
            "lineage": lineage,
        }
        (tmp / MANIFEST).write_text(strict_json(manifest, where="model manifest"))


def _plot(path: Path, result: dict[str, Any]) -> None:
    from llmzip.bench import plots

    ok = [r for r in result["candidates"] if "error" not in r]
    if not ok or not plots.available():
        return
    on_front = set(result["pareto"])
    points = [
        {
            "name": ("* " if r["name"] in on_front else "") + r["name"],
            "size_mb": r["size_mb"],
            "accuracy": r["accuracy"],
        }
        for r in ok
    ]
    plots.scatter_png(
        path,
        points,
        x="size_mb",
        y="accuracy",
        title="compress: accuracy vs size (* = Pareto)",
        xlabel="ONNX size (MB)",
        ylabel="accuracy",
        hline=result["teacher"]["accuracy"] - result["max_accuracy_drop_pt"] / 100,
    )
