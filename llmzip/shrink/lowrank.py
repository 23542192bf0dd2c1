"""Low-rank factorization of Linear layers (LadaBERT-style): W ≈ up·down from the truncated SVD, recovered by KD.

A factorized layer is a `LowRankLinear` whose `down` (in → rank) and `up` (rank → out) are ordinary nn.Linear
modules, so calibrate, quantize (one int8 MatMul each) and export treat them like any other Linear. The ranks
travel in the structure spec (llmzip/shrink/structure.py) as `"lowrank": {"<module name>": rank, ...}`; the shapes come
from the Linear that `from_config` (and a pruned model's "linears" entry) builds under that name.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from llmzip.errors import ConfigError, ModelError
from llmzip.shrink import structure

LOWRANK_KEY = "lowrank"
# The FFN pair of every BERT-family layer (layer.N.intermediate.dense, layer.N.output.dense), not the attention
# output projection (layer.N.attention.output.dense): the FFN holds two thirds of an encoder layer's weights.
FFN_PATTERN = r"\.layer\.\d+\.(intermediate|output)\.dense$"


class LowRankLinear(nn.Module):
    """y = up(down(x)): a rank-r stand-in for an nn.Linear(in_features, out_features)."""

    def __init__(self, in_features: int, out_features: int, rank: int, *, bias: bool) -> None:
        super().__init__()
        # Read by code that sizes things from a Linear (e.g. pruning's shape checks, transformers' init helpers).
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.up(self.down(x))
        return out

    def weight_product(self) -> torch.Tensor:
        """The [out, in] weight the two factors multiply to."""
        return self.up.weight @ self.down.weight

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def saves_parameters(rank: int, in_features: int, out_features: int) -> bool:
    """Whether rank·(in + out) weights are fewer than in·out (break-even: in·out / (in + out))."""
    return rank * (in_features + out_features) < in_features * out_features


def svd_factors(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """up [out, rank], down [rank, in] with up·down the best rank-`rank` approximation of `weight` (Eckart–Young).

    Each factor takes √S, so both have the same scale: per-channel int8 then loses about as much on either side,
    where putting S into one factor leaves it with a much wider range to quantize (as embeddings.low_rank does).
    """
    u, s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    root = s[:rank].sqrt()
    return (u[:, :rank] * root).float().contiguous(), (root[:, None] * vh[:rank]).float().contiguous()


def _matching(model: nn.Module, pattern: str) -> list[tuple[str, nn.Linear]]:
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise ConfigError(f"pattern: '{pattern}' is not a valid regular expression ({err})") from None
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and regex.search(n)]
    again = [n for n, _ in found if isinstance(model.get_submodule(n.rpartition(".")[0]), LowRankLinear)]
    if again:
        raise ConfigError(
            f"pattern '{pattern}' matches {again[0]}, a factor of an already factorized layer; factorize once, "
            "from the full-rank model (or narrow the pattern, e.g. end it with `dense$`)"
        )
    return found


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def factorize_linears(model: nn.Module, rank: int, *, pattern: str) -> dict[str, Any]:
    """Replace every nn.Linear whose name matches `pattern` (re.search) by a rank-`rank` LowRankLinear.

    Layers where the factors would hold as many weights as the layer (rank·(in + out) ≥ in·out) keep their full
    weight and are reported under "skipped". Returns per-layer relative Frobenius errors ‖W − up·down‖ / ‖W‖ of
    the stored float32 factors, and parameter counts of the factorized layers and of the whole model.
    """
    if rank < 1:
        raise ConfigError(f"rank must be at least 1, got {rank}")
    matched = _matching(model, pattern)
    if not matched:
        raise ConfigError(
            f"pattern '{pattern}' matches no Linear layer of {type(model).__name__}; check the module names "
            "(model.named_modules()), e.g. llmzip.shrink.lowrank.FFN_PATTERN for BERT's feed-forward layers"
        )
    model_before = _parameters(model)
    layers: dict[str, dict[str, Any]] = {}
    skipped: dict[str, list[int]] = {}
    for name, linear in matched:
        out_features, in_features = linear.out_features, linear.in_features
        if not saves_parameters(rank, in_features, out_features):
            skipped[name] = [out_features, in_features]
            continue
        weight = linear.weight.detach().float()
        up, down = svd_factors(weight, rank)
        new = LowRankLinear(in_features, out_features, rank, bias=linear.bias is not None)
        new = new.to(device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            new.down.weight.copy_(down)
            new.up.weight.copy_(up)
            if linear.bias is not None and new.up.bias is not None:
                new.up.bias.copy_(linear.bias)
        new.train(linear.training)
        error = torch.linalg.norm(weight - new.weight_product().detach().float()) / torch.linalg.norm(weight)
        layers[name] = {
            "shape": [out_features, in_features],
            "rank": rank,
            "relative_error": float(error),
            "params_before": _parameters(linear),
            "params_after": _parameters(new),
        }
        _replace(model, name, new)
    if not layers:
        smallest = min(skipped.values(), key=lambda s: s[0] * s[1] / (s[0] + s[1]))
        limit = (smallest[0] * smallest[1] - 1) // (smallest[0] + smallest[1])
        raise ConfigError(
            f"rank {rank} saves no parameters on any of the {len(skipped)} layers '{pattern}' matches "
            f"(e.g. {smallest[1]}→{smallest[0]}); use a rank of at most {limit}"
        )
    previous = (structure.spec_of(model.config) or {}).get(LOWRANK_KEY) or {}
    structure.set_entry(model, LOWRANK_KEY, {**previous, **{n: rank for n in layers}})
    return {
        "rank": rank,
        "pattern": pattern,
        "layers": layers,
        "skipped": skipped,
        "params_before": sum(v["params_before"] for v in layers.values()),
        "params_after": sum(v["params_after"] for v in layers.values()),
        "model_params_before": model_before,
        "model_params_after": _parameters(model),
    }


def restore_lowrank(model: nn.Module, spec_entry: Any) -> None:
    """Rebuild the LowRankLinear layers that config.llmzip_structure["lowrank"] records (shapes only: the state
    dict fills them), so that a model made by `from_config` loads a factorized checkpoint strictly."""
    where = f"config.{structure.SPEC_ATTR}.{LOWRANK_KEY}"
    if not isinstance(spec_entry, dict):
        raise ModelError(f"{where} is not a {{module name: rank}} mapping; re-save the model")
    for name, rank in spec_entry.items():
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ModelError(f"{where}: {name} has rank {rank!r}, not a positive integer; re-save the model")
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise ModelError(
                f"{where} names {name}, which {type(model).__name__} does not have; re-save the model"
            ) from None
        if isinstance(old, LowRankLinear) and old.rank == rank:
            continue  # restored already (restore called twice)
        if not isinstance(old, nn.Linear):
            raise ModelError(f"{where} names {name}, a {type(old).__name__}, not a Linear layer; re-save the model")
        new = LowRankLinear(old.in_features, old.out_features, rank, bias=old.bias is not None)
        _replace(model, name, new.to(device=old.weight.device, dtype=old.weight.dtype))
