"""bench: model directories (ONNX and/or PyTorch) + eval data → latency, throughput, size and accuracy, side by side.

Variants are timed round-robin (one call each, order rotated every round) so that machine noise lands on all
of them alike instead of on whichever happened to run during a busy second. The pieces are public so a
benchmark script can time variants it built itself (a bare .onnx from onnxruntime's quantizer, a bf16 copy):
`load_variant` / `onnx_file_variant` (llmzip/bench/variants.py, re-exported here) → `eval_inputs` → `measure`
(its round-robin timing: llmzip/bench/timing.py).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from llmzip import data as data_mod
from llmzip.artifact import EXTERNAL, open_artifact, strict_json, write_manifest
from llmzip.bench import report
from llmzip.bench.timing import first_rows, summary, time_round_robin
from llmzip.bench.variants import Variant as Variant
from llmzip.bench.variants import int8_saturation, ort_dynamic_int8
from llmzip.bench.variants import load_variant as load_variant
from llmzip.bench.variants import onnx_file_variant as onnx_file_variant
from llmzip.config import BenchConfig, to_dict
from llmzip.data import data_paths
from llmzip.errors import ConfigError, ModelError
from llmzip.modeling import source_config
from llmzip.outputs import check_output, staging
from llmzip.progress import quiet_libraries, step
from llmzip.runtime import hardware
from llmzip.runtime.machine import CpuLoad, machine_info
from llmzip.tasks import checked_task

ACCEPTS = ("finetune", "distill", "quantize", "export", EXTERNAL)
RESULTS_FILE = "results.json"


def variant_names(dirs: list[Path], names: list[str] | None) -> list[str]:
    if names:
        if len(names) != len(dirs):
            raise ConfigError(f"--name was given {len(names)} times for {len(dirs)} model directories; give one each")
        return names
    out = [d.name for d in dirs]
    return [f"{d.parent.name}/{d.name}" if out.count(d.name) > 1 else d.name for d in dirs]


def load_eval_data(config: BenchConfig) -> tuple[Any, Any]:
    """(eval dataset, its Source) per config.data."""
    d = config.data
    loaded = data_mod.load_split(d, d.eval_split, limit=d.max_eval_samples)
    assert loaded is not None  # only optional=True returns None
    return loaded


def eval_inputs(variant: Variant, eval_ds: Any, config: BenchConfig) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """The eval set as this variant's padded int64 feeds, and its labels (None when the model names none)."""
    enc = variant.task.encode(
        variant.tokenizer, eval_ds, config.data, variant.label2id, max_length=config.seq_len, padding="max_length"
    )
    missing = [k for k in variant.input_names if k not in enc.column_names]
    if missing:
        raise ModelError(f"{variant.name}: the model takes {missing[0]!r}, which its tokenizer does not produce")
    feeds = {k: np.asarray(enc[k], dtype=np.int64) for k in variant.input_names}
    return feeds, (np.asarray(enc["labels"]) if variant.label2id is not None else None)


def accuracy(variant: Variant, feeds: dict[str, np.ndarray], labels: np.ndarray, batch: int) -> float:
    """The variant's task metric (accuracy for a classifier, entity F1 for a token classifier) on the eval set."""
    outs, golds = [], []
    for i in range(0, len(labels), batch):
        logits = variant.run({k: v[i : i + batch] for k, v in feeds.items()})
        if not np.isfinite(logits).all():
            raise ModelError(f"{variant.name}: NaN/Inf logits on the eval data; its accuracy would mean nothing")
        outs.append(logits)
        golds.append(labels[i : i + batch])
    id2label = {v: k for k, v in (variant.label2id or {}).items()}
    return variant.task.score(outs, golds, id2label)


def _check_gates(config: BenchConfig, count: int) -> None:
    if (config.min_speedup is not None or config.max_accuracy_drop is not None) and count < 2:
        raise ConfigError(
            "--min-speedup/--max-accuracy-drop compare the last model with the first; give at least two models"
        )


