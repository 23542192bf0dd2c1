"""A causal LM as one ONNX graph with a KV cache: prefill and decode are the same graph, fed different lengths.

Inputs and outputs follow the names onnxruntime-genai and optimum use, so other runners read the file too:
`input_ids [batch, sequence]`, `attention_mask [batch, past + sequence]`, `position_ids [batch, sequence]`,
`past_key_values.{i}.key|value [batch, kv_heads, past, head_dim]` → `logits [batch, sequence, vocabulary]`,
`present.{i}.key|value [batch, kv_heads, past + sequence, head_dim]`. Prefill feeds a past of length 0.

Why TorchScript (dynamo=False): it exports a 135M-parameter decoder in ~25 s where the dynamo exporter takes
~200 s for the same graph and the same parity, and it carries llmzip's MatMulNBits symbolic for weight-only
layers. Grouped-query attention needs nothing special: the model's own repeat_kv is traced into the graph, and
the cache holds the un-repeated KV heads.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from llmzip.errors import ExportError
from llmzip.runtime.lm import CACHE_INPUT, CACHE_OUTPUT, cache_shape, empty_cache, returned_cache, with_cache


def io_names(layers: int) -> tuple[list[str], list[str]]:
    cache_in = [CACHE_INPUT.format(i, kv) for i in range(layers) for kv in ("key", "value")]
    cache_out = [CACHE_OUTPUT.format(i, kv) for i in range(layers) for kv in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *cache_in], ["logits", *cache_out]


class WithCache(nn.Module):
    """The model as a function of flat tensors: (ids, mask, positions, *past) → (logits, *present)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.layers = cache_shape(model.config)[0]

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, *past: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(self.layers)]
        config: Any = self.model.config
        cache = DynamicCache(ddp_cache_data=pairs, config=config)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            **with_cache(self.model, cache),
        )
        present: list[torch.Tensor] = []
        for layer in returned_cache(out).layers:
            present += [layer.keys, layer.values]
        return (out.logits, *present)


def write_lm_onnx(model: nn.Module, path: Path, *, opset: int, source: Path) -> None:
    """torch.onnx.export of WithCache with dynamic batch, sequence and past axes."""
    from llmzip.quant.weight_only import WeightOnlyLinear

    config: Any = model.config
    layers = cache_shape(config)[0]
    inputs, outputs = io_names(layers)
    batch, seq, past = 2, 3, 4
    example_cache = [torch.from_numpy(v) + 0.01 for v in empty_cache(config, batch, past).values()]
    example = (
        torch.ones(batch, seq, dtype=torch.long),
        torch.ones(batch, past + seq, dtype=torch.long),
        torch.arange(past, past + seq).repeat(batch, 1),
        *example_cache,
    )
    axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "total_sequence"},
        "position_ids": {0: "batch", 1: "sequence"},
        "logits": {0: "batch", 1: "sequence"},
    }
    # A sliding-window layer's cache stops growing at the window (transformers keeps its last window − 1
    # positions) while a full-attention layer's keeps growing: each needs its own axis names, or onnxruntime
    # fails once the two lengths differ (Gemma 2/3 mix the two kinds).
    kinds = list(getattr(config, "layer_types", None) or [])
    for i in range(layers):
        sliding = i < len(kinds) and kinds[i] == "sliding_attention"
        for kv in ("key", "value"):
            axes[CACHE_INPUT.format(i, kv)] = {0: "batch", 2: f"past_window_{i}" if sliding else "past_sequence"}
            axes[CACHE_OUTPUT.format(i, kv)] = {0: "batch", 2: f"window_{i}" if sliding else "total_sequence"}
    custom = {"com.microsoft": 1} if any(isinstance(m, WeightOnlyLinear) for m in model.modules()) else None
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                WithCache(model).eval(),
                example,
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=inputs,
                output_names=outputs,
                dynamic_axes=axes,
                do_constant_folding=True,
                custom_opsets=custom,
            )
        except Exception as err:  # the exporter raises many types; the user's fix is the same
            raise ExportError(f"torch.onnx.export failed for {source}: {str(err).splitlines()[0][:300]}") from None


def _torch_step(
    model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any
) -> tuple[np.ndarray, Any]:
    with torch.no_grad():
        out = model(
            input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **with_cache(model, cache)
        )
    return out.logits.float().numpy(), returned_cache(out)


