"""A structured model (pruned, factorized, trimmed vocabulary: llmzip/shrink/structure.py's spec in its config)
rebuilt at its recorded shapes, so every stage and bench load it. Above structure, embeddings and lowrank: they
record the spec, this reads it back."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from llmzip.errors import ModelError
from llmzip.shrink.embeddings import restore_embeddings
from llmzip.shrink.lowrank import restore_lowrank
from llmzip.shrink.structure import SPEC_ATTR, load_weights, spec_of

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def restore(model: PreTrainedModel) -> PreTrainedModel:
    """Resize (or factorize) the layers a spec records (after `from_config`), so that the checkpoint's weights fit.

    The new layers hold fresh (uninitialised-then-default) weights: the caller loads the state dict next.
    """
    spec = spec_of(model.config)
    if spec is None:
        return model
    for name, shape in spec.get("linears", {}).items():
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise ModelError(
                f"config.{SPEC_ATTR} names {name}, which {type(model).__name__} does not have; re-save the model"
            ) from None
        if not isinstance(old, nn.Linear):
            raise ModelError(f"config.{SPEC_ATTR} names {name}, a {type(old).__name__}, not a Linear layer")
        out_features, in_features = (int(n) for n in shape)
        if (old.out_features, old.in_features) == (out_features, in_features):
            continue
        new = nn.Linear(
            in_features, out_features, bias=old.bias is not None, dtype=old.weight.dtype, device=old.weight.device
        )
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    if "embeddings" in spec:
        restore_embeddings(model, spec["embeddings"])
    if "lowrank" in spec:
        # After the resizes above: a pruned-then-factorized layer takes its shape from its "linears" entry.
        restore_lowrank(model, spec["lowrank"])
    return model


def load_structured(auto: Any, source: str | Path, *, seed: int, **kwargs: Any) -> PreTrainedModel:
    """A model whose config carries a structure spec: built from its config, restored, then its weights loaded.

    Accepts load_pretrained's keyword arguments: config fields (num_labels, id2label, label2id), `dtype`,
    `attn_implementation`, and `ignore_mismatched_sizes` (a task head the checkpoint lacks or shapes differently
    keeps its initialisation from `seed`, as from_pretrained does; the body must always match).
    """
    from transformers import AutoConfig

    folder = Path(source)
    shards = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not shards:
        raise ModelError(
            f"{source}: a pruned model (config.{SPEC_ATTR}) loads from safetensors files in a local folder, and it "
            "has none; re-save it with save_pretrained (safe_serialization=True)"
        )
    new_head = bool(kwargs.pop("ignore_mismatched_sizes", False))
    model_kwargs = {k: kwargs.pop(k) for k in ("dtype", "torch_dtype", "attn_implementation") if k in kwargs}
    config = AutoConfig.from_pretrained(str(folder), trust_remote_code=False, **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = auto.from_config(config, **model_kwargs)
        restore(model)
    load_weights(model, shards, source=source, new_head=new_head)
    return model
