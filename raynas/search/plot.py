"""The accuracy-vs-latency plot saved as ``pareto.png``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def plot_pareto(records: Sequence[Mapping[str, Any]], front: Sequence[Mapping[str, Any]],
                path: str | Path, *, title: str, latency_budget_ms: float | None = None,
                chosen: Mapping[str, Any] | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    target = records[0].get("latency_target", "") if records else ""
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.scatter([r["latency_ms"] for r in records], [r["accuracy"] for r in records],
               s=12, c="0.7", label=f"evaluated subnets ({len(records)})")
    if front:
        ax.plot([r["latency_ms"] for r in front], [r["accuracy"] for r in front], "-o",
                c="tab:red", ms=5, drawstyle="steps-post", label=f"Pareto front ({len(front)})")
    if latency_budget_ms is not None:
        ax.axvline(latency_budget_ms, ls="--", c="tab:blue",
                   label=f"latency budget {latency_budget_ms:g} ms")
    if chosen is not None:
        ax.scatter([chosen["latency_ms"]], [chosen["accuracy"]], s=140, marker="*",
                   c="gold", edgecolors="k", zorder=5, label="exported")
    ax.set_xscale("log")  # latencies span several times; a few slow outliers stay readable
    ax.set_xlabel(f"latency (ms, {target}, log scale)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
