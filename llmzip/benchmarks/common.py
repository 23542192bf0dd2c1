"""Shared by the benchmark commands: paths to the shared data/models, test-set accuracy, plots."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmzip.config import CalibrateConfig, DataConfig, ExportConfig, QuantizeConfig
from llmzip.data import encode, load_split
from llmzip.errors import DataError
from llmzip.modeling import count_parameters, load_pretrained, load_tokenizer
from llmzip.progress import console
from llmzip.tasks import task_of

REPO = Path(__file__).resolve().parents[2]
OPTIMUM_VENV = REPO / ".venv-optimum"  # optimum's own venv (benchmarks/optimum/requirements.txt)
SHARED = Path(os.environ.get("LLMZIP_SHARED", "../shared"))
TEACHER = SHARED / "models" / "minilm-l6-sst2"
SST2 = SHARED / "data" / "sst2"


def require_shared() -> None:
    for path in (TEACHER / "config.json", SST2 / "test.tsv"):
        if not path.exists():
            raise DataError(f"{path}: missing; benchmarks read ../shared (set LLMZIP_SHARED to its location)")


def test_accuracy(model_dir: Path, *, max_length: int = 64, batch_size: int = 64) -> tuple[float, int]:
    """Accuracy on SST-2 test.tsv (GLUE dev) and the parameter count of a PyTorch model directory."""
    model = load_pretrained(model_dir)
    return model_accuracy(model, load_tokenizer(model_dir), max_length=max_length, batch_size=batch_size), (
        count_parameters(model)
    )


def model_accuracy(model: Any, tokenizer: Any, *, max_length: int = 64, batch_size: int = 64) -> float:
    """Accuracy of an in-memory PyTorch classifier on SST-2 test.tsv (GLUE dev)."""
    cfg = DataConfig(dataset=str(SST2 / "test.tsv"))
    loaded = load_split(cfg, "test")
    assert loaded is not None
    label2id = {str(k): int(v) for k, v in (model.config.label2id or {}).items()}
    enc = encode(tokenizer, loaded[0], cfg, label2id, max_length=max_length)
    outs, golds = [], []
    with torch.inference_mode():
        for i in range(0, len(enc), batch_size):
            rows = enc[i : i + batch_size]
            feats = tokenizer.pad({k: v for k, v in rows.items() if k != "labels"}, return_tensors="pt")
            outs.append(model(**feats).logits.numpy())
            golds.append(np.asarray(rows["labels"]))
    id2label = {v: k for k, v in label2id.items()}
    return task_of(model.config).score(outs, golds, id2label)


def reuse_stage(out: Path, build: Any) -> Path:
    """Reuse a finished stage directory (it has a manifest) from an earlier run of a benchmark, else build it."""
    if (out / "manifest.json").is_file():
        console.print(f"· reusing {out}")
        return out
    result: Path = build()
    return result


def write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")


def ensure_optimum_venv() -> str | None:
    """Build (or reuse) optimum's venv from its pinned requirements; None when ready, else why not."""
    import subprocess

    script, requirements = REPO / "benchmarks/make_venv.sh", REPO / "benchmarks/optimum/requirements.txt"
    done = subprocess.run(["bash", str(script), str(OPTIMUM_VENV), str(requirements)], capture_output=True, text=True)
    if done.returncode:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"{script.name} failed: {last[0][:200]}"
    return None


def optimum_load_check(
    export_dir: Path, out: Path, texts: list[str], task: str = "sequence-classification"
) -> dict[str, Any]:
    """Load an llmzip export with optimum's ORTModelFor<task> (a client nobody here wrote) in the optimum venv and
    compare its logits with onnxruntime's on `texts` (a token classifier's: space-separated words)."""
    import subprocess

    from llmzip.runtime.sessions import session as ort_session

    tokenizer = load_tokenizer(export_dir)
    if task == "token-classification":
        enc = tokenizer([t.split() for t in texts], is_split_into_words=True, padding=True, truncation=True,
                        return_tensors="np")  # fmt: skip
    else:
        enc = tokenizer(texts, padding=True, truncation=True, return_tensors="np")
    session = ort_session(export_dir / "model.onnx")
    feeds = {i.name: enc[i.name].astype(np.int64) for i in session.get_inputs()}
    (out / "check_texts.txt").write_text("\n".join(texts) + "\n")
    np.save(out / "check_logits.npy", session.run(["logits"], feeds)[0])
    cmd = [
        str(OPTIMUM_VENV / "bin/python"),
        str(REPO / "benchmarks/optimum/optimum_int8.py"),
        "check-load",
        str(export_dir),
        "--texts-file",
        str(out / "check_texts.txt"),
        "--expect-logits",
        str(out / "check_logits.npy"),
        "--task",
        task,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode not in (0, 1) or not lines:
        return {"ok": False, "error": (done.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    return dict(json.loads(lines[-1]))


# The llmzip recipe measured here: bench-quant's best static range method (percentile 99.99) with int8 attention
# matmuls too (-0.34 pt in bench-quant; 3-4% faster at 8×128 than Linear-only int8 on this CPU).
LLMZIP_QUANT: dict[str, Any] = {"method": "percentile", "percentile": 99.99, "attention": True}


def build_llmzip_int8(
    out: Path, quick: bool, export_config: ExportConfig | None = None, name: str = "llmzip-int8"
) -> Path:
    """The reference teacher calibrated on SST-2, quantized with LLMZIP_QUANT and exported (rebuilt every run)."""
    from llmzip.stages.calibrate import calibrate
    from llmzip.stages.export import export
    from llmzip.stages.quantize import quantize

    data = DataConfig(dataset=str(SST2), max_length=128)
    calib = calibrate(
        TEACHER,
        out / "calibration",
        config=CalibrateConfig(data=data, num_samples=64 if quick else 256),
        overwrite=True,
    )
    q = quantize(TEACHER, calib, out / "llmzip-int8-model", config=QuantizeConfig(**LLMZIP_QUANT), overwrite=True)
    return export(q, out / name, config=export_config or ExportConfig(), overwrite=True)


def rows_by_variant(result: dict[str, Any], *, metric: str, scale: float = 1.0, baseline: str) -> dict[str, Any]:
    """A bench run's rows (one per variant and shape) folded into one row per variant: `metric` (the accuracy
    column × `scale`), size, p50/p90 latency and samples/s per shape, and the speedup over the first variant
    (`speedup_vs_<baseline>`, with its 95% interval)."""
    rows: dict[str, dict[str, Any]] = {}
    for r in result["variants"]:
        row = rows.setdefault(
            r["name"],
            {
                "name": r["name"],
                "kind": r["kind"],
                "precision": r["precision"],
                metric: None if r["accuracy"] is None else round(scale * r["accuracy"], 4),
                "size_mb": r["size_mb"],
                "latency_ms": {},
                "latency_p90_ms": {},
                "samples_per_s": {},
                f"speedup_vs_{baseline}": {},
            },
        )
        shape = f"{r['batch']}x{r['seq_len']}"
        row["latency_ms"][shape] = r["latency_ms"]["p50"]
        row["latency_p90_ms"][shape] = r["latency_ms"]["p90"]
        row["samples_per_s"][shape] = round(r["throughput"], 1)
        row[f"speedup_vs_{baseline}"][shape] = {"p50_ratio": r["speedup_vs_baseline"], "ci95": r["speedup_ci95"]}
    return rows
