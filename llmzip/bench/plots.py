"""PNG charts for reports (matplotlib, headless). Optional: without matplotlib the callers skip the PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def scatter_png(
    path: Path,
    points: list[dict[str, Any]],
    *,
    x: str,
    y: str,
    title: str,
    xlabel: str,
    ylabel: str,
    hline: float | None = None,
    size: str | None = None,
) -> None:
    """One labelled point per entry of `points`; with `size`, marker area grows with that key (e.g. size_mb)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    largest = max((float(p[size]) for p in points), default=0.0) if size else 0.0
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for i, p in enumerate(points):
        # Area, not radius, scales with the value: a model twice the size covers twice the ink.
        area = 30 + 370 * float(p[size]) / largest if size and largest > 0 else 40
        ax.scatter(p[x], p[y], s=area, alpha=0.7)
        # Stagger labels vertically: variants of one model size sit on the same x.
        ax.annotate(p["name"], (p[x], p[y]), textcoords="offset points", xytext=(6, 4 - 11 * (i % 3)), fontsize=8)
    if hline is not None:
        ax.axhline(hline, color="grey", linestyle="--", linewidth=1)
    ax.margins(0.12)  # room for the largest markers and their labels at the edges
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def bars_png(path: Path, labels: list[str], values: list[float], *, title: str, ylabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.28 * len(labels)), 4.5), dpi=120)
    ax.bar(range(len(values)), values, color=["#c0392b" if v > 0 else "#7f8c8d" for v in values])
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=75, ha="right", fontsize=7)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
