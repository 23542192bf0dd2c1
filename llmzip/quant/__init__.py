"""Quantization math and the int8 layer shared by quantize, export and (later) quantization-aware training."""
