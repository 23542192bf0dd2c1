"""`llmzip calibrate`, `llmzip quantize` and `llmzip export`: from a trained model to an int8 ONNX file (their
options come from CalibrateConfig, QuantizeConfig and ExportConfig: llmzip/cli/options.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from llmzip.cli.common import Json, Out, Overwrite, Recipe, _build, _execute, _render_stage, _stage_result
from llmzip.cli.options import stage_options

Flags = dict[tuple[str, ...], Any]


@stage_options("calibrate")
def calibrate(
    model_dir: Annotated[
        Path, typer.Argument(help="Model directory (finetune/distill output or a classifier folder).")
    ],
    out: Out,
    recipe: Recipe = None,
    overwrite: Overwrite = False,
    json_out: Json = False,
    flags: Flags | None = None,
) -> None:
    """Record activation histograms of every Linear input on sampled training data (the samples are kept).

    Examples:

        llmzip calibrate runs/student --data ../shared/data/sst2 --num-samples 256 -o runs/calib

        llmzip calibrate runs/smollm2 --data wiki.test.raw --max-length 512 --skip-tokens 10240 -o runs/lm-calib
    """

    def work() -> dict[str, Any]:
        from llmzip.stages.calibrate import calibrate as stage

        config = _build("calibrate", recipe, flags or {})
        return _stage_result(stage(model_dir, out, config=config, overwrite=overwrite))

    _execute(work, _render_stage, json_out)


@stage_options("quantize")
def quantize(
    model_dir: Annotated[Path, typer.Argument(help="Model directory that was calibrated.")],
    calibration_dir: Annotated[Path, typer.Argument(help="Output of `llmzip calibrate MODEL_DIR`.")],
    out: Out,
    recipe: Recipe = None,
    overwrite: Overwrite = False,
    json_out: Json = False,
    flags: Flags | None = None,
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

    def work() -> dict[str, Any]:
        from llmzip.stages.quantize import quantize as stage

        config = _build("quantize", recipe, flags or {})
        return _stage_result(stage(model_dir, calibration_dir, out, config=config, overwrite=overwrite))

    _execute(work, _render_stage, json_out)


@stage_options("export")
def export(
    model_dir: Annotated[Path, typer.Argument(help="fp32 model directory or `llmzip quantize` output.")],
    out: Out,
    recipe: Recipe = None,
    overwrite: Overwrite = False,
    json_out: Json = False,
    flags: Flags | None = None,
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
    flags = dict(flags or {})
    if ("data", "dataset") in flags:  # --data names the eval data: record accuracy unless told not to
        flags.setdefault(("eval_accuracy",), True)

    def work() -> dict[str, Any]:
        from llmzip.stages.export import export as stage

        config = _build("export", recipe, flags)
        return _stage_result(stage(model_dir, out, config=config, overwrite=overwrite))

    _execute(work, _render_stage, json_out)
