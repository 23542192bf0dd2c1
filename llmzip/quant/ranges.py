"""Activation range choices computed from a saved histogram: min/max, percentile, entropy (KL) and MSE.

All four read the same streaming histogram (observers.py), so `quantize` can try every method without
re-running calibration. Each returns the [lo, hi] that the asymmetric/symmetric qparams are then fitted to.
"""

from __future__ import annotations

import math

import torch

from llmzip.quant.observers import HistogramObserver


def minmax(obs: HistogramObserver) -> tuple[float, float]:
    return obs.min, obs.max


def _quantile(obs: HistogramObserver, q: float) -> float:
    """Value below which a fraction q of the observed elements lie (linear inside the bin)."""
    cdf = torch.cumsum(obs.counts, 0)
    total = float(cdf[-1])
    target = q * total
    idx = int(torch.searchsorted(cdf, torch.tensor(target, dtype=cdf.dtype)).clamp(max=obs.bins - 1))
    below = float(cdf[idx - 1]) if idx > 0 else 0.0
    inside = float(obs.counts[idx])
    edges = obs.edges()
    frac = 0.0 if inside == 0 else (target - below) / inside
    return float(edges[idx] + frac * (edges[idx + 1] - edges[idx]))


def percentile(obs: HistogramObserver, p: float = 99.99) -> tuple[float, float]:
    """Clip the (100 − p)% most extreme values on each side, e.g. p = 99.99 drops 0.01% below and above."""
    tail = (100.0 - p) / 100.0
    lo = max(obs.min, _quantile(obs, tail))
    hi = min(obs.max, _quantile(obs, 1.0 - tail))
    return min(lo, 0.0) if obs.min < 0 else lo, hi


def mse(obs: HistogramObserver, levels: int = 256, grid: int = 50) -> tuple[float, float]:
    """The clip range minimising expected squared error: clipping error outside, Δ²/12 rounding noise inside.

    Searches a grid of independent shrink factors for the negative and positive ends of [min, max].
    """
    edges = obs.edges()
    used = obs.counts > 0  # empty bins add no error: skip them (usually most of the 2048)
    centers = ((edges[:-1] + edges[1:]) / 2)[used][None, :]
    counts = obs.counts[used][None, :]
    factors = torch.linspace(1.0 / grid, 1.0, grid, dtype=torch.float64)
    lo_c = (min(obs.min, 0.0) * factors)[:, None].repeat(1, grid).reshape(-1, 1)
    hi_c = (max(obs.max, 0.0) * factors)[None, :].repeat(grid, 1).reshape(-1, 1)
    step = (hi_c - lo_c).clamp(min=1e-12) / (levels - 1)
    clipped = torch.minimum(torch.maximum(centers, lo_c), hi_c)
    inside = (centers >= lo_c) & (centers <= hi_c)
    error = ((centers - clipped) ** 2 + inside * step**2 / 12.0) * counts
    best = int(torch.argmin(error.sum(1)))
    return float(lo_c[best]), float(hi_c[best])


def entropy(obs: HistogramObserver, levels: int = 128) -> tuple[float, float]:
    """TensorRT's calibration: the |x| threshold T whose `levels`-bin quantization keeps KL(P‖Q) smallest.

    Runs on the magnitude histogram (folded around 0); the asymmetric range is then [max(min, −T), min(max, T)].
    """
    half = obs.bins // 2
    mag = obs.counts[half:].clone()
    mag += torch.flip(obs.counts[:half], [0])
    width = obs.radius / half
    last = int(torch.nonzero(mag).max()) + 1 if mag.sum() > 0 else levels
    # ~256 candidate thresholds are plenty: neighbouring ones differ by a fraction of a quantization step.
    stride = max(1, (last - levels) // 256)
    best_kl, best_i = math.inf, last
    for i in list(range(min(levels, last), last, stride)) + [last]:
        p = mag[:i].clone()
        p[i - 1] += mag[i:].sum()  # outliers fold into the last kept bin, as clipping would put them
        chunk = (torch.arange(i) * levels) // i
        nz = (mag[:i] > 0).double()
        sums = torch.zeros(levels, dtype=torch.float64).scatter_add_(0, chunk, mag[:i])
        nonzero = torch.zeros(levels, dtype=torch.float64).scatter_add_(0, chunk, nz)
        q = nz * (sums / nonzero.clamp(min=1))[chunk]  # each chunk's mass spread over its non-empty bins
        mask = p > 0
        if (q[mask] == 0).any():
            continue
        p_n, q_n = p[mask] / p.sum(), q[mask] / q.sum()
        kl = float((p_n * torch.log(p_n / q_n)).sum())
        if kl < best_kl:
            best_kl, best_i = kl, i
    threshold = best_i * width
    return max(obs.min, -threshold), min(obs.max, threshold)


METHODS = {"minmax": minmax, "percentile": percentile, "entropy": entropy, "mse": mse}
