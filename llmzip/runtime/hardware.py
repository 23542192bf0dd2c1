"""The target-hardware seam: which int8 GEMM kernel each x86 CPU class runs, and which of them can saturate.

onnxruntime (MLAS) picks its u8×s8 kernel from CPUID at run time (platform.cpp):
- AMX-INT8 → tile dot products; AVX512-VNNI or AVX-VNNI → vpdpbusd: exact int32 accumulation;
- AVX-512 without VNNI (Skylake-SP) and AVX2 without VNNI (Haswell … Zen 3) → vpmaddubsw, which adds the two
  products of each K pair into a saturating int16 (modelled bit for bit in llmzip/quant/kernels.py);
- older x86 (SSE4.1, AVX) widens to int16 before multiplying: exact, as are u8×u8 and s8×s8 everywhere.
So an int8 model is "right on any x86 CPU" exactly when it is right under the saturating kernel.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from llmzip.config import CpuTarget

_SATURATING = (CpuTarget.ANY, CpuTarget.AVX2, CpuTarget.AVX512)

KERNELS = {
    CpuTarget.ANY: "every x86 CPU, so the saturating AVX2 u8×s8 kernel",
    CpuTarget.AVX2: "AVX2 u8×s8 (vpmaddubsw: int16 pair sums saturate)",
    CpuTarget.AVX512: "AVX-512BW u8×s8 without VNNI (vpmaddubsw: int16 pair sums saturate)",
    CpuTarget.VNNI: "VNNI u8×s8 (vpdpbusd: exact int32)",
    CpuTarget.AMX: "AMX-INT8 tiles (exact int32)",
}


def saturates(target: CpuTarget) -> bool:
    """Whether u8×s8 products can saturate on `target` (a resolved target: not NATIVE)."""
    if target is CpuTarget.NATIVE:
        raise ValueError("resolve CpuTarget.NATIVE first")
    return target in _SATURATING


def cpu_class(flags: set[str]) -> CpuTarget | None:
    """The class of a CPU from its feature flags; None for CPUs whose int8 kernels are exact but not listed
    (x86 before AVX2) and for CPUs whose kernels llmzip does not model (not x86)."""
    if "amx_int8" in flags:
        return CpuTarget.AMX
    if "avx512_vnni" in flags or "avx_vnni" in flags:
        return CpuTarget.VNNI
    if "avx512bw" in flags or "avx512_bw" in flags:  # /proc/cpuinfo vs cpuinfo spelling
        return CpuTarget.AVX512
    if "avx2" in flags:
        return CpuTarget.AVX2
    return None


def cpu_flags() -> set[str]:
    """Feature flags from CPUID, as onnxruntime sees them (torch's cpuinfo: right under an emulator too, where
    /proc/cpuinfo describes the host); /proc/cpuinfo where torch is not installed."""
    try:
        import torch

        return {k for k, v in torch.cpu.get_capabilities().items() if v is True}
    except (ImportError, AttributeError):
        from llmzip.runtime.machine import cpu_flags as proc_flags

        return proc_flags()


def this_cpu() -> CpuTarget | None:
    return cpu_class(cpu_flags())


def resolve(target: CpuTarget) -> CpuTarget:
    """NATIVE → this machine's class; a machine llmzip cannot classify gets the portable target (the safe side)."""
    if target is not CpuTarget.NATIVE:
        return target
    return this_cpu() or CpuTarget.ANY


def this_cpu_saturates() -> bool:
    here = this_cpu()
    return here is not None and saturates(here)


@contextmanager
def denormals_flushed(enabled: bool = True) -> Iterator[None]:
    """Flush denormal floats to zero (FTZ/DAZ in this thread's MXCSR) for the duration, then restore the default.

    Why: a padded batch's attention mask sends the masked scores to exp(-∞), which onnxruntime's softmax clamps to
    exp(-103.97), a denormal; x86 handles denormals in microcode. Measured on all-MiniLM-L6-v2 int8, 1×128 with 9
    real tokens, 1 thread: 14.5 ms, of which Softmax 5.6 ms (0.4 ms without padding), and 8.7 ms flushed, with
    bit-identical embeddings. TensorRT and oneDNN flush by default; onnxruntime's `session.set_denormal_as_zero`
    covers only its pool threads, not the calling thread that runs a 1-thread session, so the bench sets it here
    (PyTorch's setter writes the same MXCSR bits every library on this thread uses)."""
    if not enabled:
        yield
        return
    import torch

    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