def parity(session: Any, model: nn.Module, prompts: np.ndarray, decode_steps: int) -> dict[str, Any]:
    """onnxruntime vs PyTorch on a prefill of `prompts` [batch, length] and `decode_steps` greedy steps after it,
    each side running on its own cache. Returns the largest |Δlogit| per phase and whether the tokens agree."""
    from transformers import DynamicCache

    config: Any = model.config
    batch, length = prompts.shape
    ids = prompts.astype(np.int64)
    mask = np.ones((batch, length), dtype=np.int64)
    positions = np.tile(np.arange(length, dtype=np.int64), (batch, 1))
    feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, **empty_cache(config, batch)}
    names = [o.name for o in session.get_outputs()]
    wanted = {i.name for i in session.get_inputs()}  # the fused graph has no position_ids
    cache: Any = DynamicCache(config=config)
    worst = {"prefill": 0.0, "decode": 0.0}
    scale = 0.0
    agree = total = 0
    for step in range(decode_steps + 1):
        try:
            got = dict(zip(names, session.run(None, {k: v for k, v in feeds.items() if k in wanted})))
        except Exception as err:  # onnxruntime's own error types: a graph that does not run is an export failure
            raise ExportError(
                f"the exported graph fails in onnxruntime at {'prefill' if step == 0 else f'decode step {step}'} "
                f"({str(err).splitlines()[0][:200]}); this is a bug: report it with the manifest"
            ) from None
        want, cache = _torch_step(
            model, torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(positions), cache
        )
        for side, logits in (("onnxruntime", got["logits"]), ("PyTorch", want)):
            if not np.isfinite(logits).all():
                raise ExportError(f"{side} returns NaN/Inf logits on the probe text; the model is not usable")
        phase = "prefill" if step == 0 else "decode"
        worst[phase] = max(worst[phase], float(np.abs(got["logits"] - want).max()))
        scale = max(scale, float(np.abs(want).max()))
        next_ort, next_torch = got["logits"][:, -1].argmax(-1), want[:, -1].argmax(-1)
        agree += int((next_ort == next_torch).sum())
        total += batch
        ids = next_torch[:, None].astype(np.int64)  # both sides continue with PyTorch's token
        positions = positions[:, -1:] + 1
        mask = np.concatenate([mask, np.ones((batch, 1), dtype=np.int64)], axis=1)
        feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
        feeds.update({CACHE_INPUT.format(*n.split(".")[1:]): v for n, v in got.items() if n.startswith("present.")})
    return {
        "prefill_max_abs_diff": worst["prefill"],
        "decode_max_abs_diff": worst["decode"],
        "max_abs_diff": max(worst.values()),
        "max_abs_logit": scale,
        "next_token_agreement": agree / max(1, total),
        "prompts": int(batch),
        "prompt_tokens": int(length),
        "decode_steps": decode_steps,
    }


def probe_prompts(directory: Path, tokenizer: Any, *, count: int = 2, length: int = 32) -> np.ndarray:
    """Parity prompts: the start of the calibration windows a quantized model carries, else the demo sentences."""
    from llmzip.quant.calibration import SAMPLES_FILE, read_samples

    if (directory / SAMPLES_FILE).is_file():
        rows = [r["input_ids"] for r in read_samples(directory) if "input_ids" in r]
        if len(rows) >= count and min(len(r) for r in rows[:count]) >= length:
            return np.array([r[:length] for r in rows[:count]], dtype=np.int64)
    from llmzip.data import DEMO_DATASET

    text = " ".join(line.split("\t")[0] for line in (DEMO_DATASET / "validation.tsv").read_text().splitlines()[1:])
    ids = tokenizer(text, add_special_tokens=True).input_ids
    if len(ids) < count * length:
        raise ExportError("the probe text is shorter than the parity prompts; this is a bug")
    return np.array([ids[i * length : (i + 1) * length] for i in range(count)], dtype=np.int64)


def _set_accuracy_level(path: Path, level: int) -> None:
    import onnx
    from onnx import helper

    proto = onnx.load(str(path))
    for node in proto.graph.node:
        if node.op_type == "MatMulNBits":
            kept = [a for a in node.attribute if a.name != "accuracy_level"]
            del node.attribute[:]
            node.attribute.extend([*kept, helper.make_attribute("accuracy_level", level)])
    onnx.save(proto, str(path))


