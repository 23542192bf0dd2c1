"""Hugging Face optimum baseline: dynamic int8 quantization and a third-party load check of ONNX directories.

Runs under the separate venv made by make_venv.sh (optimum-onnx pins transformers<4.58); it must not import llmzip.

    python optimum_int8.py quantize MODEL_DIR OUT_DIR [--per-channel] [--overwrite]
    python optimum_int8.py check-load ONNX_DIR --texts-file F --expect-logits NPY [--atol A]
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

# Local folders only: nothing may be fetched from the Hugging Face hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

SCHEMA_VERSION = 1
QUANTIZED_FILE = "model_quantized.onnx"
RESULT_FILE = "optimum_baseline.json"


class BaselineError(Exception):
    """A problem with the user's input: reported as one line on stderr, exit status 2."""


def _versions() -> dict[str, str]:
    names = ("optimum", "optimum-onnx", "transformers", "onnxruntime", "onnx", "torch", "tokenizers")
    return {name: metadata.version(name) for name in names}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _op_counts(path: Path) -> dict[str, int]:
    import onnx

    model = onnx.load(path.as_posix(), load_external_data=False)
    counts = collections.Counter(node.op_type for node in model.graph.node)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _jsonable(value: Any) -> Any:
    """The quantization config holds enums and sets; the result file needs plain JSON."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        items = [_jsonable(v) for v in value]
        return sorted(items, key=str) if isinstance(value, set) else items
    if hasattr(value, "name") and hasattr(value, "value"):  # enum.Enum, onnxruntime's QuantType
        return value.name
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _check_model_dir(model_dir: Path) -> None:
    if not (model_dir / "config.json").is_file():
        raise BaselineError(f"{model_dir} has no config.json: pass a Hugging Face model folder")
    if not any(model_dir.glob("*.safetensors")) and not any(model_dir.glob("*.bin")):
        raise BaselineError(f"{model_dir} has no model weights (*.safetensors or *.bin)")


def quantize(model_dir: Path, out_dir: Path, *, per_channel: bool, overwrite: bool) -> dict[str, Any]:
    """Export MODEL_DIR with optimum, quantize it with ORTQuantizer (dynamic, avx512_vnni) into OUT_DIR."""
    _check_model_dir(model_dir)
    if out_dir.exists() and not overwrite:
        raise BaselineError(f"{out_dir} exists; pass --overwrite to replace it")

    from optimum.exporters.onnx import main_export
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    start = time.perf_counter()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        fp32_dir = staging / "fp32"
        main_export(
            model_dir.as_posix(),
            output=fp32_dir,
            task="text-classification",
            library_name="transformers",
            local_files_only=True,
        )
        fp32_path = fp32_dir / "model.onnx"

        qconfig = AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=per_channel)
        int8_dir = staging / "int8"
        ORTQuantizer.from_pretrained(fp32_dir, file_name="model.onnx").quantize(
            save_dir=int8_dir, quantization_config=qconfig
        )
        int8_path = int8_dir / QUANTIZED_FILE
        if not int8_path.is_file():
            raise RuntimeError(f"ORTQuantizer wrote no {QUANTIZED_FILE} in {int8_dir}")

        result: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "tool": "optimum ORTQuantizer (dynamic int8)",
            "source_model": str(model_dir.resolve()),
            "versions": _versions(),
            "export": {"task": "text-classification", "opset": _opset(fp32_path)},
            "quantization": {
                "preset": "AutoQuantizationConfig.avx512_vnni",
                "is_static": False,
                "per_channel": per_channel,
                "config": _jsonable(dict(vars(qconfig))),
            },
            "fp32": {"bytes": fp32_path.stat().st_size, "op_counts": _op_counts(fp32_path)},
            "int8": {
                "file": QUANTIZED_FILE,
                "bytes": int8_path.stat().st_size,
                "sha256": _sha256(int8_path),
                "op_counts": _op_counts(int8_path),
            },
            "files": sorted(p.name for p in int8_dir.iterdir()) + [RESULT_FILE],
            "wall_s": round(time.perf_counter() - start, 1),
        }
        (int8_dir / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")

        if out_dir.exists():
            shutil.rmtree(out_dir)
        int8_dir.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result


def _opset(path: Path) -> int:
    import onnx

    model = onnx.load(path.as_posix(), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _read_texts(path: Path) -> list[str]:
    if not path.is_file():
        raise BaselineError(f"texts file {path} does not exist")
    texts = [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines()]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise BaselineError(f"{path} holds no texts (one per line)")
    return texts


def check_load(
    onnx_dir: Path,
    *,
    texts_file: Path,
    expect_logits: Path,
    atol: float,
    file_name: str = "model.onnx",
    task: str = "sequence-classification",
) -> dict[str, Any]:
    """Load ONNX_DIR/FILE_NAME with optimum's ORTModelFor<task> and compare its logits with NPY.

    A token classifier's texts are space-separated words, tokenized with is_split_into_words."""
    import numpy as np

    if not (onnx_dir / file_name).is_file():
        raise BaselineError(f"{onnx_dir} has no {file_name}")
    texts = _read_texts(texts_file)
    expected = np.load(expect_logits)
    if expected.shape[0] != len(texts):
        raise BaselineError(f"{expect_logits} has {expected.shape[0]} rows but {texts_file} has {len(texts)} texts")

    from optimum.onnxruntime import ORTModelForSequenceClassification, ORTModelForTokenClassification
    from transformers import AutoTokenizer

    loader = ORTModelForTokenClassification if task == "token-classification" else ORTModelForSequenceClassification
    model = loader.from_pretrained(
        onnx_dir, file_name=file_name, provider="CPUExecutionProvider", local_files_only=True
    )
    tokenizer = AutoTokenizer.from_pretrained(onnx_dir, local_files_only=True)
    if task == "token-classification":
        words = [t.split() for t in texts]
        batch = tokenizer(words, is_split_into_words=True, padding=True, truncation=True, return_tensors="np")
    else:
        batch = tokenizer(texts, padding=True, truncation=True, return_tensors="np")
    logits = np.asarray(model(**batch).logits, dtype=np.float64)
    if logits.shape != expected.shape:
        raise BaselineError(f"logits shape {logits.shape} differs from expected {expected.shape}")

    expected = expected.astype(np.float64)
    max_abs_diff = float(np.max(np.abs(logits - expected)))
    cosine = float(np.dot(logits.ravel(), expected.ravel()) / (np.linalg.norm(logits) * np.linalg.norm(expected)))
    agreement = float(np.mean(logits.argmax(-1) == expected.argmax(-1)))
    return {
        "onnx_dir": str(onnx_dir),
        "file_name": file_name,
        "texts": len(texts),
        "max_abs_diff": max_abs_diff,
        "cosine": cosine,
        "argmax_agreement": agreement,
        "atol": atol,
        "ok": max_abs_diff <= atol and agreement == 1.0,
        "loader": type(model).__name__,
        "versions": {k: v for k, v in _versions().items() if k in ("optimum-onnx", "transformers", "onnxruntime")},
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quantize", help="export with optimum and quantize to dynamic int8 with ORTQuantizer")
    q.add_argument("model_dir", type=Path, help="local Hugging Face sequence-classification folder")
    q.add_argument("out_dir", type=Path, help="output folder (written atomically)")
    q.add_argument("--per-channel", action="store_true", help="per-channel weight scales (default: per-tensor)")
    q.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")

    c = sub.add_parser("check-load", help="load an ONNX folder with optimum's ORTModelFor<task>")
    c.add_argument("onnx_dir", type=Path, help="folder with model.onnx, config.json and tokenizer files")
    c.add_argument("--texts-file", type=Path, required=True, help="UTF-8 texts, one per line")
    c.add_argument("--expect-logits", type=Path, required=True, help=".npy of shape (texts, labels)")
    c.add_argument("--atol", type=float, default=1e-4, help="largest allowed absolute logit difference")
    c.add_argument("--file-name", default="model.onnx", help="ONNX file inside ONNX_DIR (default: model.onnx)")
    c.add_argument(
        "--task",
        choices=["sequence-classification", "token-classification"],
        default="sequence-classification",
        help="the model's task (token-classification: texts are space-separated words)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "quantize":
            result = quantize(args.model_dir, args.out_dir, per_channel=args.per_channel, overwrite=args.overwrite)
            print(
                json.dumps(
                    {
                        "out_dir": str(args.out_dir),
                        "bytes": result["int8"]["bytes"],
                        "op_counts": result["int8"]["op_counts"],
                        "wall_s": result["wall_s"],
                    }
                )
            )
            return 0
        result = check_load(
            args.onnx_dir,
            texts_file=args.texts_file,
            expect_logits=args.expect_logits,
            atol=args.atol,
            file_name=args.file_name,
            task=args.task,
        )
        print(json.dumps(result))
        return 0 if result["ok"] else 1
    except BaselineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
