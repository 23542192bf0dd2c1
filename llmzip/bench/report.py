"""bench's reading of its own numbers: speedup intervals, warnings, CI gates, and report.md / the PNG.

Pure functions over the result dict (and the per-round latencies while they exist), so that the CLI table,
report.md and the gates all say the same thing, and a speedup inside the noise is never printed as a number.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from llmzip.bench import plots
from llmzip.runtime.machine import has_fast_bf16

REPORT_FILE = "report.md"
PLOT_FILE = "latency_vs_accuracy.png"
WITHIN_NOISE = "≈1× (within noise)"
# Share of the machine's CPU time that other processes may take during timing before the result is flagged.
OTHER_LOAD_WARN_PCT = 20.0
INT8_ISA = ("avx512_vnni", "avx_vnni", "amx_int8")


def speedup_ci(
    base_ms: np.ndarray, ms: np.ndarray, *, level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Bootstrap interval of median(base) / median(ms), resampling whole round-robin rounds.

    Round r timed every variant once, so base_ms[r] and ms[r] are a pair: resampling rounds (not the two arrays
    independently) keeps a busy second's slowdown on both sides of the ratio, as it was measured.
    """
    base, cand = np.asarray(base_ms, dtype=np.float64), np.asarray(ms, dtype=np.float64)
    if base.ndim != 1 or base.shape != cand.shape or len(base) < 2:
        raise ValueError(f"paired latencies need two 1-D arrays of equal length >= 2, got {base.shape}, {cand.shape}")
    idx = np.random.default_rng(seed).integers(0, len(base), size=(resamples, len(base)))
    ratios = np.median(base[idx], axis=1) / np.median(cand[idx], axis=1)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(ratios, [tail, 100 - tail])
    return float(lo), float(hi)


def speedup_fields(base_ms: np.ndarray, ms: np.ndarray, *, seed: int) -> dict[str, Any]:
    """The speedup keys of one result row: point estimate (p50 ratio), 95% interval, and whether it excludes 1."""
    lo, hi = speedup_ci(base_ms, ms, seed=seed)
    return {
        "speedup_vs_baseline": round(float(np.median(base_ms) / np.median(ms)), 3),
        "speedup_ci95": [round(lo, 3), round(hi, 3)],
        "speedup_significant": bool(lo > 1.0 or hi < 1.0),
    }


def speedup_text(row: dict[str, Any], baseline: str | None = None) -> str:
    """How a speedup is printed everywhere: with its interval, or "≈1× (within noise)"."""
    if baseline is not None and row["name"] == baseline:
        return "baseline"
    if not row.get("speedup_significant"):
        return WITHIN_NOISE
    lo, hi = row["speedup_ci95"]
    return f"{row['speedup_vs_baseline']:.2f}× [{lo:.2f}–{hi:.2f}]"


def int8_slower_warnings(
    rows: list[dict[str, Any]], rounds: list[np.ndarray], isa: list[str], *, seed: int
) -> list[str]:
    """An int8 ONNX variant measurably slower (interval below 1) than an fp32 ONNX variant at the same batch."""
    out = []
    onnx = [(r, t) for r, t in zip(rows, rounds) if r["kind"] == "onnx"]
    for q, q_ms in onnx:
        if not str(q["precision"]).startswith("int8"):
            continue
        for f, f_ms in onnx:
            if f["precision"] != "fp32" or f["batch"] != q["batch"]:
                continue
            lo, hi = speedup_ci(f_ms, q_ms, seed=seed)
            if hi < 1.0:
                kernels = [k for k in INT8_ISA if k in isa]
                why = f"it has {', '.join(kernels)}" if kernels else "it has no VNNI/AMX int8 instructions"
                out.append(
                    f"int8 {q['name']} is slower than fp32 {f['name']} at batch {q['batch']} on this CPU "
                    f"(p50 {q['latency_ms']['p50']:.2f} vs {f['latency_ms']['p50']:.2f} ms, "
                    f"speedup {lo:.2f}–{hi:.2f}×; {why})"
                )
    return out