def measure(
    variants: list[Variant],
    feeds: list[dict[str, np.ndarray]],
    config: BenchConfig,
    *,
    labels: list[np.ndarray | None] | None = None,
    saturation: bool = True,
) -> dict[str, Any]:
    """Accuracy, then round-robin timing at each batch size: → {machine, config, baseline, variants, warnings[, gates]}.

    The first variant is the speedup baseline; the last is the gates' candidate. `saturation=False` skips the
    emulated AVX2 kernel check of int8 variants (minutes for a 6-layer model on 2 cores; a caller timing many
    exports that already recorded it, such as compress, skips it).
    """
    if not variants or len(feeds) != len(variants) or (labels is not None and len(labels) != len(variants)):
        raise ConfigError(f"measure needs one feed (and label) set per variant; got {len(variants)} variants")
    _check_gates(config, len(variants))
    machine = machine_info()
    here = hardware.this_cpu()
    machine["cpu_class"] = here.value if here else None
    machine["int8_kernel"] = hardware.KERNELS[here] if here else "exact (not an AVX2-class x86 kernel)"
    label_sets = labels if labels is not None else [None] * len(variants)
    checks: list[dict[str, Any] | None] = []
    for v, f in zip(variants, feeds):
        if saturation and v.kind == "onnx" and v.precision.startswith("int8"):
            step(f"emulating AVX2's int8 kernel on {v.name}")
        checks.append(int8_saturation(v, f) if saturation else None)
    machine["denormals"] = "flushed to zero (FTZ/DAZ)" if config.flush_denormals else "kept"
    with hardware.denormals_flushed(config.flush_denormals):
        rows, rounds, load = _accuracy_and_latency(variants, feeds, label_sets, checks, config)
    machine["load_avg_1m_end"] = machine_info().get("load_avg_1m")
    machine["cpu_load"] = load.summary()
    warnings = [w for v in variants for w in v.warnings]
    warnings += report.bf16_warnings([v.precision for v in variants], machine["isa"], config.provider.value)
    warnings += report.load_warnings(machine["cpu_load"], config.threads)
    warnings += report.int8_slower_warnings(rows, rounds, machine["isa"], seed=config.seed)
    warnings += report.saturation_warnings(rows)
    result: dict[str, Any] = {
        "machine": machine,
        "config": to_dict(config),
        "baseline": variants[0].name,
        "variants": rows,
        "warnings": warnings,
    }
    if config.min_speedup is not None or config.max_accuracy_drop is not None:
        failures = report.gate_failures(
            result, min_speedup=config.min_speedup, max_accuracy_drop=config.max_accuracy_drop
        )
        result["gates"] = {
            "baseline": variants[0].name,
            "candidate": variants[-1].name,
            "min_speedup": config.min_speedup,
            "max_accuracy_drop": config.max_accuracy_drop,
            "passed": not failures,
            "failures": failures,
        }
    return result


def _accuracy_and_latency(
    variants: list[Variant],
    feeds: list[dict[str, np.ndarray]],
    label_sets: list[np.ndarray | None],
    checks: list[dict[str, Any] | None],
    config: BenchConfig,
) -> tuple[list[dict[str, Any]], list[np.ndarray], CpuLoad]:
    """Each variant's task metric, then the round-robin timing at every batch size: the rows, each row's latencies
    and the CPU load during the timing."""
    accuracies: list[float | None] = []
    for v, f, y in zip(variants, feeds, label_sets):
        if y is not None:
            step(f"accuracy of {v.name} on {len(y)} examples")
        accuracies.append(None if y is None else accuracy(v, f, y, batch=max(config.batch_sizes)))
    rows: list[dict[str, Any]] = []
    rounds: list[np.ndarray] = []
    with CpuLoad() as load:
        for batch in config.batch_sizes:
            batch_feeds = [first_rows(f, batch) for f in feeds]
            latencies = time_round_robin(variants, batch_feeds, config, f"latency batch {batch}×{config.seq_len}")
            for v, ms, acc, y, sat in zip(variants, latencies, accuracies, label_sets, checks):
                rows.append(_row(v, ms, batch, config, acc, y, sat, latencies[0]))
                rounds.append(ms)
    return rows, rounds, load


