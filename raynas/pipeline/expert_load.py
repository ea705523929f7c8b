"""Expert load of an exported subnet's mixture-of-experts layers: how the tokens of the test
split spread over each layer's experts (a histogram per layer) and how balanced that is (the
entropy of the shares, in nats: log(experts) when every expert gets as many, 0 when one gets
all). Written as ``expert_load.json`` and ``expert_load.png`` next to the model, and logged."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raynas.nn.moe import MOE_LAYERS, expert_loads, load_entropy
from raynas.tasks import to_device


def measure_expert_load(model: nn.Module, task, batches: Iterable) -> dict[str, dict[str, Any]]:
    """Per MoE layer of ``model`` (by module name): the assignments per expert over
    ``batches``, their shares, the entropy and its maximum. Empty without MoE layers."""
    layers = [m for m in model.modules() if isinstance(m, MOE_LAYERS)]
    if not layers:
        return {}
    for m in layers:
        m.reset_load()
        m.track_load = True
    device = next(model.parameters()).device
    try:
        model.eval()
        with torch.no_grad():
            for batch in batches:
                model(*task.inputs(to_device(batch, device)))
        loads = expert_loads(model, accumulated=True)
    finally:
        for m in layers:
            m.track_load = False
    report = {}
    for name, counts in loads.items():
        total = int(counts.sum())
        report[name] = {"load": counts.tolist(),
                        "share": [int(c) / max(total, 1) for c in counts],
                        "entropy": load_entropy(counts) if total else 0.0,
                        "max_entropy": math.log(len(counts))}
    return report


def write_expert_load(report: dict[str, dict[str, Any]], directory: Path, title: str
                      ) -> list[Path]:
    """``expert_load.json`` and a bar chart per layer, ``expert_load.png``, in
    ``directory``; the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    data = directory / "expert_load.json"
    data.write_text(json.dumps(report, indent=2) + "\n")
    n = len(report)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n + 0.6, 2.8), squeeze=False,
                             sharey=True)
    for ax, (name, layer) in zip(axes[0], report.items()):
        shares = layer["share"]
        ax.bar(range(len(shares)), shares, color="tab:blue")
        ax.axhline(1 / len(shares), color="grey", lw=0.8, ls="--")  # a balanced load
        ax.set_xticks(range(len(shares)))
        ax.set_xlabel("expert")
        ax.set_title(f"{name}\nentropy {layer['entropy']:.2f} / {layer['max_entropy']:.2f}",
                     fontsize=8)
    axes[0][0].set_ylabel("share of token assignments")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    plot = directory / "expert_load.png"
    fig.savefig(plot, dpi=110)
    plt.close(fig)
    return [data, plot]


def load_metrics(report: dict[str, dict[str, Any]]) -> dict[str, float]:
    """MLflow metrics: each layer's load entropy and the mean balance (entropy over its
    maximum, 1 for a perfectly even load)."""
    metrics = {f"expert_load_entropy.{name}": r["entropy"] for name, r in report.items()}
    balance = [r["entropy"] / r["max_entropy"] for r in report.values() if r["max_entropy"]]
    if balance:
        metrics["expert_load_balance"] = sum(balance) / len(balance)
    return metrics
