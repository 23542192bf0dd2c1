"""llmzip: distill, calibrate, quantize, export and benchmark transformer models from one command line."""

from __future__ import annotations

__version__ = "0.1.0"