def _row(
    v: Variant,
    ms: np.ndarray,
    batch: int,
    config: BenchConfig,
    acc: float | None,
    labels: np.ndarray | None,
    sat: dict[str, Any] | None,
    baseline_ms: np.ndarray,
) -> dict[str, Any]:
    """One results row: a variant at one batch size."""
    return {
        "name": v.name,
        "kind": v.kind,
        "precision": v.precision,
        "path": str(v.artifact.path),
        "provider": v.provider.value,
        # the precision OpenVINO ran an ONNX row at (its bf16 hint changes an fp32 graph's numbers)
        **({"ep_precision": v.ep_precision.value} if v.ep_precision is not None else {}),
        "threads": config.threads,
        "batch": batch,
        "seq_len": config.seq_len,
        **summary(ms, batch),
        "size_mb": v.size_mb,
        "accuracy": None if acc is None else round(acc, 4),
        "metric": v.task.metric,  # what `accuracy` holds: accuracy, or entity F1
        "eval_samples": None if labels is None else len(labels),
        **report.speedup_fields(baseline_ms, ms, seed=config.seed),
        **({"int8_saturation": sat} if sat is not None else {}),
    }


def baseline_variants(variants: list[Variant], config: BenchConfig, scratch: Path) -> list[Variant]:
    """The built-in baselines config.baselines asks for, derived from the fp32 variants given."""
    out = []
    for v in variants:
        if "torch-bf16" in config.baselines and v.kind == "torch" and v.precision == "fp32":
            out.append(load_variant(v.artifact, f"{v.name}-bf16", config, torch_dtype="bf16"))
        if "ort-dynamic-int8" in config.baselines and v.kind == "onnx" and v.precision == "fp32":
            source = v.artifact.path / v.artifact.manifest.get("model_file", "model.onnx")
            target = ort_dynamic_int8(source, scratch / f"{len(out)}-ort-dynamic-int8.onnx")
            out.append(
                onnx_file_variant(
                    target, tokenizer_dir=v.artifact.path, name=f"{v.name}-ort-dynamic-int8", config=config
                )
            )
    if not out:
        raise ConfigError(
            f"--baseline {','.join(config.baselines)}: no fp32 PyTorch directory (torch-bf16) or fp32 ONNX export "
            "(ort-dynamic-int8) among the directories to derive it from"
        )
    return out


def _bench_lm(
    artifacts: list[Any],
    names: list[str],
    config: BenchConfig,
    out_dir: Path | None,
    overwrite: bool,
    started: float,
    task: str,
) -> dict[str, Any]:
    """Causal LMs: perplexity, prefill, decode tokens/s, peak RSS and size per variant (llmzip/bench/lm.py),
    plus onnxruntime-genai's builds of the first fp32 PyTorch directory when --baseline genai-* asks for them."""
    from llmzip.bench.lm import bench_causal_lm, render_markdown

    dirs, labels = [a.path for a in artifacts], list(names)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="llmzip-bench-lm-") as scratch:
        for precision in ("int4", "fp32"):
            if f"genai-{precision}" not in config.baselines:
                continue
            built, why = genai_baseline(artifacts, precision, Path(scratch))
            if built is None:
                notes.append(f"genai-{precision} left out: {why}")
                continue
            dirs.insert(-1, built)  # before the candidate (the last directory), as the other baselines
            labels.insert(-1, f"genai-{precision}")
        result = bench_causal_lm(dirs, labels, config, Path(scratch))
        result["notes"] = notes
        if out_dir is not None:
            inputs = [*(a.path for a in artifacts), *data_paths(config.data)]
            with staging(Path(out_dir), overwrite=overwrite, inputs=inputs) as tmp:
                (tmp / report.REPORT_FILE).write_text(render_markdown(result) + "\n")
                metrics = {"variants": len(result["variants"]), "task": task}
                _write_results(tmp, result, artifacts, config, metrics, [report.REPORT_FILE], started)
    return result


