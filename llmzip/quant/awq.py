"""AWQ (Lin et al. 2024): activation-aware per-input-channel scales and per-block clipping for weight-only codes.

A few input channels of each Linear carry much larger activations than the rest; their weights matter most, yet
rounding treats every weight alike. AWQ multiplies each input channel's weights by s_j = mean|x_j|^α (so those
weights land on a finer relative grid) and divides the channel by s_j where it is produced — folded into the
RMSNorm before q/k/v and gate/up, and into up_proj's rows before down_proj, so the model computes the same thing
in float and nothing is added to the graph. α is searched per layer group on the calibration inputs (the output
error of the quantized group); then each block's clipping range is searched the same way (shrinking the range
trades clipping of rare large weights for a finer step everywhere else).

Why by hand: the reference implementations (llm-awq, AutoAWQ) are GPU/CUDA-kernel packages tied to their own
model classes and formats; the search itself is a few lines of tensor algebra on the calibration activations
llmzip already streams, and owning it keeps the codes in MatMulNBits' layout and the layers it can fold known.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from llmzip.errors import ModelError
from llmzip.quant import qmath
from llmzip.quant.gptq import _hidden, layer_inputs
from llmzip.quant.weight_only import block_qparams

ALPHAS = [i / 20 for i in range(21)]
CLIP_RATIOS = [1.0 - 0.05 * i for i in range(11)]  # 1.0 … 0.5
SAMPLE_TOKENS = 2048  # calibration tokens each search runs on (of every window, evenly)
# RMSNorm classes whose weight multiplies the normalised input (x̂·γ): dividing γ by s scales the output by 1/s.
# (Gemma's (1 + γ) norm and LayerNorm's bias would need another fold.)
FOLDABLE_NORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "GraniteRMSNorm")


def _pad(t: torch.Tensor, block: int) -> torch.Tensor:
    """The last dimension zero-padded to whole blocks (as MatMulNBits pads K)."""
    extra = -t.shape[-1] % block
    return torch.nn.functional.pad(t, (0, extra)) if extra else t


def _fake_quant(w: torch.Tensor, *, bits: int, block: int, symmetric: bool, ratio: float = 1.0) -> torch.Tensor:
    """w [N, K] rounded blockwise (the block's range shrunk by `ratio`) and dequantized again."""
    n, k = w.shape
    blocks = _pad(w, block).reshape(n, -1, block)
    scale, zero_point, grid = block_qparams(blocks * ratio, bits=bits, symmetric=symmetric)
    codes = qmath.quantize(blocks, scale[..., None], zero_point[..., None], grid)
    return ((codes.float() - zero_point[..., None].float()) * scale[..., None]).reshape(n, -1)[:, :k]


def _groups(layer: nn.Module) -> list[tuple[nn.Module | None, list[str], str]]:
    """(the module whose output feeds them, the Linears fed, how to fold) for one Llama-family decoder layer;
    o_proj's input comes from attention (no fold: only its clipping is searched)."""
    for norm in (layer.input_layernorm, layer.post_attention_layernorm):  # type: ignore[union-attr]
        if type(norm).__name__ not in FOLDABLE_NORMS:
            raise ModelError(
                f"AWQ folds its scales into the RMSNorm of Llama-family decoders; {type(norm).__name__} is not one "
                "(use --algorithm gptq or rtn)"
            )
    return [
        (layer.input_layernorm, ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], "norm"),  # type: ignore[union-attr]
        (None, ["self_attn.o_proj"], "none"),
        (layer.post_attention_layernorm, ["mlp.gate_proj", "mlp.up_proj"], "norm"),  # type: ignore[union-attr]
        (layer.mlp.up_proj, ["mlp.down_proj"], "rows"),  # type: ignore[union-attr]
    ]


def _sample(rows: list[torch.Tensor]) -> torch.Tensor:
    x = torch.cat([r.reshape(-1, r.shape[-1]) for r in rows]).float()
    if len(x) > SAMPLE_TOKENS:
        x = x[torch.linspace(0, len(x) - 1, SAMPLE_TOKENS).long()]
    return x


def _best_scale(x: torch.Tensor, linears: list[nn.Linear], *, bits: int, block: int, symmetric: bool) -> torch.Tensor:
    """s = mean|x|^α for the α whose quantized group output is closest to the float one."""
    mean = x.abs().mean(0).clamp(min=1e-5)
    want = [x @ lin.weight.float().t() for lin in linears]
    best, best_err = torch.ones_like(mean), float("inf")
    for alpha in ALPHAS:
        s = mean**alpha
        s = s / (s.max() * s.min()).sqrt()
        err = 0.0
        for lin, ref in zip(linears, want):
            q = _fake_quant(lin.weight.float() * s[None, :], bits=bits, block=block, symmetric=symmetric)
            err += float(((x / s[None, :]) @ q.t() - ref).pow(2).mean())
        if err < best_err:
            best, best_err = s, err
    return best


