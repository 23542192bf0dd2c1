"""The structure spec a pruned model carries in its config, and the loading that rebuilds its smaller layers.

A pruned model's Linear layers are smaller than its Hugging Face config implies, so `from_pretrained` cannot load
it. The shapes travel in `config.llmzip_structure` (plain JSON, written into config.json by save_pretrained):

    {"linears": {"<module name>": [out_features, in_features], ...},
     "heads": [[kept head indices of layer 0, in the unpruned numbering], ...],   # llmzip/shrink/pruning.py
     "embeddings": {...},                                                          # llmzip/shrink/embeddings.py
     "lowrank": {"<module name>": rank, ...}}                                      # llmzip/shrink/lowrank.py

Loading builds the model from its config, resizes the recorded layers (`restore`) and then loads the weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from llmzip.errors import ModelError

if TYPE_CHECKING:
    pass

SPEC_ATTR = "llmzip_structure"
# Buffers that models rebuild themselves and older checkpoints may lack (load_quantized tolerates the same).
_DERIVED_BUFFERS = ("position_ids", "token_type_ids")


def spec_of(config: Any) -> dict[str, Any] | None:
    """The structure spec of a config, or None for a model with the shapes its config implies."""
    spec = getattr(config, SPEC_ATTR, None)
    if spec is None:
        return None
    if not isinstance(spec, dict) or not isinstance(spec.get("linears", {}), dict):
        raise ModelError(f"config.{SPEC_ATTR} is not a structure spec (a dict with 'linears'); re-save the model")
    return spec


def has_structure(config: Any) -> bool:
    return spec_of(config) is not None


def _spec(model: nn.Module) -> dict[str, Any]:
    """The model's spec, created empty when absent (the dict lives on the config, so edits persist)."""
    config = model.config
    spec = spec_of(config)
    if spec is None:
        spec = {}
        setattr(config, SPEC_ATTR, spec)
    return spec


def record_linear(model: nn.Module, name: str) -> None:
    """Store Linear `name`'s current [out_features, in_features] in the model's spec."""
    linear = model.get_submodule(name)
    if not isinstance(linear, nn.Linear):
        raise ModelError(f"{name} is a {type(linear).__name__}, not a Linear layer; only Linear shapes are recorded")
    _spec(model).setdefault("linears", {})[name] = [linear.out_features, linear.in_features]


def set_entry(model: nn.Module, key: str, value: Any) -> None:
    """Store a JSON-able entry (e.g. the kept heads) in the model's spec."""
    _spec(model)[key] = value


def load_weights(model: nn.Module, shards: list[Path], *, source: str | Path, new_head: bool = False) -> None:
    """Load safetensors shards strictly: every real weight present, nothing unexpected, every shape equal."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        state.update(load_file(str(shard)))
    own = model.state_dict(keep_vars=True)
    base = str(getattr(model, "base_model_prefix", "") or "")

    def in_head(key: str) -> bool:
        return bool(base) and not key.startswith(base + ".")

    wrong = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if new_head:
        for key in [k for k in wrong if in_head(k)]:
            del state[key]
        wrong = [k for k in wrong if not in_head(k)]
    if wrong:
        k = wrong[0]
        raise ModelError(
            f"{source}: {k} is {list(state[k].shape)} in the checkpoint but {list(own[k].shape)} in the model its "
            f"config describes ({len(wrong)} such tensors); the config.json does not belong to these weights"
        )
    missing, unexpected = model.load_state_dict(state, strict=False)
    loaded = {id(own[k]) for k in state if k in own}
    real_missing = [
        k
        for k in missing
        # Tied weights are saved once and come back through the Parameter they share.
        if not k.endswith(_DERIVED_BUFFERS) and id(own[k]) not in loaded and not (new_head and in_head(k))
    ]
    if real_missing or unexpected:
        raise ModelError(
            f"{source}: the weights do not match the pruned model's config (missing {real_missing[:3]}, "
            f"unexpected {list(unexpected)[:3]}); re-save the model with save_pretrained"
        )