def _write_results(
    tmp: Path,
    result: dict[str, Any],
    artifacts: list[Any],
    config: BenchConfig,
    metrics: dict[str, Any],
    files: list[str],
    started: float,
) -> None:
    """results.json, then the manifest (last: its file table covers the report files written before it)."""
    (tmp / RESULTS_FILE).write_text(strict_json(result, where=RESULTS_FILE))
    write_manifest(
        tmp,
        stage="bench",
        parents=artifacts,
        inputs={"eval": result["data"]},
        config=to_dict(config),
        metrics=metrics,
        seed=config.seed,
        started=started,
        extra={"report_files": [RESULTS_FILE, *files]},
    )


def genai_baseline(artifacts: list[Any], precision: str, scratch: Path) -> tuple[Path | None, str]:
    """onnxruntime-genai's model builder run on the first fp32 PyTorch directory, in its own venv."""
    from llmzip.bench import genai

    source = next((a.path for a in artifacts if a.stage not in ("export", "quantize")), None)
    if source is None:
        return None, "no fp32 PyTorch model directory to build it from"
    venv, why = genai.ensure_venv()
    if venv is None:
        return None, why
    return genai.build(source, scratch / f"genai-{precision}", precision)


def bench(
    model_dirs: list[Path],
    *,
    config: BenchConfig,
    names: list[str] | None = None,
    out_dir: Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Measure every model directory on the same data and machine; returns {machine, config, data, variants, ...}.

    With `out_dir`: results.json, report.md and latency_vs_accuracy.png (when matplotlib is installed) there.
    Gates are reported in `gates`, not raised: the CLI writes everything, then exits non-zero on a failure.
    """
    started = time.time()
    if not model_dirs:
        raise ConfigError("bench needs at least one model directory")
    _check_gates(config, len(model_dirs))
    artifacts = [open_artifact(Path(d), verb="bench", accepts=ACCEPTS, role="model directory") for d in model_dirs]
    if out_dir is not None:  # refused before the benchmark runs, not after
        check_output(Path(out_dir), overwrite=overwrite, inputs=[*model_dirs, *data_paths(config.data)])
    labels_for = variant_names([Path(d) for d in model_dirs], names)
    quiet_libraries()
    task = checked_task(config, source_config(artifacts[0].path), model_dirs[0])
    if task.generative:
        return _bench_lm(artifacts, labels_for, config, out_dir, overwrite, started, task.kind.value)
    eval_ds, source = load_eval_data(config)
    variants, eval_feeds, eval_labels = [], [], []
    for artifact, name in zip(artifacts, labels_for):
        step(f"loading {name} ({artifact.path})")
        variant = load_variant(artifact, name, config)
        feeds, labels = eval_inputs(variant, eval_ds, config)
        variants.append(variant)
        eval_feeds.append(feeds)
        eval_labels.append(labels)
    if config.baselines:
        with tempfile.TemporaryDirectory(prefix="llmzip-bench-") as scratch:
            twins = baseline_variants(variants, config, Path(scratch))
            extra = [(v, *eval_inputs(v, eval_ds, config)) for v in twins]
            # Baselines go before the last directory: the gates' candidate stays the user's last model.
            variants[-1:-1] = [v for v, _, _ in extra]
            eval_feeds[-1:-1] = [f for _, f, _ in extra]
            eval_labels[-1:-1] = [y for _, _, y in extra]
            measured = measure(variants, eval_feeds, config, labels=eval_labels)
    else:
        measured = measure(variants, eval_feeds, config, labels=eval_labels)
    result = {
        "machine": measured.pop("machine"),
        "config": measured.pop("config"),
        "data": {**source.describe(), "split": config.data.eval_split},
        **measured,
        "notes": [],
    }
    if out_dir is not None:
        with staging(Path(out_dir), overwrite=overwrite, inputs=[*model_dirs, *data_paths(config.data)]) as tmp:
            files, result["notes"] = report.write_report(result, tmp)
            metrics = {
                "variants": len(result["variants"]),
                "warnings": len(result["warnings"]),
                **({"gates_passed": result["gates"]["passed"]} if "gates" in result else {}),
            }
            _write_results(tmp, result, artifacts, config, metrics, files, started)
    return result
