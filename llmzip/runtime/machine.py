"""The machine block every benchmark carries: a latency number means nothing without the CPU behind it."""

from __future__ import annotations

import os
import platform
import threading
import time
from pathlib import Path
from typing import Any

from llmzip.artifact import library_versions

# The ISA features that decide which int8/bf16 kernels onnxruntime and PyTorch can use.
ISA_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "neon",
    "asimd",
    "sve",
)


def _cpuinfo() -> tuple[str, set[str]]:
    model: str = platform.processor() or platform.machine()
    flags: set[str] = set()
    path = Path("/proc/cpuinfo")
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Model") and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    return model, flags


def cpu_flags() -> set[str]:
    """This CPU's feature flags as the kernel reports them (empty where /proc/cpuinfo is missing)."""
    return _cpuinfo()[1]


def machine_info() -> dict[str, Any]:
    model, flags = _cpuinfo()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 1
    info: dict[str, Any] = {
        "cpu": model,
        "isa": [f for f in ISA_FLAGS if f in flags],
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "os": platform.platform(),
        "versions": library_versions(),
    }
    if hasattr(os, "getloadavg"):
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return info


def has_fast_bf16(isa: list[str]) -> bool:
    """Whether this CPU has bf16 arithmetic (AVX512-BF16 or AMX-BF16); without it PyTorch emulates bf16."""
    return "avx512_bf16" in isa or "amx_bf16" in isa


def _system_cpu_times() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine since boot, or None where neither psutil nor /proc/stat."""
    try:
        import psutil
    except ImportError:
        return _proc_stat_times()
    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    total = float(sum(t)) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)  # already in user/nice
    return total - idle, total


def _proc_stat_times() -> tuple[float, float] | None:
    stat = Path("/proc/stat")
    if not stat.is_file():
        return None
    fields = [float(v) for v in stat.read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


def _busy_pct(start: tuple[float, float], end: tuple[float, float]) -> float | None:
    total = end[1] - start[1]
    return 100.0 * (end[0] - start[0]) / total if total > 0 else None


class CpuLoad:
    """Samples machine-wide CPU use in a background thread while a block runs (`with CpuLoad() as load:`).

    `summary()` separates our own process (all its threads, from os.times) from everything else, so a
    benchmark can say when another process was competing for the cores it timed on.
    """

    def __init__(self, interval_s: float = 0.1) -> None:
        self.interval_s = interval_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="llmzip-cpu-load", daemon=True)
        self._start: tuple[float, float] | None = None
        self._end: tuple[float, float] | None = None
        self._own_start = self._own_end = 0.0
        self._wall_start = self._wall_end = 0.0

    def _sample(self) -> None:
        last = _system_cpu_times()
        while not self._stop.wait(self.interval_s):
            now = _system_cpu_times()
            if last is not None and now is not None:
                pct = _busy_pct(last, now)
                if pct is not None:
                    self.samples.append(pct)
            last = now

    def __enter__(self) -> CpuLoad:
        self._start = _system_cpu_times()
        self._own_start, self._wall_start = _own_cpu_s(), time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._end = _system_cpu_times()
        self._own_end, self._wall_end = _own_cpu_s(), time.perf_counter()

    def summary(self) -> dict[str, float] | None:
        """{mean_pct, max_pct, own_pct, other_pct} of all logical cores, or None where it cannot be measured."""
        if self._start is None or self._end is None:
            return None
        mean = _busy_pct(self._start, self._end)
        wall = self._wall_end - self._wall_start
        if mean is None or wall <= 0:
            return None
        own = 100.0 * (self._own_end - self._own_start) / (wall * (os.cpu_count() or 1))
        return {
            "mean_pct": round(mean, 1),
            "max_pct": round(max([mean, *self.samples]), 1),
            "own_pct": round(own, 1),
            "other_pct": round(max(0.0, mean - own), 1),
        }


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system
