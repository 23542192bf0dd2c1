"""int8 layers with static (or dynamic) activations: activation ranges from the calibration histograms, SmoothQuant's
factors, the QuantLinear each Linear becomes, and the static qparams of the int8 attention matmuls."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from llmzip.config import Activations, CalibrationMethod, Granularity, QuantizeConfig
from llmzip.errors import ArtifactError
from llmzip.quant import attention, qmath, ranges
from llmzip.quant.modules import QuantLinear
from llmzip.quant.observers import HistogramObserver


def activation_range(obs: HistogramObserver, config: QuantizeConfig) -> tuple[float, float]:
    if config.method is CalibrationMethod.PERCENTILE:
        return ranges.percentile(obs, config.percentile)
    return ranges.METHODS[config.method.value](obs)


def smoothing_factors(
    model: nn.Module, names: list[str], observers: dict[str, HistogramObserver], alpha: float
) -> dict[str, torch.Tensor]:
    """SmoothQuant (Xiao et al. 2023): s_j = max|X_j|^α / max|W_:,j|^(1−α) per input channel j.

    Dividing the input by s and multiplying the weight's columns by s leaves x @ Wᵀ unchanged while moving the
    activation outliers (e.g. FFN2's GELU output) into the weights, which per-channel quantization handles well.
    """
    factors = {}
    for name in names:
        act = observers[name].channel_absmax
        if act is None:
            raise ArtifactError(f"the calibration has no per-channel statistics for {name}; re-run `llmzip calibrate`")
        linear = model.get_submodule(name)
        assert isinstance(linear, nn.Linear)
        weight = linear.weight.detach().abs().amax(0)
        factors[name] = (act.clamp(min=1e-5) ** alpha / weight.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5).float()
    return factors


def smoothed_weight(model: nn.Module, name: str, smooth: torch.Tensor | None) -> torch.Tensor:
    """The fp32 weight a smoothed int8 layer quantizes (its columns multiplied by s)."""
    linear = model.get_submodule(name)
    assert isinstance(linear, nn.Linear)
    weight = linear.weight.detach().float()
    return weight * smooth[None, :] if smooth is not None else weight


def quantize_linear(
    linear: nn.Linear, act_range: tuple[float, float], config: QuantizeConfig, smooth: torch.Tensor | None = None
) -> QuantLinear:
    """Build the int8 layer: weight scales from the weight, input scale/zero point from the activation range."""
    per_channel = config.weight_granularity is Granularity.PER_CHANNEL
    weight = linear.weight.detach().float()
    weight = weight * smooth[None, :] if smooth is not None else weight
    a_range = qmath.qrange(8, signed=config.activation_symmetric, symmetric=config.activation_symmetric)
    lo, hi = torch.tensor(act_range[0]), torch.tensor(act_range[1])
    if config.activation_symmetric:
        a_scale, a_zp = qmath.symmetric_qparams(torch.maximum(lo.abs(), hi.abs()), a_range)
    else:
        a_scale, a_zp = qmath.asymmetric_qparams(lo, hi, a_range)

    layer = QuantLinear(
        linear.in_features,
        linear.out_features,
        bias=linear.bias is not None,
        per_channel=per_channel,
        activation_signed=config.activation_symmetric,
        smooth=smooth is not None,
        dynamic=config.activations is Activations.DYNAMIC,
    )
    layer.set_weight(weight, bits=config.weight_bits, symmetric=config.weight_symmetric)
    with torch.no_grad():
        if smooth is not None and layer.input_smooth is not None:
            layer.input_smooth.copy_(1.0 / smooth)
        layer.input_scale.copy_(a_scale)
        layer.input_zero_point.copy_(a_zp.to(layer.input_zero_point.dtype))
        if linear.bias is not None and layer.bias is not None:
            layer.bias.copy_(linear.bias)
    return layer


def attention_quants(
    names: list[str], observers: dict[str, HistogramObserver], config: QuantizeConfig, calibration_dir: Path
) -> dict[str, attention.AttentionQuant]:
    """Static qparams for each attention module's query/key/value from the calibration histograms."""
    quants = {}
    for name in names:
        keys = {t: f"{name}:{t}" for t in attention.TENSORS}
        if any(k not in observers for k in keys.values()):
            raise ArtifactError(
                f"{calibration_dir} has no attention statistics for {name} (calibrated before llmzip recorded them, "
                "or the model does not use transformers' attention interface); re-run `llmzip calibrate` or drop "
                "--attention"
            )
        quants[name] = attention.AttentionQuant.from_ranges(
            {t: activation_range(observers[k], config) for t, k in keys.items()}
        )
    return quants
