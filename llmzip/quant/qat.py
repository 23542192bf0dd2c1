"""Quantization-aware training (Q8BERT-style): fp32 master weights, fake-quantized on every forward.

Starts from the calibrated activation scales (kept fixed) and the post-training weight scheme; gradients pass
straight through the rounding (STE). Training reuses distill's Trainer with the fp32 model as teacher, so QAT
can be plain CE or KD from the unquantized model. At the end each QATLinear becomes a QuantLinear.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llmzip.config import Granularity, QuantizeConfig
from llmzip.quant import qmath
from llmzip.quant.modules import QuantLinear, _FakeQuant, replace_linears


class QATLinear(nn.Module):
    input_scale: torch.Tensor
    input_zero_point: torch.Tensor

    def __init__(self, linear: nn.Linear, template: QuantLinear, config: QuantizeConfig) -> None:
        super().__init__()
        smooth = 1.0 / template.input_smooth if template.input_smooth is not None else None
        weight = linear.weight.detach().float() * (smooth[None, :] if smooth is not None else 1.0)
        self.weight = nn.Parameter(weight.clone())  # the smoothed weight, as the int8 layer will hold it
        self.bias = nn.Parameter(linear.bias.detach().clone()) if linear.bias is not None else None
        self.register_buffer("input_scale", template.input_scale.clone())
        self.register_buffer("input_zero_point", template.input_zero_point.clone())
        self.input_smooth: torch.Tensor | None
        self.register_buffer(
            "input_smooth", template.input_smooth.clone() if template.input_smooth is not None else None
        )
        self.activation_range = template.activation_range
        self.weight_range = qmath.qrange(config.weight_bits, signed=True, symmetric=config.weight_symmetric)
        self.per_channel = config.weight_granularity is Granularity.PER_CHANNEL
        self.symmetric = config.weight_symmetric

    def fake_weight(self) -> torch.Tensor:
        scale, zp = qmath.weight_qparams(
            self.weight.detach(), self.weight_range, symmetric=self.symmetric, per_channel=self.per_channel
        )
        shape = (-1, 1) if self.per_channel else ()
        quantized = qmath.fake_quantize(self.weight, scale.reshape(shape), zp.reshape(shape), self.weight_range)
        return self.weight + (quantized - self.weight).detach()  # straight-through estimator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_smooth is not None:
            x = x * self.input_smooth
        r = self.activation_range
        x = _FakeQuant.apply(x, self.input_scale, self.input_zero_point, r.qmin, r.qmax)
        return F.linear(x, self.fake_weight(), self.bias)


def to_quant_linear(layer: QATLinear, config: QuantizeConfig, quantize_linear: Any) -> QuantLinear:
    """The trained layer as an int8 QuantLinear with the same activation qparams and smoothing."""
    smooth = 1.0 / layer.input_smooth if layer.input_smooth is not None else None
    plain = nn.Linear(layer.weight.shape[1], layer.weight.shape[0], bias=layer.bias is not None)
    with torch.no_grad():
        plain.weight.copy_(layer.weight / smooth[None, :] if smooth is not None else layer.weight)
        if layer.bias is not None and plain.bias is not None:
            plain.bias.copy_(layer.bias)
    out: QuantLinear = quantize_linear(plain, (0.0, 1.0), config, smooth)
    with torch.no_grad():  # keep the calibrated activation qparams exactly
        out.input_scale.copy_(layer.input_scale)
        out.input_zero_point.copy_(layer.input_zero_point)
    return out


def train(
    fp32: Any, names: list[str], make: Any, tokenizer: Any, config: QuantizeConfig, work: Path, quantize_linear: Any
) -> tuple[nn.Module, dict[str, Any]]:
    """Fine-tune the fake-quantized model (fp32 model as KD teacher) and convert it back to int8 layers."""
    from transformers import DataCollatorWithPadding

    from llmzip import training
    from llmzip.config import TrainConfig
    from llmzip.progress import trainer_callback
    from llmzip.shrink.kd import StudentWithProjections, distill_trainer_class

    model = copy.deepcopy(fp32)
    replace_linears(model, names, lambda n, lin: QATLinear(lin, make(n, lin), config))
    label2id = {str(k): int(v) for k, v in (fp32.config.label2id or {}).items()}
    train_cfg = TrainConfig(
        data=config.data,
        max_steps=config.qat_steps,
        batch_size=config.qat_batch_size,
        learning_rate=config.qat_learning_rate,
        warmup_ratio=0.1,
        seed=config.seed,
    )
    prepared = training.prepare(train_cfg, tokenizer, label2id)
    has_eval = prepared.eval is not None
    weights = {k: v for k, v in {"kd": config.qat_alpha, "ce": 1 - config.qat_alpha}.items() if v > 0}
    callback = trainer_callback(f"quantization-aware training ({'+'.join(weights)})")
    trainer = training.make_trainer(
        distill_trainer_class(),
        callback=callback,
        model=StudentWithProjections(model, None, hidden=False, attentions=False),
        args=training.arguments(train_cfg, work, num_train=len(prepared.train), has_eval=has_eval),
        train_dataset=prepared.train,
        eval_dataset=prepared.eval,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=training.accuracy,
        teacher=fp32,
        weights=weights,
        temperature=2.0,
        layer_map=[],
        cached_logits=None,
    )
    trainer.train()
    metrics = {"qat": {"losses": weights, **training.summarise(trainer, callback, has_eval), "inputs": prepared.inputs}}
    replace_linears(model, names, lambda n, layer: to_quant_linear(layer, config, quantize_linear))
    return model.eval(), metrics