def saturation_warnings(rows: list[dict[str, Any]]) -> list[str]:
    """An int8 variant whose u8×s8 products saturate on this CPU (AVX2/AVX-512 without VNNI) on eval examples."""
    out, seen = [], set()
    for row in rows:
        sat = row.get("int8_saturation")
        if not sat or not sat["saturates_here"] or row["name"] in seen:
            continue
        seen.add(row["name"])
        out.append(
            f"int8 {row['name']}: on this CPU ({sat['this_cpu']}, no VNNI) onnxruntime's int8 kernels saturate in "
            f"{sat['saturating_matmuls']} of {sat['u8s8_matmuls']} u8×s8 matmuls ({sat['saturated_outputs']} outputs "
            f"changed on {sat['examples']} eval examples): its accuracy here differs from VNNI/AMX machines; "
            "quantize with `llmzip quantize --target-cpu any` for a model that is right on every x86 CPU"
        )
    return out


def saturation_text(row: dict[str, Any]) -> str:
    """The 'saturates here' cell: yes/no for int8 ONNX variants on this CPU, with the AVX2 count elsewhere."""
    sat = row.get("int8_saturation")
    if not sat:
        return "—"
    if sat["saturates_here"]:
        return f"YES ({sat['saturating_matmuls']}/{sat['u8s8_matmuls']})"
    if sat["saturating_matmuls"]:
        return f"no here; {sat['saturating_matmuls']}/{sat['u8s8_matmuls']} on AVX2"
    return "no"


def load_warnings(cpu_load: dict[str, float] | None, threads: int) -> list[str]:
    if cpu_load is None or cpu_load["other_pct"] <= OTHER_LOAD_WARN_PCT:
        return []
    return [
        f"other processes used {cpu_load['other_pct']:.0f}% of the CPU while timing "
        f"(machine {cpu_load['mean_pct']:.0f}%, llmzip {cpu_load['own_pct']:.0f}% with {threads} thread(s)): "
        "latencies may be inflated; rerun on an idle machine"
    ]


def bf16_warnings(precisions: list[str], isa: list[str], provider: str) -> list[str]:
    if provider != "cpu" or "bf16" not in precisions or has_fast_bf16(isa):
        return []
    return [
        "bf16 was asked for, but this CPU has no avx512_bf16/amx_bf16: PyTorch emulates bf16 and it is likely "
        "slower than fp32 here"
    ]


def gate_failures(result: dict[str, Any], *, min_speedup: float | None, max_accuracy_drop: float | None) -> list[str]:
    """The gates the last variant (the candidate) fails against the first (the baseline); empty when all pass."""
    base, cand = result["baseline"], result["variants"][-1]["name"]
    rows = {(v["name"], v["batch"]): v for v in result["variants"]}
    batches = sorted({v["batch"] for v in result["variants"]})
    failures = []
    if min_speedup is not None:
        for b in batches:
            row = rows[(cand, b)]
            if row["speedup_vs_baseline"] < min_speedup:
                noise = "" if row["speedup_significant"] else f" ({WITHIN_NOISE})"
                failures.append(
                    f"speedup of {cand} over {base} at batch {b} is {row['speedup_vs_baseline']:.2f}×{noise} "
                    f"< --min-speedup {min_speedup:g}"
                )
    if max_accuracy_drop is not None:
        base_acc, cand_acc = rows[(base, batches[0])]["accuracy"], rows[(cand, batches[0])]["accuracy"]
        drop = round(100 * (base_acc - cand_acc), 4)
        if drop > max_accuracy_drop:
            failures.append(
                f"accuracy drop of {cand} vs {base} is {drop:.2f} points ({100 * cand_acc:.2f}% vs "
                f"{100 * base_acc:.2f}%) > --max-accuracy-drop {max_accuracy_drop:g}"
            )
    return failures


def isa_summary(isa: list[str]) -> str:
    """The three capabilities that decide int8 and bf16 speed, each as present/absent with its flags."""

    def flag(label: str, names: tuple[str, ...]) -> str:
        found = [n for n in names if n in isa]
        return f"{label} {'yes (' + ', '.join(found) + ')' if found else 'no'}"

    return " · ".join(
        (
            flag("VNNI", ("avx512_vnni", "avx_vnni")),
            flag("AMX", ("amx_tile", "amx_int8", "amx_bf16")),
            flag("AVX512-BF16", ("avx512_bf16",)),
        )
    )


