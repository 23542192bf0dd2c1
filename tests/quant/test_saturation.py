"""The saturation emulator inside a PyTorch model, and the per-row fix: a VNNI machine tests what AVX2 computes."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from llmzip.quant.kernels import exact_matmul
from llmzip.quant.modules import QuantLinear
from llmzip.quant.saturation import Emulation, emulate, fix_saturation, rows_at_risk, run


class _Toy(nn.Module):
    """One uint8 × int8 layer whose row 0 pairs two full weights: saturates on AVX2 for large inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = QuantLinear(4, 2, bias=False, per_channel=True, activation_signed=False)
        weight = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.1, -0.1, 0.05, 0.05]])
        self.layer.set_weight(weight, bits=8, symmetric=True)
        with torch.no_grad():
            self.layer.input_scale.fill_(1 / 256)  # exact in binary: x = c / 256 has code c

    def forward(self, inputs: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        return SimpleNamespace(logits=self.layer(inputs).sum(1))


def _batches() -> list[dict[str, torch.Tensor]]:
    x = torch.tensor([[[255.0, 255.0, 51.0, 102.0], [26.0, 51.0, 76.0, 102.0]]]) / 256
    return [{"inputs": x, "attention_mask": torch.ones(1, 2, dtype=torch.long)}]


def test_emulated_layer_returns_what_the_avx2_kernel_computes() -> None:
    model = _Toy().eval()
    batch = _batches()[0]
    with Emulation(model) as emulation:
        emulation.mask = batch["attention_mask"].bool()
        with torch.no_grad():
            got = model.layer(batch["inputs"])
    codes = np.array([[255, 255, 51, 102], [26, 51, 76, 102]])
    weight = model.layer.weight_q.numpy()
    assert weight[:2, 0].tolist() == [127, 127]
    # token 0, row 0: 255·127 + 255·127 = 64,770 clamps to 32,767 in the first pair
    excess = np.zeros((2, 2))
    excess[0, 0] = 64770 - 32767
    scale = (1 / 256) * model.layer.weight_scale.numpy()
    want = (exact_matmul(codes, weight) - excess) * scale
    np.testing.assert_allclose(got[0].numpy(), want, rtol=1e-5)
    stats = emulation.stats["layer"]
    assert stats.pairs == 1 and stats.outputs == 1 and stats.elements == 4


def test_a_layer_that_saturates_is_caught_and_only_its_row_is_fixed() -> None:
    model = _Toy().eval()
    exact, saturated, stats = emulate(model, _batches())
    assert stats["layer"].pairs == 1 and float((saturated - exact).abs().max()) > 0.1
    report = fix_saturation(model, _batches(), fix_all=False, margin=1.0, float_weights={}, symmetric=True)
    assert report["saturating_matmuls"] == 1 and report["fixed_rows"] == 1 and report["total_rows"] == 2
    assert model.layer.weight_q[:, 0].abs().max() == 63  # row 0 on the 7-bit grid
    assert model.layer.weight_q[:, 1].abs().max() == 127  # row 1 kept its 8 bits
    assert report["saturated_pairs_after"] == 0 and report["logits_after"]["max_abs_diff"] == 0.0
    exact, saturated, _ = emulate(model, _batches())
    assert torch.equal(exact, saturated)


def test_fix_all_narrows_every_row_like_nncf() -> None:
    model = _Toy().eval()
    report = fix_saturation(model, _batches(), fix_all=True, margin=1.0, float_weights={}, symmetric=True)
    assert report["fixed_rows"] == 2 and int(model.layer.weight_q.abs().max()) == 63


def test_rows_at_risk_use_the_observed_code_ranges() -> None:
    weight = np.array([[127, 10], [127, -10], [5, 100], [5, -100]], dtype=np.int8)  # row 1: opposite signs
    full = np.full(4, 255)
    assert rows_at_risk(weight, np.zeros(4), full).tolist() == [True, False]
    # codes that never exceed 128 keep row 0 safe: 128·254 = 32,512
    assert rows_at_risk(weight, np.zeros(4), np.full(4, 128)).tolist() == [False, False]
    assert rows_at_risk(weight, np.array([0, 0, 200, 200]), full).tolist() == [True, False]


def test_the_portable_chain_model_runs_unsaturated_on_its_calibration_samples(chain: dict[str, Any]) -> None:
    """The default quantize target is `any`: emulated AVX2 logits equal the unsaturated ones, bit for bit."""
    import json

    from llmzip.artifact import open_artifact
    from llmzip.modeling import load_model, load_tokenizer
    from llmzip.quant.calibration import read_samples
    from llmzip.tasks import task_of

    manifest = json.loads((chain["int8"] / "manifest.json").read_text())
    assert manifest["metrics"]["target_cpu"] == "any"
    assert manifest["metrics"]["saturation"]["saturated_pairs_after"] == 0
    model = load_model(open_artifact(chain["int8"], verb="test", accepts=("quantize",)))
    batches = task_of(model.config).batches(
        load_tokenizer(chain["int8"]), read_samples(chain["int8"]), max_length=128, batch_size=16
    )
    exact, saturated, stats = emulate(model, batches)
    assert torch.equal(exact, saturated) and sum(s.pairs for s in stats.values()) == 0
    assert torch.equal(exact, run(model, batches))


def test_int8_inputs_are_modelled_as_onnxruntime_runs_them_uint8_plus_128() -> None:
    """onnxruntime's QDQ optimizer turns int8 activations into uint8 (zero point + 128) for the u8×s8 kernel."""
    layer = QuantLinear(2, 1, bias=False, per_channel=True, activation_signed=True)
    with torch.no_grad():
        layer.input_scale.fill_(1 / 128)
    codes, _ = layer.input_codes(torch.tensor([[-1.0, 127 / 128], [-2.0, -127 / 128]]))
    # QuantizeLinear saturates an int8 output at [-128, 127] (the scale is absmax / 127, but a value clipped below
    # the range lands on -128): the fake quantizer clamps there too, or it differs from onnxruntime by a step
    assert codes.tolist() == [[0.0, 255.0], [0.0, 1.0]]


def test_attention_int8_operands_clamp_where_quantizelinear_saturates() -> None:
    """Key and value are signed int8: below the calibrated range they land on -128 as in ONNX, not on -127; a 7-bit
    key stays on [-63, 63] (its Clip runs before QuantizeLinear)."""
    from llmzip.quant.attention import AttentionQuant

    quant = AttentionQuant.from_ranges({"query": (0.0, 1.0), "key": (-1.27, 1.27), "value": (-1.27, 1.27)})
    x = torch.tensor([-5.0, -1.27, 5.0])
    assert torch.allclose(quant.right(x, "value"), torch.tensor([-1.28, -1.27, 1.27]))
    assert torch.allclose(quant.right(x, "key", times=0.5), torch.tensor([-0.64, -0.635, 0.635]))
    quant.key_qmax = 63
    assert torch.allclose(quant.right(x, "key", times=1.0), torch.tensor([-0.63, -0.63, 0.63]))
