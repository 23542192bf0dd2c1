"""Streaming activation observers: exact min/max plus a fixed-size histogram whose range only ever doubles.

Memory is O(bins) per tensor whatever the number of calibration samples (onnxruntime's calibrators keep every
activation: onnxruntime#10503 needed 123 GB for 32 BERT samples). The histogram covers [-R, R]; when a batch
falls outside, R doubles and adjacent bin pairs merge, which is exact (no re-interpolation error), so every
sample counts with the same resolution rule regardless of arrival order.
"""

from __future__ import annotations

from typing import Any

import torch

DEFAULT_BINS = 2048  # even, so doubling R maps bin pairs onto bins exactly


class HistogramObserver:
    def __init__(self, bins: int = DEFAULT_BINS) -> None:
        if bins % 2:
            raise ValueError("bins must be even")
        self.bins = bins
        self.counts = torch.zeros(bins, dtype=torch.float64)
        self.radius = 0.0  # histogram covers [-radius, radius]
        self.min = float("inf")
        self.max = float("-inf")
        self.count = 0
        # Per-input-channel max |x| (the last dimension): what SmoothQuant needs to migrate outliers to weights.
        self.channel_absmax: torch.Tensor | None = None

    def _grow_to(self, needed: float) -> None:
        if self.radius == 0.0:
            # First data: a power of two just above the magnitude keeps later doublings aligned.
            self.radius = float(2.0 ** torch.ceil(torch.log2(torch.tensor(max(needed, 1e-8)))).item())
            return
        while self.radius < needed:
            half = self.bins // 2
            # New bin j covers [-2R + j·(4R/bins), ...): old bins (2j - half, 2j - half + 1) land in it.
            merged = torch.zeros_like(self.counts)
            pairs = self.counts.view(half, 2).sum(1)
            merged[half // 2 : half // 2 + half] = pairs
            self.counts = merged
            self.radius *= 2.0

    def update(self, x: torch.Tensor) -> None:
        if x.numel() == 0:
            return
        x = x.detach().float()
        if x.dim() >= 2:  # [..., channels]: a 1-D tensor has no channel axis
            per_channel = x.reshape(-1, x.shape[-1]).abs().amax(0)
            known = self.channel_absmax
            self.channel_absmax = per_channel if known is None else torch.maximum(known, per_channel)
        x = x.reshape(-1)
        lo, hi = float(x.min()), float(x.max())
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.count += x.numel()
        self._grow_to(max(abs(lo), abs(hi)))
        self.counts += torch.histc(x, bins=self.bins, min=-self.radius, max=self.radius).double()

    def edges(self) -> torch.Tensor:
        return torch.linspace(-self.radius, self.radius, self.bins + 1, dtype=torch.float64)

    def state(self) -> dict[str, Any]:
        return {"bins": self.bins, "radius": self.radius, "min": self.min, "max": self.max, "count": self.count}

    @classmethod
    def from_state(
        cls, state: dict[str, Any], counts: torch.Tensor, channel_absmax: torch.Tensor | None = None
    ) -> HistogramObserver:
        obs = cls(int(state["bins"]))
        obs.channel_absmax = channel_absmax
        obs.counts = counts.double().clone()
        obs.radius, obs.min, obs.max, obs.count = (
            float(state["radius"]),
            float(state["min"]),
            float(state["max"]),
            int(state["count"]),
        )
        return obs
