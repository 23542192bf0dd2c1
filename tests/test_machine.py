"""machine: the ISA block and the CPU-load sampler that separates our process from the rest of the machine."""

from __future__ import annotations

import time

from llmzip.runtime import machine


def test_machine_info_shape() -> None:
    info = machine.machine_info()
    assert info["cpu"] and info["logical_cores"] >= 1 and set(info["isa"]) <= set(machine.ISA_FLAGS)


def test_has_fast_bf16() -> None:
    assert machine.has_fast_bf16(["avx512_bf16"]) and machine.has_fast_bf16(["amx_bf16"])
    assert not machine.has_fast_bf16(["avx2", "avx512_vnni", "amx_int8"])


def test_cpu_load_counts_our_own_work() -> None:
    with machine.CpuLoad(interval_s=0.02) as load:
        end = time.process_time() + 0.3
        while time.process_time() < end:  # 0.3 s of our own CPU time, however busy the machine is
            pass
    summary = load.summary()
    assert summary is not None and set(summary) == {"mean_pct", "max_pct", "own_pct", "other_pct"}
    assert summary["own_pct"] > 0 and 0 <= summary["other_pct"] <= summary["mean_pct"] <= summary["max_pct"]
    assert summary["mean_pct"] <= 100.5 and load.samples  # sampled in the background while the block ran


def test_proc_stat_fallback_reads_busy_and_total() -> None:
    times = machine._proc_stat_times()
    if times is not None:  # Linux
        busy, total = times
        assert 0 <= busy <= total
