"""quantize --algorithm source: a model imported from a GGUF file keeps the file's own blocks, exactly.

`llmzip import` writes every weight whose GGUF blocks map exactly onto MatMulNBits (llmzip/sources/gguf_blocks.py) into
`source_blocks.safetensors` beside the float weights. Here each Linear (and the word embedding) is rebuilt from
those codes, scales and offsets instead of being rounded again onto a second grid; a weight that was float in
the file stays float, and one whose GGUF type has no exact form is rounded like `--algorithm rtn`, named in
the manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmzip.config import QuantizeConfig, WeightAlgorithm
from llmzip.errors import ArtifactError, ConfigError, ModelError
from llmzip.quant.weight_only import WeightOnlyLinear
from llmzip.sources.gguf_blocks import BLOCKS_FILE


def available(model_dir: Path) -> bool:
    return (Path(model_dir) / BLOCKS_FILE).is_file()


class SourceBlocks:
    """The blocks an imported model carries, by weight name, with what import found for each."""

    def __init__(self, model_dir: Path, manifest: dict[str, Any]) -> None:
        from safetensors.torch import load_file

        if not available(model_dir):
            raise ArtifactError(
                f"{model_dir} carries no source blocks (only `llmzip import` of a GGUF file writes them); "
                "choose --algorithm rtn, gptq or awq"
            )
        self.tensors: dict[str, dict[str, Any]] = (manifest.get("source_blocks") or {}).get("tensors") or {}
        self.arrays = load_file(str(Path(model_dir) / BLOCKS_FILE))
        self.model_dir = model_dir

    def entry(self, weight: str) -> dict[str, Any]:
        found = self.tensors.get(weight, {})
        return self.tensors.get(str(found["same_as"]), found) if "same_as" in found else found

    def key(self, weight: str) -> str:
        return str(self.tensors.get(weight, {}).get("same_as", weight))

    def has(self, weight: str) -> bool:
        return f"{self.key(weight)}:qweight" in self.arrays

    def layer(self, name: str, linear: nn.Linear) -> WeightOnlyLinear:
        """The Linear `name` rebuilt from its blocks, checked to reproduce the float weight it replaces."""
        weight = f"{name}.weight"
        spec, key = self.entry(weight), self.key(weight)
        offset = self.arrays.get(f"{key}:offset")
        layer = WeightOnlyLinear(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            block_size=int(spec["block_size"]),
            symmetric=spec.get("zero_point") is None,  # else an explicit zero point of 0 (a zeroed buffer)
            bits=int(spec["bits"]),
            offset=offset is not None,
        )
        with torch.no_grad():
            layer.weight_packed.copy_(self.arrays[f"{key}:qweight"])
            layer.weight_scale.copy_(self.arrays[f"{key}:scale"])
            if offset is not None and layer.weight_offset is not None:
                layer.weight_offset.copy_(offset)
            if linear.bias is not None and layer.bias is not None:
                layer.bias.copy_(linear.bias)
        got, want = layer.dequantized_weight(), linear.weight.detach().float()
        if not torch.allclose(got, want, rtol=0, atol=1e-6 * float(want.abs().max()) + 1e-12):
            raise ModelError(
                f"{name}: the source blocks of {self.model_dir} do not reproduce its weight (off by "
                f"{float((got - want).abs().max()):.3g}); re-run `llmzip import`"
            )
        return layer

    def describe(self, name: str) -> dict[str, Any]:
        spec = self.entry(f"{name}.weight")
        return {k: spec[k] for k in ("source", "type", "exact", "bits", "block_size", "offset") if k in spec}


def embedding_table(blocks: SourceBlocks, name: str, embedding: nn.Embedding) -> WeightOnlyLinear | None:
    """An untied word embedding's own blocks as a table (read by BlockEmbedding), or None without blocks."""
    if not blocks.has(f"{name}.weight"):
        return None
    as_linear = nn.Linear(embedding.embedding_dim, embedding.num_embeddings, bias=False)
    with torch.no_grad():
        as_linear.weight.copy_(embedding.weight)
    return blocks.layer(name, as_linear)


def resolve_algorithm(config: QuantizeConfig, model_dir: Path, weight_only: bool) -> WeightAlgorithm:
    """--algorithm as given; unset, a model imported from a GGUF file keeps its source's blocks (unless a bit width
    or block layout of its own is asked for), any other rounds to nearest."""
    if config.algorithm is not None:
        if config.algorithm is WeightAlgorithm.SOURCE and not weight_only:
            raise ConfigError("--algorithm source keeps weight-only blocks: add --weight-only (or use a causal LM)")
        return config.algorithm
    default = QuantizeConfig()
    layout = ("weight_bits", "weight_block_size", "weight_symmetric", "head_bits")
    own_layout = any(getattr(config, k) != getattr(default, k) for k in layout)
    if weight_only and available(model_dir) and not own_layout:
        return WeightAlgorithm.SOURCE
    return WeightAlgorithm.RTN


def block_spec(layer: Any) -> dict[str, Any]:
    """How to rebuild a weight-only layer (or table) whose blocks are not the scheme's (a GGUF source's)."""
    if not isinstance(layer, WeightOnlyLinear):
        return {}
    return {
        "block_size": layer.block_size,
        "bits": layer.bits,
        "symmetric": layer.weight_zero_point is None,
        "offset": layer.weight_offset is not None,
    }


def source_metrics(blocks: SourceBlocks, names: list[str]) -> dict[str, Any]:
    described = {n: blocks.describe(n) for n in names}
    types: dict[str, int] = {}
    for d in described.values():
        key = str(d.get("type", "?")) + ("" if d.get("exact") else " (rounded)")
        types[key] = types.get(key, 0) + 1
    return {"source_types": dict(sorted(types.items())), "source_blocks": described}


def source_maker(blocks: SourceBlocks, *, rounding: Any) -> Any:
    """Each Linear from the source's blocks; one whose GGUF type has no exact form is rounded (named in the
    manifest's source_blocks)."""

    def make(name: str, linear: nn.Linear) -> nn.Module:
        return blocks.layer(name, linear) if blocks.has(f"{name}.weight") else rounding(name, linear)

    return make
