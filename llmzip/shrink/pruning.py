"""Structured pruning for distillation: score attention heads and FFN neurons, then physically remove the weakest.

Scores are first-order Taylor estimates of how much the loss changes when a unit is removed: |Σ a·∂L/∂a| over a
unit's activations a (Michel et al. 2019, "Are Sixteen Heads Really Better than One?", for heads; Molchanov et
al. 2017/2019 for neurons). Removal slices the Linear layers; the new shapes go into the model's structure spec
(llmzip/shrink/structure.py) so the pruned model loads again. BERT-style encoders only (bert, roberta, xlm-roberta,
electra, ...): their attention reshapes with `view(..., -1, head_size)`, so fewer heads need only narrower q/k/v
and attention-output layers, and config.num_attention_heads (which sets the head size) stays as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from llmzip.errors import ConfigError, DataError, ModelError
from llmzip.modeling import count_parameters, layer_stack
from llmzip.shrink import structure

if TYPE_CHECKING:
    from transformers import PreTrainedModel

LossFn = Callable[[Any, dict[str, torch.Tensor]], torch.Tensor]
HEADS_KEY = "heads"  # spec entry: per layer, the kept heads in the unpruned model's numbering

# Module paths inside one transformer layer, relative to the layer (BERT's layout, shared by its derivatives).
QKV = ("attention.self.query", "attention.self.key", "attention.self.value")
ATTENTION_OUT = "attention.output.dense"
INTERMEDIATE = "intermediate.dense"
FFN_OUT = "output.dense"


@dataclass
class Importance:
    """Per-layer scores: `heads` [layers, heads] (each layer's row scaled to unit L2 norm), `neurons`
    [layers, intermediate size] (raw mean |Σ a·∂L/∂a| per example). Higher means more important."""

    heads: torch.Tensor
    neurons: torch.Tensor
    examples: int


@dataclass
class _Block:
    """The module names of one layer's prunable Linears, and its head size."""

    qkv: tuple[str, str, str]
    attention_out: str
    intermediate: str
    ffn_out: str
    head_size: int


def _blocks(model: PreTrainedModel) -> list[_Block]:
    """Every layer's prunable Linears, or a one-line ModelError for a model without BERT's layout."""
    model_type = getattr(model.config, "model_type", type(model).__name__)
    refusal = ModelError(
        "structured pruning supports BERT-style encoders (bert, roberta, xlm-roberta, electra: "
        f"layer.attention.self.query/key/value, layer.intermediate.dense, layer.output.dense); {model_type} is not one"
    )
    try:
        prefix, stack = layer_stack(model)
    except ModelError:
        raise refusal from None
    blocks = []
    names = (*QKV, ATTENTION_OUT, INTERMEDIATE, FFN_OUT)
    for i, layer in enumerate(stack):
        try:
            modules = [layer.get_submodule(n) for n in names]
            attention: Any = layer.get_submodule("attention.self")  # transformers' class, untyped attributes
            head_size = int(attention.attention_head_size)
        except AttributeError:
            raise refusal from None
        if not all(isinstance(m, nn.Linear) for m in modules):
            raise refusal
        full = [f"{prefix}.{i}.{n}" for n in names]
        blocks.append(_Block((full[0], full[1], full[2]), full[3], full[4], full[5], head_size))
    return blocks


def _linear(model: nn.Module, name: str) -> nn.Linear:
    module = model.get_submodule(name)
    if not isinstance(module, nn.Linear):
        raise ModelError(f"{name} is a {type(module).__name__}, not a Linear layer; prune before quantizing")
    return module


def _sizes(model: PreTrainedModel, blocks: list[_Block]) -> tuple[int, int]:
    """(heads, neurons) per layer, equal in every layer (what prune writes, and what the scores' tensors need)."""
    heads = {_linear(model, b.attention_out).in_features // b.head_size for b in blocks}
    neurons = {_linear(model, b.intermediate).out_features for b in blocks}
    if len(heads) != 1 or len(neurons) != 1:
        raise ModelError(
            f"layers differ in head count {sorted(heads)} or FFN width {sorted(neurons)}; "
            "llmzip prunes layers with equal shapes only"
        )
    return heads.pop(), neurons.pop()


def importance(model: PreTrainedModel, batches: Iterable[dict[str, torch.Tensor]], loss_fn: LossFn) -> Importance:
    """First-order Taylor importance of every head and FFN neuron over `batches`.

    `loss_fn(model, batch)` returns the scalar loss to preserve (CE on labels, or KD against a teacher; a teacher
    may run under torch.no_grad inside it). Scored in eval mode, so dropout does not add noise; per example, a
    head scores |Σ a·∂L/∂a| over its context dims and the non-padding positions, a neuron the same over positions.
    Gradients come from torch.autograd.grad on the captured activations: parameters' .grad stay untouched, and
    the model returns to its train/eval mode. Head scores are divided by their layer's L2 norm, as Michel et al.
    do so that layers compare on one scale (per-layer pruning ranks the same either way).
    """
    blocks = _blocks(model)
    n_heads, n_neurons = _sizes(model, blocks)
    layers = len(blocks)
    heads = torch.zeros(layers, n_heads, dtype=torch.float64)
    neurons = torch.zeros(layers, n_neurons, dtype=torch.float64)
    captured: list[tuple[str, int, torch.Tensor]] = []

    def capture(kind: str, index: int) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(_module: nn.Module, inputs: tuple[Any, ...]) -> None:
            captured.append((kind, index, inputs[0]))

        return hook

    handles = [
        _linear(model, b.attention_out).register_forward_pre_hook(capture("heads", i)) for i, b in enumerate(blocks)
    ]
    handles += [
        _linear(model, b.ffn_out).register_forward_pre_hook(capture("neurons", i)) for i, b in enumerate(blocks)
    ]
    was_training = model.training
    params = list(model.parameters())
    # Activations need a graph to differentiate through; a frozen student would otherwise have none.
    flags = [p.requires_grad for p in params]
    examples = 0
    model.eval()
    try:
        with torch.enable_grad():
            for p in params:
                p.requires_grad_(True)
            for batch in batches:
                captured.clear()
                loss = loss_fn(model, batch)
                if not captured:
                    raise ModelError("loss_fn did not run the model being scored; it must call model(...) itself")
                grads = torch.autograd.grad(loss, [t for _, _, t in captured], allow_unused=True)
                mask = batch.get("attention_mask")
                for (kind, index, a), g in zip(captured, grads):
                    if g is None:
                        continue
                    contribution = a.detach().float() * g.float()  # [batch, positions, width]
                    if mask is not None and tuple(mask.shape) == tuple(a.shape[:2]):
                        contribution = contribution * mask.to(contribution).unsqueeze(-1)
                    per_example = contribution.sum(dim=1)
                    if kind == "heads":
                        per_example = per_example.view(per_example.shape[0], n_heads, -1).sum(-1)
                    # Totals in float64 on the CPU: many batches of small terms, wherever the model runs.
                    total = per_example.abs().sum(0).to("cpu", torch.float64)
                    (heads if kind == "heads" else neurons)[index] += total
                examples += int(captured[0][2].shape[0])
                captured.clear()
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        model.train(was_training)
    if examples == 0:
        raise DataError("importance scoring got no batches; pass at least one batch of examples")
    if not (torch.isfinite(heads).all() and torch.isfinite(neurons).all()):
        raise ModelError("importance scores are NaN/Inf: the loss is not finite on the scoring batches")
    heads /= examples
    neurons /= examples
    heads = heads / heads.norm(dim=1, keepdim=True).clamp_min(1e-30)
    return Importance(heads=heads.float(), neurons=neurons.float(), examples=examples)


def _top(scores: torch.Tensor, k: int) -> list[int]:
    """The k best indices in their original order (ties go to the lower index, so pruning is deterministic)."""
    order = torch.argsort(scores, descending=True, stable=True)[:k]
    return sorted(int(i) for i in order)


def _keep(linear: nn.Linear, index: list[int], *, dim: int) -> None:
    """Keep the given output rows (dim 0, with the bias) or input columns (dim 1) of a Linear, in place."""
    rows = torch.tensor(index, dtype=torch.long, device=linear.weight.device)
    weight = linear.weight.detach().index_select(dim, rows).clone()
    linear.weight = nn.Parameter(weight, requires_grad=linear.weight.requires_grad)
    if dim == 0:
        linear.out_features = len(index)
        if linear.bias is not None:
            bias = linear.bias.detach().index_select(0, rows).clone()
            linear.bias = nn.Parameter(bias, requires_grad=linear.bias.requires_grad)
    else:
        linear.in_features = len(index)


def _check_count(value: int | None, option: str, limit: int) -> None:
    if value is not None and not 1 <= value <= limit:
        raise ConfigError(f"{option} must be between 1 and {limit} (this model's count per layer), got {value}")


def prune(model: PreTrainedModel, scores: Importance, *, heads: int | None, neurons: int | None) -> dict[str, Any]:
    """Keep the `heads` best heads and `neurons` best FFN neurons of every layer (None: keep all), in place.

    Equal counts in every layer keep the config simple and the layers one shape for the int8 kernels. The new
    shapes and the kept heads are recorded in the model's structure spec; returns a JSON-able summary.
    """
    blocks = _blocks(model)
    n_heads, n_neurons = _sizes(model, blocks)
    _check_count(heads, "heads", n_heads)
    _check_count(neurons, "neurons", n_neurons)
    expected = {"heads": (len(blocks), n_heads), "neurons": (len(blocks), n_neurons)}
    for kind, tensor in (("heads", scores.heads), ("neurons", scores.neurons)):
        if tuple(tensor.shape) != expected[kind]:
            raise ModelError(
                f"importance {kind} scores are {list(tensor.shape)} but the model has {list(expected[kind])}; "
                "score this model (pruning.importance) right before pruning it"
            )
    before = count_parameters(model)
    spec = structure.spec_of(model.config)
    # Heads pruned before keep their original numbers, so kept_heads always names the unpruned model's heads.
    previous = spec.get(HEADS_KEY) if spec is not None else None
    kept_heads: list[list[int]] = []
    kept_neurons: list[int] = []
    for i, block in enumerate(blocks):
        original = [int(h) for h in previous[i]] if previous is not None else list(range(n_heads))
        keep = _top(scores.heads[i], heads) if heads is not None and heads < n_heads else list(range(n_heads))
        if len(keep) < n_heads:
            dims = [h * block.head_size + d for h in keep for d in range(block.head_size)]
            for name in block.qkv:
                _keep(_linear(model, name), dims, dim=0)
            _keep(_linear(model, block.attention_out), dims, dim=1)
            for name in (*block.qkv, block.attention_out):
                structure.record_linear(model, name)
        kept_heads.append([original[h] for h in keep])
        if neurons is not None and neurons < n_neurons:
            units = _top(scores.neurons[i], neurons)
            _keep(_linear(model, block.intermediate), units, dim=0)
            _keep(_linear(model, block.ffn_out), units, dim=1)
            structure.record_linear(model, block.intermediate)
            structure.record_linear(model, block.ffn_out)
        kept_neurons.append(_linear(model, block.intermediate).out_features)
    if heads is not None and heads < n_heads or previous is not None:
        structure.set_entry(model, HEADS_KEY, kept_heads)
    after = count_parameters(model)
    return {
        "kept_heads": kept_heads,
        "heads_per_layer": len(kept_heads[0]),
        "neurons_per_layer": kept_neurons,
        "parameters": {"before": before, "after": after},
    }


def kept_heads(model: PreTrainedModel) -> list[list[int]] | None:
    """Per layer, the heads of the unpruned model that survive (None when no head was pruned): what an
    attention-map loss indexes the teacher's maps with, when the student was cut from the teacher's heads."""
    spec = structure.spec_of(model.config)
    if spec is None or spec.get(HEADS_KEY) is None:
        return None
    return [[int(h) for h in layer] for layer in spec[HEADS_KEY]]
