"""The Markdown table of a compress search (printed by the CLI, written as report.md by bench-compress)."""

from __future__ import annotations

from typing import Any


def _shapes(rows: list[dict[str, Any]]) -> list[str]:
    seen: list[str] = []
    for r in rows:
        for s in r.get("latency_ms", {}):
            if s not in seen:
                seen.append(s)
    return seen


def _mean(row: dict[str, Any], name: str) -> str:
    """An accuracy cell: one measurement, or the mean ± sd over a candidate's seeds."""
    sd = row.get(f"{name}_sd")
    return f"{row[name]:.4f}" if sd is None else f"{row[name]:.4f} ± {sd:.4f} ({len(row['seeds'])} seeds)"


def markdown(result: dict[str, Any]) -> str:
    t = result["teacher"]
    rows = [r for r in result["candidates"] if "error" not in r]
    shapes = _shapes(rows)
    front = set(result.get("pareto", []))
    metric = t.get("metric") or "accuracy"  # spearman for a sentence embedder (its budget is in Spearman points)
    head = ["candidate", metric, "Δ pt", f"selection {metric}", "size MB", "× smaller"]
    head += [f"{s} ms (speedup)" for s in shapes] + ["Pareto", "in budget"]
    lines = [
        f"Teacher: {metric} {t['accuracy']:.4f} (selection split {t['selection_accuracy']:.4f}), "
        f"fp32 ONNX {t['onnx_size_mb']:.1f} MB. Budget: −{result['max_accuracy_drop_pt']} pt on the selection "
        f"split; objective: {result['objective']}.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|",
    ]
    for r in sorted(rows, key=lambda r: r["size_mb"]):
        cells = [
            ("**" + r["name"] + "**") if r["name"] == result.get("best") else r["name"],
            _mean(r, "accuracy"),
            f"{-r['accuracy_drop_pt']:+.2f}",
            _mean(r, "selection_accuracy"),
            f"{r['size_mb']:.2f}",
            f"{r['size_ratio_vs_teacher_onnx']:.1f}×",
        ]
        for s in shapes:
            ms = r["latency_ms"].get(s)
            sp = r["speedup_vs_teacher_torch_fp32"].get(s)
            cells.append("—" if ms is None else f"{ms:.2f} ({sp:.2f}×)")
        cells += ["yes" if r["name"] in front else "", "yes" if r.get("within_budget") else "no"]
        lines.append("| " + " | ".join(cells) + " |")
    for r in result.get("references", []):  # bench-compress: the reference rows of the same bench run
        acc = r.get("accuracy")
        cells = [
            f"{r['name']} (reference)",
            "—" if acc is None else f"{acc:.4f}",
            "—" if acc is None else f"{100 * (acc - t['accuracy']):+.2f}",
            "—",
            f"{r['size_mb']:.2f}",
            f"{t['onnx_size_mb'] / r['size_mb']:.1f}×" if r["size_mb"] else "—",
        ]
        for s in shapes:
            ms = r["latency_ms"].get(s)
            sp = r["speedup_vs_teacher_torch_fp32"].get(s)
            cells.append("—" if ms is None else f"{ms:.2f} ({sp:.2f}×)")
        cells += ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    for r in result["candidates"]:
        if "error" in r:
            lines.append(f"\n{r['name']}: failed — {r['error']}")
    best = result.get("best")
    lines.append("")
    lines.append(f"Best within budget: {best} → {result.get('model')}" if best else "No candidate met the budget.")
    return "\n".join(lines)