def export_causal_lm(
    model: nn.Module, path: Path, *, source: Path, tokenizer: Any, config: Any, quantized: bool, weight_bits: int
) -> dict[str, Any]:
    """Write the KV-cache graph to `path`, check it against PyTorch on prefill and decode, and say what
    onnxruntime runs. Returns the export metrics (raises ExportError when parity or the kernels fail)."""
    import onnx

    from llmzip.config.choices import LmGraph
    from llmzip.onnx.export import float_weight_matmuls, optimized_graph
    from llmzip.onnx.graph import fp16_initializers
    from llmzip.onnx.lm_graph import supports, write_fused_graph
    from llmzip.quant.weight_only import BlockEmbedding, WeightOnlyLinear
    from llmzip.runtime.sessions import session as ort_session

    # weight-only products (a table an embedding owns is read by a Gather, not multiplied)
    tables = {id(m.table) for m in model.modules() if isinstance(m, BlockEmbedding)}
    layers = [m for m in model.modules() if isinstance(m, WeightOnlyLinear) and id(m) not in tables]
    level = config.accuracy_level if config.accuracy_level is not None else 4
    for layer in layers:  # parity is checked on the exact kernels first (accuracy_level 0), see below
        layer.accuracy_level = 0
    why_not = supports(model)
    if config.lm_graph is LmGraph.FUSED and why_not:
        raise ExportError(f"--lm-graph fused: {why_not}; use --lm-graph traced")
    fused = config.lm_graph is not LmGraph.TRACED and why_not is None
    offsets = [m for m in layers if m.weight_offset is not None]
    if config.float_zero_points and not offsets:
        raise ExportError("--float-zero-points: this model has no block offsets (only GGUF-sourced blocks do); drop it")
    for layer in offsets:
        layer.float_zero_points = config.float_zero_points
    if fused:
        write_fused_graph(model, path, opset=config.opset)
    else:
        write_lm_onnx(model, path, opset=config.opset, source=source)
    if layers:  # fp16 scales and minimums (a GGUF's own) stay fp16 in the file
        proto = onnx.load(str(path))
        if fp16_initializers(proto):
            big = proto.ByteSize() > 1_800_000_000
            onnx.save(proto, str(path), save_as_external_data=big, location=f"{path.name}.data" if big else None)
    # onnx.checker does not know onnxruntime's SimplifiedLayerNormalization (registered in the ONNX domain by
    # onnxruntime alone): the fused graph is checked by loading it in onnxruntime and by parity instead.
    if not fused:
        try:
            onnx.checker.check_model(str(path))
        except onnx.checker.ValidationError as err:
            raise ExportError(f"the exported graph fails onnx.checker: {str(err).splitlines()[0]}") from None
    session = ort_session(path, provider=config.provider)
    prompts = probe_prompts(source, tokenizer)
    result = parity(session, model, prompts, decode_steps=4)
    scale = max(1.0, result["max_abs_logit"])
    # The graph computes what PyTorch computes: weight-only layers with accuracy_level 0 dequantize and multiply in
    # float, so fp32 and quantized exports differ from PyTorch by float reassociation only (relative to the logit
    # range: a 49k vocabulary's logits reach 30+). A wrong graph is off by whole logits.
    tolerance = max(config.fp32_tolerance, 1e-4 * scale)
    if result["max_abs_diff"] > tolerance:
        raise ExportError(
            f"ONNX logits differ from PyTorch by {result['max_abs_diff']:.3g} (> tolerance {tolerance:.3g}) on the "
            f"{'prefill' if result['prefill_max_abs_diff'] >= result['decode_max_abs_diff'] else 'decode'} step; "
            f"this is a bug: report it with the manifest of {source}"
        )
    approximation = None
    if layers and level:
        # accuracy_level 4 quantizes each block of activations to int8 inside MatMulNBits (onnxruntime's fast CPU
        # path): a declared approximation, switched on after parity and measured on the same prompts, not gated.
        _set_accuracy_level(path, level)
        fast = ort_session(path, provider=config.provider)
        approximation = parity(fast, model, prompts, decode_steps=4)
    runtime = optimized_graph(path)
    runtime_ops: dict[str, int] = {}
    for node in runtime.node:
        runtime_ops[node.op_type] = runtime_ops.get(node.op_type, 0) + 1
    nbits = runtime_ops.get("MatMulNBits", 0)
    # the fused graph runs q/k/v and gate/up as one product each: count the layers each kernel stands for
    expected = len(layers) - (3 * cache_shape(model.config)[0] if fused and layers else 0)
    if nbits < expected:
        raise ExportError(
            f"onnxruntime runs {nbits} MatMulNBits kernels for {expected} weight-only products; report it with "
            "the manifest"
        )
    return {
        "parity": {
            **result,
            "tolerance": tolerance,
            "reference": "PyTorch with its own KV cache",
            **({"checked_at_accuracy_level": 0} if layers else {}),
        },
        **({"accuracy_level_effect": approximation} if approximation is not None else {}),
        "runtime_ops": dict(sorted(runtime_ops.items())),
        "weight_only_kernels": nbits,
        "weight_only_layers": len(layers),
        "graph": "fused" if fused else "traced",
        **({"graph_why_traced": why_not or "--lm-graph traced"} if not fused else {}),
        "accuracy_level": level if layers else None,
        **({"block_offsets": "float zero points" if config.float_zero_points else "correction"} if offsets else {}),
        "float_weight_matmuls": len(float_weight_matmuls(runtime)),
        "signature": {
            "inputs": [i.name for i in session.get_inputs() if not i.name.startswith("past_key_values.")],
            "cache": CACHE_INPUT,
        },
    }
