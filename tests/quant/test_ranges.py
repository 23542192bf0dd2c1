"""Streaming histograms and the four range methods, on synthetic data with known answers."""

from __future__ import annotations

import pytest
import torch

from llmzip.quant import ranges
from llmzip.quant.observers import HistogramObserver


def _observe(x: torch.Tensor, chunk: int = 1000) -> HistogramObserver:
    obs = HistogramObserver()
    for part in x.split(chunk):
        obs.update(part)
    return obs


def test_growth_is_exact_and_order_free() -> None:
    x = torch.tensor([0.1, -0.2, 0.3, 1.7, -3.9, 0.01])
    a = HistogramObserver(16)
    for v in x:
        a.update(v.reshape(1))
    direct = torch.histc(x, bins=16, min=-a.radius, max=a.radius).double()
    assert torch.equal(a.counts, direct)  # doubling the range merged bin pairs without error
    assert (a.min, a.max, a.count) == (float(x.min()), float(x.max()), 6)
    b = HistogramObserver(16)
    b.update(x.flip(0))
    assert torch.equal(a.counts, b.counts) and a.radius == b.radius == 4.0


def test_memory_is_bounded() -> None:
    obs = _observe(torch.randn(200_000), chunk=10_000)
    assert obs.counts.numel() == 2048 and obs.count == 200_000


def test_percentile_matches_numpy_within_a_bin() -> None:
    torch.manual_seed(0)
    x = torch.randn(100_000)
    obs = _observe(x)
    lo, hi = ranges.percentile(obs, 99.0)
    want = torch.quantile(x, torch.tensor([0.01, 0.99]))
    width = 2 * obs.radius / obs.bins
    assert abs(lo - float(want[0])) < width and abs(hi - float(want[1])) < width


def _quant_mse(x: torch.Tensor, lo: float, hi: float) -> float:
    s = (hi - lo) / 255
    z = round(-lo / s)
    q = torch.clamp(torch.round(x / s) + z, 0, 255)
    return float(((x - (q - z) * s) ** 2).mean())


@pytest.mark.parametrize("method", ["percentile", "entropy", "mse"])
def test_clipping_methods_stay_inside_minmax(method: str) -> None:
    torch.manual_seed(1)
    x = torch.cat([torch.randn(50_000), torch.tensor([30.0, -12.0])])
    obs = _observe(x)
    lo, hi = ranges.METHODS[method](obs)
    assert obs.min <= lo <= 0 <= hi <= obs.max
    assert hi < obs.max  # a lone outlier is clipped by every method but min/max


@pytest.mark.parametrize("dist", ["laplace", "student-t3", "gelu"])
def test_mse_method_is_never_worse_than_minmax(dist: str) -> None:
    torch.manual_seed(2)
    x = {
        "laplace": lambda: torch.distributions.Laplace(0.0, 1.0).sample((100_000,)),
        "student-t3": lambda: torch.distributions.StudentT(3.0).sample((100_000,)),
        "gelu": lambda: torch.nn.functional.gelu(3 * torch.randn(100_000)),  # FFN2's input: the outlier case
    }[dist]()
    obs = _observe(x)
    got, base = _quant_mse(x, *ranges.mse(obs)), _quant_mse(x, *ranges.minmax(obs))
    assert got <= 1.05 * base  # histogram bins approximate the data: allow 5%
    if dist == "laplace":
        assert got < 0.9 * base


def test_entropy_keeps_the_body_of_a_gaussian() -> None:
    torch.manual_seed(3)
    x = torch.randn(100_000)
    lo, hi = ranges.entropy(_observe(x))
    assert 2.0 < hi <= float(x.max()) and -float(x.abs().max()) <= lo < -2.0


def test_channel_absmax_for_smoothquant() -> None:
    obs = HistogramObserver()
    obs.update(torch.tensor([[1.0, -5.0, 0.5], [-2.0, 1.0, 0.25]]))
    obs.update(torch.tensor([[0.5, 0.5, -3.0]]))
    assert obs.channel_absmax is not None and obs.channel_absmax.tolist() == [2.0, 5.0, 3.0]
