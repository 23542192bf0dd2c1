"""CPU classes from feature flags: which int8 kernel onnxruntime will pick, and which of them saturate."""

from __future__ import annotations

import pytest

from llmzip.config import CpuTarget
from llmzip.runtime.hardware import cpu_class, resolve, saturates


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"avx2", "avx512f", "avx512bw", "avx512_vnni", "amx_tile", "amx_int8"}, CpuTarget.AMX),  # Sapphire Rapids
        ({"avx2", "avx512f", "avx512bw", "avx512_vnni"}, CpuTarget.VNNI),  # Cascade Lake, Zen 4
        ({"avx2", "avx_vnni"}, CpuTarget.VNNI),  # Alder Lake (AVX-VNNI, no AVX-512)
        ({"avx2", "avx512f", "avx512bw"}, CpuTarget.AVX512),  # Skylake-SP: AVX-512 without VNNI
        ({"avx2", "avx512_bw"}, CpuTarget.AVX512),  # torch's cpuinfo spelling
        ({"avx2", "fma"}, CpuTarget.AVX2),  # Haswell … Zen 3
        ({"sse4_1", "avx"}, None),  # older x86: exact (widening) kernels
        (set(), None),
    ],
)
def test_cpu_class_follows_onnxruntimes_dispatch(flags: set[str], expected: CpuTarget | None) -> None:
    assert cpu_class(flags) is expected


def test_which_classes_saturate_and_native_resolves_to_a_class() -> None:
    assert [t for t in CpuTarget if t is not CpuTarget.NATIVE and saturates(t)] == [
        CpuTarget.ANY,
        CpuTarget.AVX2,
        CpuTarget.AVX512,
    ]
    assert resolve(CpuTarget.NATIVE) is not CpuTarget.NATIVE
    assert resolve(CpuTarget.VNNI) is CpuTarget.VNNI
    with pytest.raises(ValueError):
        saturates(CpuTarget.NATIVE)


def test_denormals_are_flushed_only_inside_the_bench_context() -> None:
    """FTZ/DAZ while a bench measures (onnxruntime's masked softmax makes denormals, slow on x86), restored after."""
    import torch

    from llmzip.runtime.hardware import denormals_flushed

    tiny = torch.tensor([1e-39], dtype=torch.float32)  # a float32 denormal
    assert float(tiny * 1.0) != 0.0
    with denormals_flushed():
        assert float(tiny * 1.0) == 0.0
    assert float(tiny * 1.0) != 0.0
    with denormals_flushed(enabled=False):
        assert float(tiny * 1.0) != 0.0
