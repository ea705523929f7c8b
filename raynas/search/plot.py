"""The metric-vs-latency plot saved as ``pareto.png`` (the search's first objective against
latency in ms)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def figure(width: float = 7, height: float = 4.5, **kwargs):
    """``(fig, ax)`` of a headless matplotlib figure (files only: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height), dpi=120, **kwargs)


def save(fig, path: str | Path) -> Path:
    """Lay out, write and close ``fig``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_pareto(records: Sequence[Mapping[str, Any]], front: Sequence[Mapping[str, Any]],
                path: str | Path, *, title: str, latency_budget_ms: float | None = None,
                chosen: Mapping[str, Any] | None = None, metric: str) -> Path:
    """Every evaluated subnet (grey), the front (red steps), the budget and the exported
    point, with ``metric`` on the y axis; records without it are left out."""
    target = records[0].get("latency_target", "") if records else ""
    fig, ax = figure()
    records = [r for r in records if metric in r]
    front = [r for r in front if metric in r]
    ax.scatter([r["latency_ms"] for r in records], [r[metric] for r in records],
               s=12, c="0.7", label=f"evaluated subnets ({len(records)})")
    if front:
        ax.plot([r["latency_ms"] for r in front], [r[metric] for r in front], "-o",
                c="tab:red", ms=5, drawstyle="steps-post", label=f"Pareto front ({len(front)})")
    if latency_budget_ms is not None:
        ax.axvline(latency_budget_ms, ls="--", c="tab:blue",
                   label=f"latency budget {latency_budget_ms:g} ms")
    if chosen is not None and metric in chosen:
        ax.scatter([chosen["latency_ms"]], [chosen[metric]], s=140, marker="*",
                   c="gold", edgecolors="k", zorder=5, label="exported")
    ax.set_xscale("log")  # latencies span several times; a few slow outliers stay readable
    ax.set_xlabel(f"latency (ms, {target}, log scale)")
    ax.set_ylabel(f"validation {metric}")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return save(fig, path)