def _accuracy_text(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def render_markdown(result: dict[str, Any]) -> str:
    m, c = result["machine"], result["config"]
    lines = ["# llmzip bench", ""]
    metric = str(result["variants"][0].get("metric") or "accuracy") if result["variants"] else "accuracy"
    if "data" in result:
        samples = result["variants"][0]["eval_samples"]
        lines += [f"{metric.capitalize()} on {samples} examples of `{result['data'].get('split', '?')}`.", ""]
    lines += [
        "| variant | precision | batch×seq | p50 ms | p90 ms | p99 ms | spread (IQR) ms | samples/s | "
        f"speedup vs {result['baseline']} (95% CI) | size MB | {metric} | int8 saturates here |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for v in result["variants"]:
        lat = v["latency_ms"]
        lines.append(
            f"| {v['name']} | {v['kind']} {v['precision']} | {v['batch']}×{v['seq_len']} | {lat['p50']:.2f} | "
            f"{lat['p90']:.2f} | {lat['p99']:.2f} | {lat['iqr']:.2f} | {v['throughput']:.1f} | "
            f"{speedup_text(v, result['baseline'])} | {v['size_mb']:.1f} | {_accuracy_text(v['accuracy'])} | "
            f"{saturation_text(v)} |"
        )
    lines += [
        "",
        "Speedup: p50 of the baseline over p50 of the variant at the same batch; the interval bootstraps the "
        f"paired round-robin rounds ({c['iterations']} per batch); {WITHIN_NOISE} when it contains 1.",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']} ({m['logical_cores']} logical cores, {m['usable_cores']} usable)",
        f"- ISA: {', '.join(m['isa']) or 'none of the tracked flags'}",
        f"- int8/bf16 kernels: {isa_summary(m['isa'])}",
        f"- int8 u8×s8 kernel: {m.get('int8_kernel', '—')} (class {m.get('cpu_class') or 'other'})",
        f"- threads: {c['threads']} · provider: {c['provider']} · torch dtype: {c.get('torch_dtype', 'fp32')}",
        f"- OS: {m['os']}",
        f"- libraries: {', '.join(f'{k} {v}' for k, v in m['versions'].items())}",
    ]
    load = m.get("cpu_load")
    if load:
        lines.append(
            f"- CPU load while timing: mean {load['mean_pct']:.0f}%, max {load['max_pct']:.0f}% "
            f"(llmzip {load['own_pct']:.0f}%, others {load['other_pct']:.0f}%)"
        )
    lines.append(
        f"- load average (1 min): {m.get('load_avg_1m', '—')} at start, {m.get('load_avg_1m_end', '—')} at end"
    )
    lines += ["", "## Warnings", ""]
    lines += [f"- {w}" for w in result["warnings"]] or ["None."]
    gates = result.get("gates")
    if gates:
        lines += ["", f"## Gates ({gates['candidate']} vs {gates['baseline']})", ""]
        lines += [f"- FAILED: {f}" for f in gates["failures"]] or ["- passed"]
    return "\n".join(lines) + "\n"


def write_report(result: dict[str, Any], directory: Path) -> tuple[list[str], list[str]]:
    """Write report.md and (with matplotlib) the latency/accuracy scatter; → (files written, notes)."""
    (directory / REPORT_FILE).write_text(render_markdown(result))
    if not plots.available():
        return [REPORT_FILE], [f"{PLOT_FILE} skipped: matplotlib is not installed (pip install 'llmzip[bench]')"]
    largest = max(v["batch"] for v in result["variants"])
    points = [
        {
            "name": f"{v['name']} ({v['precision']}, {v['size_mb']:.1f} MB)",
            "p50": v["latency_ms"]["p50"],
            "accuracy": v["accuracy"],
            "size_mb": v["size_mb"],
        }
        for v in result["variants"]
        if v["batch"] == largest and v["accuracy"] is not None
    ]
    if not points:
        return [REPORT_FILE], [f"{PLOT_FILE} skipped: no variant has an accuracy"]
    plots.scatter_png(
        directory / PLOT_FILE,
        points,
        x="p50",
        y="accuracy",
        size="size_mb",
        title=f"latency vs accuracy at batch {largest} (marker area: size MB)",
        xlabel=f"p50 latency, ms (batch {largest}×{result['config']['seq_len']})",
        ylabel="accuracy",
    )
    return [REPORT_FILE, PLOT_FILE], []
