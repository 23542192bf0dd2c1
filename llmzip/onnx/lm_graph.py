"""A Llama-family decoder written directly as onnxruntime's fused CPU graph, with llmzip's own weights.

Why not only the traced export (llmzip/onnx/lm_export.py): tracing keeps attention as ~30 small ops per layer (rotary
slices, repeat_kv, masking, softmax) and RMSNorm as 6; onnxruntime fuses none of them for a decoder, and at one
token per step those ops, not the matmuls, dominate decode time (measured: ~2× slower per token than the same
MatMulNBits weights in the fused form). onnxruntime's contrib ops do the whole thing in a few kernels:
GroupQueryAttention (rotary, KV cache append, grouped heads, causal softmax), SkipSimplifiedLayerNormalization
(residual add + RMSNorm), MatMulNBits with q/k/v fused into one product, and GatherBlockQuantized so that a tied
embedding reads the int4 lm_head instead of storing a second table. That is the layout onnxruntime-genai's model
builder emits; writing it here keeps llmzip's GPTQ codes and checks (parity with PyTorch on prefill and decode)
and needs no second toolchain.

Signature: input_ids, attention_mask, past_key_values.{i}.key|value → logits, present.{i}.key|value (the same
names as the traced graph, without position_ids: GroupQueryAttention derives positions from the mask).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from llmzip.errors import ExportError
from llmzip.runtime.lm import CACHE_INPUT, CACHE_OUTPUT, cache_shape

MS = "com.microsoft"
SUPPORTED = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")


def supports(model: Any) -> str | None:
    """None when the fused graph can represent `model`, else why not (the traced export is used then)."""
    config: Any = model.config
    arch = type(model).__name__
    if arch not in SUPPORTED:
        return f"{arch} is not a Llama-family decoder ({', '.join(SUPPORTED)})"
    head_dim = cache_shape(config)[2]
    if head_dim % 16:
        return f"head size {head_dim} (GroupQueryAttention needs a multiple of 16)"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act} (the fused graph has SiLU)"
    kinds = set(getattr(config, "layer_types", None) or [])
    if _window(config) > 0 and kinds and kinds != {"sliding_attention"}:
        return "a mix of sliding-window and full-attention layers"
    scale = getattr(model.get_input_embeddings(), "embed_scale", None)
    if scale is not None and float(scale) != 1.0:
        return "scaled word embeddings"
    scaling = getattr(model.model.rotary_emb, "rope_type", "default")
    if scaling not in ("default", "llama3", "linear"):
        return f"rotary scaling {scaling}"
    return None


class _Graph:
    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.inits: dict[str, Any] = {}
        self.count = 0

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        if name not in self.inits:
            array = np.asarray(value)  # a 0-d value stays a scalar (Range needs scalars)
            self.inits[name] = numpy_helper.from_array(array if array.ndim == 0 else np.ascontiguousarray(array), name)
        return name

    def op(
        self, op_type: str, inputs: list[str], *, outputs: int | list[str] = 1, domain: str = "", **attrs: Any
    ) -> Any:
        from onnx import helper

        self.count += 1
        names = outputs if isinstance(outputs, list) else [f"/{op_type}_{self.count}/{i}" for i in range(outputs)]
        self.nodes.append(
            helper.make_node(op_type, inputs, names, name=f"{op_type}_{self.count}", domain=domain, **attrs)
        )
        return names[0] if len(names) == 1 else names


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().contiguous().numpy()


def _linear(g: _Graph, x: str, modules: list[Any], name: str) -> str:
    """One product for one or several Linears read from the same input (q/k/v): their outputs concatenated."""
    from llmzip.quant.weight_only import WeightOnlyLinear

    if all(isinstance(m, WeightOnlyLinear) for m in modules):
        first: Any = modules[0]
        same = all(
            (m.bits, m.block_size, m.weight_zero_point is None)
            == (first.bits, first.block_size, first.weight_zero_point is None)
            for m in modules
        )
        if same:
            packed = g.const(f"{name}.qweight", np.concatenate([_np(m.weight_packed) for m in modules]))
            scales = g.const(f"{name}.scales", np.concatenate([_np(m.weight_scale) for m in modules]))
            inputs = [x, packed, scales]
            if first.weight_zero_point is not None:
                inputs.append(
                    g.const(f"{name}.zero_points", np.concatenate([_np(m.weight_zero_point) for m in modules]))
                )
            n = sum(int(m.out_features) for m in modules)
            attrs = {"K": int(first.in_features), "N": n, "bits": int(first.bits), "block_size": int(first.block_size)}
            if first.accuracy_level:
                attrs["accuracy_level"] = int(first.accuracy_level)
            offsets = _offsets(modules)
            if offsets is not None and first.float_zero_points:
                inputs = [x, packed, scales, g.const(f"{name}.float_zero_points", _float_zero_points(modules))]
                offsets = None
            y = g.op("MatMulNBits", inputs, domain=MS, **attrs)
            if offsets is not None:  # Σ_b (Σ_{k∈b} x_k)·offset[n, b]: keeps the fast integer kernel exact
                blocks = offsets.shape[1]
                shape = g.const(f"{name}.block_shape", np.array([0, 0, blocks, int(first.block_size)], dtype=np.int64))
                sums = g.op(
                    "ReduceSum", [g.op("Reshape", [x, shape]), g.const("last_axis", np.array([-1]))], keepdims=0
                )
                y = g.op("Add", [y, g.op("MatMul", [sums, g.const(f"{name}.offsets", offsets.T.copy())])])
            return _bias(g, y, modules, name)
    if all(isinstance(m, nn.Linear) for m in modules):
        weight = np.concatenate([_np(m.weight).T for m in modules], axis=1)
        y = g.op("MatMul", [x, g.const(f"{name}.weight", weight)])
        return _bias(g, y, modules, name)
    if len(modules) > 1:  # mixed precisions: one product each, concatenated
        parts = [_linear(g, x, [m], f"{name}.{i}") for i, m in enumerate(modules)]
        return str(g.op("Concat", parts, axis=-1))
    raise ExportError(f"{name}: {type(modules[0]).__name__} has no ONNX form in the fused decoder graph")


def _offsets(modules: list[Any]) -> np.ndarray | None:
    """The block offsets [N, blocks] of one fused product (zeros for a module without), or None if none has any."""
    if all(m.weight_offset is None for m in modules):
        return None
    return np.concatenate(
        [_np(m.weight_offset) if m.weight_offset is not None else np.zeros_like(_np(m.weight_scale)) for m in modules]
    )


def _float_zero_points(modules: list[Any]) -> np.ndarray:
    """The offsets folded into float zero points (exact; onnxruntime's CPU kernel then dequantizes per call)."""
    try:
        return np.concatenate([_np(m.float_zero_point_tensor()) for m in modules]).astype(np.float32)
    except ValueError as err:
        raise ExportError(f"{err}; export without float zero points") from None


def _bias(g: _Graph, y: str, modules: list[Any], name: str) -> str:
    biases = [getattr(m, "bias", None) for m in modules]
    if all(b is None for b in biases):
        return y
    full = np.concatenate(
        [_np(b) if b is not None else np.zeros(int(m.out_features), np.float32) for b, m in zip(biases, modules)]
    )
    return str(g.op("Add", [y, g.const(f"{name}.bias", full)]))


def _embedding(g: _Graph, model: Any) -> str:
    from llmzip.quant.modules import QuantEmbedding
    from llmzip.quant.weight_only import SharedEmbedding

    table: Any = model.get_input_embeddings()
    if isinstance(table, SharedEmbedding):  # block-quantized rows: the tied lm_head's, or a table of its own
        head = table.head
        prefix = "lm_head" if type(table) is SharedEmbedding else "embed"
        rows = head.weight_packed.shape[0]
        packed = g.const(f"{prefix}.qweight", _np(head.weight_packed))
        data = g.op("Reshape", [packed, g.const("embed.shape", np.array([rows, -1], dtype=np.int64))])
        inputs = [data, "input_ids", g.const(f"{prefix}.scales", _np(head.weight_scale))]
        if head.weight_zero_point is not None:
            inputs.append(g.const(f"{prefix}.zero_points", _np(head.weight_zero_point)))
        rows_out = g.op(
            "GatherBlockQuantized",
            inputs,
            domain=MS,
            bits=int(head.bits),
            block_size=int(head.block_size),
            gather_axis=0,
            quantize_axis=1,
        )
        k = int(head.in_features)
        if head.weight_offset is not None:  # each row's block offsets, repeated over the block's inputs
            offsets = g.op("Gather", [g.const(f"{prefix}.row_offsets", _np(head.weight_offset)), "input_ids"], axis=0)
            spread = g.op(
                "Mul",
                [
                    g.op("Unsqueeze", [offsets, g.const("last_axis", np.array([-1]))]),
                    g.const("embed.ones", np.ones(int(head.block_size), np.float32)),
                ],
            )
            flat = g.op(
                "Concat", [g.op("Shape", ["input_ids"]), g.const("embed.width", np.array([k], dtype=np.int64))], axis=0
            )
            rows_out = g.op("Add", [rows_out, g.op("Reshape", [spread, flat])])
        if head.weight_scale.shape[1] * int(head.block_size) > k:  # K padded up to whole blocks: keep the first K
            starts, ends, axes = (
                g.const(f"embed.slice{i}", np.array([v], dtype=np.int64)) for i, v in enumerate((0, k, -1))
            )
            return str(g.op("Slice", [rows_out, starts, ends, axes]))
        return str(rows_out)
    if isinstance(table, QuantEmbedding):
        q = g.op("Gather", [g.const("embed.int8", _np(table.weight_q)), "input_ids"], axis=0)
        scale = g.op("Gather", [g.const("embed.scale", _np(table.row_scale)[:, None]), "input_ids"], axis=0)
        return str(g.op("Mul", [g.op("Cast", [q], to=1), scale]))
    return str(g.op("Gather", [g.const("embed.weight", _np(table.weight)), "input_ids"], axis=0))


def _window(config: Any) -> int:
    """GroupQueryAttention's local_window_size: the config's sliding window where the family uses one (Mistral),
    else -1 (full attention). Qwen2 declares a window it only uses with use_sliding_window."""
    window = getattr(config, "sliding_window", None)
    if not window or getattr(config, "use_sliding_window", True) is False:
        return -1
    return int(window)


def _rotary_caches(g: _Graph, model: Any) -> tuple[str, str]:
    """cos/sin tables [positions, head/2], computed by the graph from the rotary frequencies: constants that
    onnxruntime folds when the session starts, instead of ~1 MB each in the file (8,192 positions for SmolLM2)."""
    rotary: Any = model.model.rotary_emb
    positions = g.op(
        "Range",
        [
            g.const("rope.start", np.array(0, dtype=np.float32)),
            g.const("rope.limit", np.array(float(model.config.max_position_embeddings), dtype=np.float32)),
            g.const("rope.delta", np.array(1, dtype=np.float32)),
        ],
    )
    column = g.op("Unsqueeze", [positions, g.const("rope.axis", np.array([1], dtype=np.int64))])
    freqs = g.op("Mul", [column, g.const("rope.inv_freq", _np(rotary.inv_freq.float())[None, :])])
    scale = g.const("rope.scale", np.array(float(getattr(rotary, "attention_scaling", 1.0)), dtype=np.float32))
    return str(g.op("Mul", [g.op("Cos", [freqs]), scale])), str(g.op("Mul", [g.op("Sin", [freqs]), scale]))


def write_fused_graph(model: Any, path: Path, *, opset: int) -> None:
    """Write `model` (fp32 or with WeightOnlyLinear layers) as the fused decoder graph at `path`."""
    import onnx
    from onnx import TensorProto, helper

    config: Any = model.config
    layers, kv_heads, head_dim = cache_shape(config)
    heads, eps = int(config.num_attention_heads), float(config.rms_norm_eps)
    g = _Graph()
    one = g.const("one", np.array([1], dtype=np.int64))
    seqlens = g.op("Cast", [g.op("Sub", [g.op("ReduceSum", ["attention_mask", one], keepdims=0), one])], to=6)
    total = g.op(
        "Cast", [g.op("Gather", [g.op("Shape", ["attention_mask"]), g.const("one_s", np.array(1))], axis=0)], to=6
    )
    cos_name, sin_name = _rotary_caches(g, model)
    hidden = _embedding(g, model)
    blocks: Any = model.model.layers
    residual: Any = None
    normed: Any = None
    for i, block in enumerate(blocks):
        ln1 = g.const(f"layers.{i}.input_layernorm", _np(block.input_layernorm.weight))
        if residual is None:
            normed = g.op("SimplifiedLayerNormalization", [hidden, ln1], epsilon=eps, axis=-1, stash_type=1)
            residual = hidden
        else:
            normed, _, _, residual = g.op(
                "SkipSimplifiedLayerNormalization", [residual, hidden, ln1], outputs=4, domain=MS, epsilon=eps
            )
        attn = block.self_attn
        qkv = _linear(g, normed, [attn.q_proj, attn.k_proj, attn.v_proj], f"layers.{i}.qkv")
        present = [CACHE_OUTPUT.format(i, "key"), CACHE_OUTPUT.format(i, "value")]
        out = g.op(
            "GroupQueryAttention",
            [
                qkv,
                "",
                "",
                CACHE_INPUT.format(i, "key"),
                CACHE_INPUT.format(i, "value"),
                seqlens,
                total,
                cos_name,
                sin_name,
            ],
            outputs=[f"/layers.{i}/attn", *present],
            domain=MS,
            num_heads=heads,
            kv_num_heads=kv_heads,
            scale=float(getattr(attn, "scaling", head_dim**-0.5)),
            local_window_size=_window(config),
            do_rotary=1,
            rotary_interleaved=0,
        )[0]
        attn_out = _linear(g, out, [attn.o_proj], f"layers.{i}.o_proj")
        ln2 = g.const(f"layers.{i}.post_attention_layernorm", _np(block.post_attention_layernorm.weight))
        normed, _, _, residual = g.op(
            "SkipSimplifiedLayerNormalization", [residual, attn_out, ln2], outputs=4, domain=MS, epsilon=eps
        )
        mlp = block.mlp
        gate_up = _linear(g, normed, [mlp.gate_proj, mlp.up_proj], f"layers.{i}.gate_up")  # one product, as q/k/v
        widths = g.const(f"layers.{i}.gate_up.split", np.array([mlp.gate_proj.out_features, mlp.up_proj.out_features]))
        gate, up = g.op("Split", [gate_up, widths], outputs=2, axis=-1)
        act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), up])
        hidden = _linear(g, act, [block.mlp.down_proj], f"layers.{i}.down_proj")
    final = g.const("norm", _np(model.model.norm.weight))
    normed = g.op("SkipSimplifiedLayerNormalization", [residual, hidden, final], outputs=4, domain=MS, epsilon=eps)[0]
    head: Any = model.get_output_embeddings()
    table: Any = model.get_input_embeddings()
    if isinstance(head, nn.Linear) and head.weight is getattr(table, "weight", None) and head.bias is None:
        # tied fp32 head: Gemm reads the embedding table transposed (transB), so the file stores it once
        flat = g.op("Reshape", [normed, g.const("flat.shape", np.array([-1, head.in_features], dtype=np.int64))])
        scores = g.op("Gemm", [flat, "embed.weight"], transB=1)
        batch_seq = g.op(
            "Slice", [g.op("Shape", [normed]), g.const("zero", np.array([0])), g.const("two", np.array([2]))]
        )
        vocab = g.const("vocab", np.array([head.out_features], dtype=np.int64))
        logits = g.op("Reshape", [scores, g.op("Concat", [batch_seq, vocab], axis=0)])
    else:
        logits = _linear(g, normed, [head], "lm_head")
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="logits"))

    def tensor(name: str, dtype: int, dims: list[Any]) -> Any:
        return helper.make_tensor_value_info(name, dtype, dims)

    cache_dims = lambda length: ["batch", kv_heads, length, head_dim]  # noqa: E731
    inputs = [
        tensor("input_ids", TensorProto.INT64, ["batch", "sequence"]),
        tensor("attention_mask", TensorProto.INT64, ["batch", "total_sequence"]),
    ]
    outputs = [tensor("logits", TensorProto.FLOAT, ["batch", "sequence", int(config.vocab_size)])]
    for i in range(layers):
        for kv in ("key", "value"):
            inputs.append(tensor(CACHE_INPUT.format(i, kv), TensorProto.FLOAT, cache_dims("past_sequence")))
            outputs.append(tensor(CACHE_OUTPUT.format(i, kv), TensorProto.FLOAT, cache_dims("total_sequence")))
    graph = helper.make_graph(g.nodes, "llmzip-decoder", inputs, outputs, list(g.inits.values()))
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(MS, 1)], producer_name="llmzip"
    )
    big = sum(t.ByteSize() for t in g.inits.values()) > 1_800_000_000  # protobuf's 2 GB limit
    onnx.save(proto, str(path), save_as_external_data=big, location=f"{path.name}.data" if big else None)