def clipped_codes(
    weight: torch.Tensor, x: torch.Tensor, *, bits: int, block: int, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes [N, K/block, block], scales and zero points with each (row, block)'s range shrunk by the ratio that
    minimises that block's output error on the calibration inputs `x` [tokens, K]."""
    n = weight.shape[0]
    w = _pad(weight.detach().float(), block).reshape(n, -1, block)
    xb = _pad(x.float(), block).reshape(len(x), -1, block)
    best_err = torch.full(w.shape[:2], float("inf"))
    best_ratio = torch.ones(w.shape[:2])
    for ratio in CLIP_RATIOS:
        scale, zp, grid = block_qparams(w * ratio, bits=bits, symmetric=symmetric)
        dq = (qmath.quantize(w, scale[..., None], zp[..., None], grid).float() - zp[..., None].float()) * scale[
            ..., None
        ]
        err = torch.einsum("tbk,nbk->nbt", xb, w - dq).pow(2).mean(-1)  # [N, blocks]
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_ratio = torch.where(better, torch.full_like(best_ratio, ratio), best_ratio)
    scale, zp, grid = block_qparams(w * best_ratio[..., None], bits=bits, symmetric=symmetric)
    codes = qmath.quantize(w, scale[..., None], zp[..., None], grid)
    return codes, scale, zp


def awq(
    model: nn.Module,
    names: list[str],
    batches: list[dict[str, torch.Tensor]],
    *,
    bits_of: Any,
    block: int,
    symmetric: bool,
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, float]]]:
    """Scale `model` in place (float-equivalent: the scales are folded into the norms and up_proj), layer by layer
    on the inputs the already-scaled layers below produce; returns each Linear's calibration input sample (for the
    clipping search) and per-group statistics."""
    from llmzip.progress import progress

    stack_name, stack, captured = layer_inputs(model, batches)
    hidden = [args[0] for args, _ in captured]
    samples: dict[str, torch.Tensor] = {}
    stats: dict[str, dict[str, float]] = {}
    with progress() as bar, torch.no_grad():
        task = bar.add_task("AWQ: scales and clipping, layer by layer", total=len(stack), info="")
        for i, layer in enumerate(stack):
            prefix = f"{stack_name}.{i}."
            for source, fed, fold in _groups(layer):
                wanted = [prefix + f for f in fed]
                if not all(w in names for w in wanted):
                    continue
                seen: list[torch.Tensor] = []
                first = layer.get_submodule(fed[0])
                handle = first.register_forward_pre_hook(lambda m, a, into=seen: into.append(a[0].detach()))
                for x, (args, kwargs) in zip(hidden, captured):
                    layer(x, *args[1:], **kwargs)
                handle.remove()
                x = _sample(seen)
                linears = [layer.get_submodule(f) for f in fed]
                bits = int(bits_of(wanted[0]))
                if source is None:
                    s = torch.ones(x.shape[-1])
                else:
                    s = _best_scale(x, linears, bits=bits, block=block, symmetric=symmetric)
                    for lin in linears:
                        lin.weight.mul_(s[None, :])
                if fold == "norm":
                    source.weight.div_(s)  # type: ignore[union-attr]
                elif fold == "rows":  # up_proj's output rows (and bias) feed down_proj's inputs one to one
                    source.weight.div_(s[:, None])  # type: ignore[union-attr]
                    if source.bias is not None:  # type: ignore[union-attr]
                        source.bias.div_(s)  # type: ignore[union-attr]
                for w in wanted:
                    samples[w] = x / s[None, :]
                stats[wanted[0]] = {"scale_max": round(float(s.max()), 4), "scale_min": round(float(s.min()), 4)}
            hidden = [_hidden(layer(x, *args[1:], **kwargs)) for x, (args, kwargs) in zip(hidden, captured)]
            bar.advance(task)
        # The output head reads the final norm of the last layer's output: its clipping is searched on that (its
        # columns are not scaled: a tied head's columns are the embedding's too).
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        head_name = next((n for n, m in model.named_modules() if m is head), None) if head is not None else None
        final_norm = getattr(getattr(model, "model", None), "norm", None)
        if head_name in names and final_norm is not None:
            samples[head_name] = _sample([final_norm(h) for h in hidden])
    return samples, stats


def awq_maker(
    fp32: nn.Module,
    names: list[str],
    batches: list[dict[str, torch.Tensor]],
    *,
    bits_of: Any,
    block: int,
    symmetric: bool,
    rounding: Any,
) -> tuple[nn.Module, Any, dict[str, dict[str, float]]]:
    """(the scaled float model to quantize, `make(name, linear)` with clipped codes, statistics). Layers AWQ has no
    inputs for (an lm_head) are rounded by `rounding`."""
    import copy

    from llmzip.quant.weight_only import WeightOnlyLinear

    scaled = copy.deepcopy(fp32)
    samples, stats = awq(scaled, names, batches, bits_of=bits_of, block=block, symmetric=symmetric)

    def make(name: str, linear: nn.Linear) -> nn.Module:
        x = samples.get(name)
        if x is None:
            return rounding(name, linear)
        bits = int(bits_of(name))
        codes, scale, zp = clipped_codes(linear.weight, x, bits=bits, block=block, symmetric=symmetric)
        return WeightOnlyLinear.from_codes(linear, codes, scale, zp, block_size=block, symmetric=symmetric, bits=bits)

    return scaled, make, stats
