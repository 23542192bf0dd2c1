"""`llmzip calibrate`, `llmzip quantize` and `llmzip export`: from a trained model to an int8 ONNX file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from llmzip import config as cfg
from llmzip.cli.common import (
    DATA_FLAGS,
    BatchSize,
    Data,
    Delimiter,
    EvalSplit,
    Json,
    LabelColumn,
    MaxEval,
    MaxLength,
    Out,
    Overwrite,
    Recipe,
    Seed,
    SkipTokens,
    Subset,
    TextColumn,
    TextPairColumn,
    TrainSplit,
    _build,
    _execute,
    _render_stage,
    _stage_result,
)


def calibrate(
    model_dir: Annotated[
        Path, typer.Argument(help="Model directory (finetune/distill output or a classifier folder).")
    ],
    out: Out,
    num_samples: Annotated[Optional[int], typer.Option(help="Training examples to sample.")] = None,
    batch_size: BatchSize = None,
    bins: Annotated[Optional[int], typer.Option(help="Histogram bins per tensor (memory stays O(bins)).")] = None,
    data: Data = None,
    subset: Subset = None,
    text_column: TextColumn = None,
    delimiter: Delimiter = None,
    text_pair_column: TextPairColumn = None,
    label_column: LabelColumn = None,
    train_split: TrainSplit = None,
    max_length: MaxLength = None,
    skip_tokens: SkipTokens = None,
    seed: Seed = None,
    recipe: Recipe = None,
    overwrite: Overwrite = False,
    json_out: Json = False,
) -> None:
    """Record activation histograms of every Linear input on sampled training data (the samples are kept).

    Examples:

        llmzip calibrate runs/student --data ../shared/data/sst2 --num-samples 256 -o runs/calib

        llmzip calibrate runs/smollm2 --data wiki.test.raw --max-length 512 --skip-tokens 10240 -o runs/lm-calib
    """
    flags = {k: v for k, v in locals().items() if k in DATA_FLAGS or k in ("num_samples", "batch_size", "bins", "seed")}

    def work() -> dict[str, Any]:
        from llmzip.stages.calibrate import calibrate as stage

        return _stage_result(stage(model_dir, out, config=_build("calibrate", recipe, flags, {}), overwrite=overwrite))

    _execute(work, _render_stage, json_out)


def quantize(
    model_dir: Annotated[Path, typer.Argument(help="Model directory that was calibrated.")],
    calibration_dir: Annotated[Path, typer.Argument(help="Output of `llmzip calibrate MODEL_DIR`.")],
    out: Out,
    weight_bits: Annotated[
        Optional[int], typer.Option(help="8 (int8 weights and activations) or 4 (int4 weight-only, MatMulNBits).")
    ] = None,
    weight_block_size: Annotated[
        Optional[int], typer.Option(help="Weight-only: input features per weight scale (power of 2 >= 16).")
    ] = None,
    weight_only: Annotated[
        Optional[bool],
        typer.Option(
            "--weight-only", help="int8 weights, float activations (MatMulNBits); implied by 4 bits and causal LMs."
        ),
    ] = None,
    algorithm: Annotated[
        Optional[cfg.WeightAlgorithm],
        typer.Option(help="Weight-only codes: rtn (nearest) or gptq (Hessian error feedback on the calibration)."),
    ] = None,
    gptq_damp: Annotated[Optional[float], typer.Option(help="GPTQ: damping, share of mean(diag H).")] = None,
    head_bits: Annotated[
        Optional[int], typer.Option(help="Weight-only: 4 or 8 bits for the output head (lm_head); default as weights.")
    ] = None,
    weight_granularity: Annotated[
        Optional[cfg.Granularity], typer.Option(help="One weight scale per output channel, or per tensor.")
    ] = None,
    weight_symmetric: Annotated[
        Optional[bool],
        typer.Option(
            "--weight-symmetric/--weight-asymmetric", help="Weight zero point fixed at 0, or fitted to [min, max]."
        ),
    ] = None,
    activation_symmetric: Annotated[
        Optional[bool],
        typer.Option(
            "--activation-symmetric/--activation-asymmetric",
            help="int8 activations around 0, or uint8 fitted to [min, max] (the fast U8S8 path).",
        ),
    ] = None,
    saturation_margin: Annotated[
        Optional[float],
        typer.Option(help="measured: protect inputs this many times beyond the calibrated ranges (default 1.5)."),
    ] = None,
    attention: Annotated[
        Optional[bool],
        typer.Option("--attention", help="Also quantize the attention matmuls Q·Kᵀ and P·V (static uint8 × int8)."),
    ] = None,
    embeddings: Annotated[
        Optional[bool],
        typer.Option(
            "--embeddings/--fp32-embeddings",
            help="Store the word-embedding table as int8 with per-row scales (default), or keep it fp32.",
        ),
    ] = None,
    target_cpu: Annotated[
        Optional[cfg.CpuTarget],
        typer.Option(
            help="CPU class the int8 model must be right on: any (default: safe on AVX2 without VNNI too), "
            "avx2, avx512 (without VNNI), vnni, amx (full 8 bits everywhere), or native (this machine)."
        ),
    ] = None,
    saturation_fix: Annotated[
        Optional[cfg.SaturationFix],
        typer.Option(
            help="For a saturating target: 7-bit weights only on the rows that can saturate on the calibration "
            "ranges (measured), or on every row (all, like NNCF's overflow_fix)."
        ),
    ] = None,
    activations: Annotated[
        Optional[cfg.Activations],
        typer.Option(help="static: scales from calibration; dynamic: per call (DynamicQuantizeMatMul)."),
    ] = None,
    method: Annotated[
        Optional[cfg.CalibrationMethod],
        typer.Option(help="Activation range from the calibration histograms (no re-calibration needed)."),
    ] = None,
    percentile: Annotated[Optional[float], typer.Option(help="For --method percentile, e.g. 99.99.")] = None,
    qat_steps: Annotated[
        Optional[int], typer.Option(help="Quantization-aware training steps after calibration (0 = off); uses --data.")
    ] = None,
    qat_learning_rate: Annotated[Optional[float], typer.Option(help="QAT learning rate.")] = None,
    qat_alpha: Annotated[
        Optional[float], typer.Option(help="QAT: KD weight from the fp32 model (0 = labels only).")
    ] = None,
    smoothquant: Annotated[
        Optional[float], typer.Option(help="SmoothQuant migration strength α in [0, 1] (e.g. 0.5); off by default.")
    ] = None,
    sensitivity: Annotated[
        Optional[bool],
        typer.Option("--sensitivity", help="Report each layer quantized alone (SQNR, accuracy drop on --data)."),
    ] = None,
    max_accuracy_drop: Annotated[
        Optional[float],
        typer.Option(help="Keep the most sensitive layers fp32 until the accuracy drop (points) fits; needs --data."),
    ] = None,
    max_perplexity_increase: Annotated[
        Optional[float],
        typer.Option(
            help="Causal LMs: keep the most sensitive decoder layers fp32 until the perplexity increase (%) on "
            "--data's eval windows fits."
        ),
    ] = None,
    max_perplexity_ratio: Annotated[
        Optional[float],
        typer.Option(
            help="Causal LMs: fail when perplexity on the held-back calibration windows exceeds this × fp32's "
            "(default 2: a broken model, not rounding)."
        ),
    ] = None,
    fallback_latency: Annotated[
        Optional[bool],
        typer.Option(
            "--fallback-latency/--no-fallback-latency",
            help="Export and time every fallback configuration (onnxruntime, 1 thread) for the Pareto list.",
        ),
    ] = None,
    data: Data = None,
    eval_split: EvalSplit = None,
    max_eval_samples: MaxEval = None,
    max_length: MaxLength = None,
    skip_tokens: SkipTokens = None,
    exclude: Annotated[
        Optional[list[str]],
        typer.Option(
            help="Keep in fp32: a regex on module names, or type:Class on the module's or its parent's class "
            "(e.g. type:BertOutput); repeatable; replaces the default head exclusion."
        ),
    ] = None,
    recipe: Recipe = None,
    overwrite: Overwrite = False,
    json_out: Json = False,
) -> None:
    """Quantize weights to int8 and fix static activation scales from calibration.

    Writes per-layer weight/output SQNR and logit agreement into the manifest.

    Examples:

        llmzip quantize runs/student runs/calib -o runs/student-int8

        llmzip quantize runs/student runs/calib --weight-granularity per-tensor --weight-asymmetric -o runs/q

        llmzip quantize runs/student runs/calib --method percentile --percentile 99.99 -o runs/q-p9999

        llmzip quantize runs/student runs/calib --max-accuracy-drop 0.5 --data ../shared/data/sst2 -o runs/q-safe

        llmzip quantize runs/student runs/calib --weight-bits 4 --weight-block-size 32 -o runs/q-int4

        llmzip quantize runs/smollm2 runs/calib --weight-bits 4 --algorithm gptq --head-bits 8 -o runs/lm-int4

        llmzip quantize runs/student runs/calib --qat-steps 300 --data ../shared/data/sst2 -o runs/q-qat

        llmzip quantize runs/student runs/calib --target-cpu vnni -o runs/q-vnni-only
    """
    flags = {
        "data": data,
        "eval_split": eval_split,
        "max_eval_samples": max_eval_samples,
        "max_length": max_length,
        "skip_tokens": skip_tokens,
        "sensitivity": sensitivity,
        "max_accuracy_drop": max_accuracy_drop,
        "max_perplexity_increase": max_perplexity_increase,
        "max_perplexity_ratio": max_perplexity_ratio,
        "fallback_latency": fallback_latency,
        "activations": activations,
        "embeddings": embeddings,
        "target_cpu": target_cpu,
        "saturation_fix": saturation_fix,
        "saturation_margin": saturation_margin,
        "attention": attention,
        "method": method,
        "percentile": percentile,
        "smoothquant": smoothquant,
        "qat_steps": qat_steps,
        "qat_learning_rate": qat_learning_rate,
        "qat_alpha": qat_alpha,
        "weight_bits": weight_bits,
        "weight_block_size": weight_block_size,
        "weight_only": weight_only,
        "algorithm": algorithm,
        "gptq_damp": gptq_damp,
        "head_bits": head_bits,
        "weight_granularity": weight_granularity,
        "weight_symmetric": weight_symmetric,
        "activation_symmetric": activation_symmetric,
        "exclude": exclude,
    }

    def work() -> dict[str, Any]:
        from llmzip.stages.quantize import quantize as stage

        config = _build("quantize", recipe, flags, {})
        return _stage_result(stage(model_dir, calibration_dir, out, config=config, overwrite=overwrite))

    _execute(work, _render_stage, json_out)


def export(
    model_dir: Annotated[Path, typer.Argument(help="fp32 model directory or `llmzip quantize` output.")],
    out: Out,
    opset: Annotated[Optional[int], typer.Option(help="ONNX opset (>= 17).")] = None,
    fold_bias: Annotated[
        Optional[bool],
        typer.Option(
            "--fold-bias/--plain-qdq",
            help="int8: fold each Linear's bias into onnxruntime's MatMulIntegerToFloat, or keep portable QDQ.",
        ),
    ] = None,
    lm_graph: Annotated[
        Optional[cfg.LmGraph],
        typer.Option(
            help="Causal LMs: onnxruntime's fused decoder ops where the architecture allows (auto), fused, or "
            "the traced graph (any ONNX runtime)."
        ),
    ] = None,
    accuracy_level: Annotated[
        Optional[int],
        typer.Option(help="Weight-only: MatMulNBits accuracy_level (4 = int8 activations in the kernel; 0 = float)."),
    ] = None,
    float_zero_points: Annotated[
        Optional[bool],
        typer.Option(
            "--float-zero-points",
            help="GGUF blocks with minimums (Q4_1, Q4_K): float zero points (exact, slow CPU kernel) instead of "
            "the default correction product (exact, fast).",
        ),
    ] = None,
    data: Data = None,
    text_column: TextColumn = None,
    label_column: LabelColumn = None,
    eval_split: EvalSplit = None,
    max_eval_samples: MaxEval = None,
    max_length: MaxLength = None,
    recipe: Recipe = None,
    overwrite: Overwrite = False,
    json_out: Json = False,
) -> None:
    """Export model.onnx (dynamic batch and sequence) and check it against PyTorch.

    With --data, also records ONNX and PyTorch task accuracy on the eval split in the manifest.

    A quantized directory exports as QDQ int8 that onnxruntime fuses into integer kernels; the export fails if
    it does not, or if the logits drift from the PyTorch model beyond tolerance.

    Examples:

        llmzip export runs/student-int8 -o runs/onnx-int8

        llmzip export runs/teacher -o runs/onnx-teacher --json

        llmzip export runs/student-int8 -o runs/onnx-int8 --data ../shared/data/sst2 --eval-split test

        llmzip export runs/lm-int4 -o runs/lm-onnx-int4   # a causal LM: KV cache, prefill + decode parity
    """
    flags = {
        "opset": opset,
        "fold_bias": fold_bias,
        "lm_graph": lm_graph,
        "accuracy_level": accuracy_level,
        "float_zero_points": float_zero_points,
        "data": data,
        "text_column": text_column,
        "label_column": label_column,
        "eval_split": eval_split,
        "max_eval_samples": max_eval_samples,
        "max_length": max_length,
        "eval_accuracy": True if data is not None else None,
    }

    def work() -> dict[str, Any]:
        from llmzip.stages.export import export as stage

        return _stage_result(stage(model_dir, out, config=_build("export", recipe, flags, {}), overwrite=overwrite))

    _execute(work, _render_stage, json_out)
