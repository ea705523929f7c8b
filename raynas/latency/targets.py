"""Per-device fronts (``latency.targets``): every subnet is also timed on each listed device,
in a meter actor on the node carrying its resource (or where the evaluator runs, with that
device's threads and batch size), and the search reports one Pareto front per device.

The record holds each device's latency as ``latency_ms/<name>`` (and the node it was timed on
as ``latency_node/<name>``). The searcher optimises the job's objectives, on the job's own
target; a device's front is the front of every evaluated subnet with ``latency_ms`` replaced
by that device's column (appended when latency is not an objective), and a latency budget
applied to that device's latency. Where the fronts differ, the best architecture depends on
the device.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from raynas.config import LatencyConfig
from raynas.errors import ConfigError
from raynas.search.pareto import pareto_front
from raynas.search.searchers import Constraint, Objective


def column(name: str) -> str:
    """The record's latency column of device ``name``."""
    return f"latency_ms/{name}"


def target_configs(lat: LatencyConfig) -> list[LatencyConfig]:
    """One measured-latency setting per extra device, the job's settings where it names none."""
    return [lat.model_copy(update={
        "target": t.name, "resource": t.resource, "threads": t.threads or lat.threads,
        "batch_size": t.batch_size or lat.batch_size, "model": "measured", "table": None,
        "targets": []}) for t in lat.targets]


def device_latency(lat: LatencyConfig, name: str | None) -> LatencyConfig | None:
    """The measured-latency setting of device ``name``: None for the job's own target (or no
    name), an error naming the devices for one the job does not list."""
    if name is None or name == lat.target:
        return None
    for t in target_configs(lat):
        if t.target == name:
            return t
    raise ConfigError(f"--targets: {name!r} is not a device of this job; choose from "
                      + ", ".join([lat.target] + [t.name for t in lat.targets]))


def device_budgets(budgets: Sequence[Constraint], lat: LatencyConfig,
                   name: str | None) -> list[Constraint]:
    """Budgets as they apply on device ``name``: a latency budget bounds its latency."""
    if device_latency(lat, name) is None:
        return list(budgets)
    return [Constraint(column(name), b.limit) if b.metric == "latency_ms" else b
            for b in budgets]


def device_objectives(objectives: Sequence[Objective], name: str) -> list[Objective]:
    out = [Objective(column(name), "min") if o.name == "latency_ms" else o for o in objectives]
    return out if any(o.name == "latency_ms" for o in objectives) else [
        *out, Objective(column(name), "min")]


def device_fronts(records: Sequence[Mapping[str, Any]], objectives: Sequence[Objective],
                  constraints: Sequence[Constraint], lat: LatencyConfig
                  ) -> dict[str, list[Mapping[str, Any]]]:
    """Device name -> its Pareto front, the job's target first."""
    fronts = {lat.target: pareto_front(records, objectives, constraints)}
    for t in lat.targets:
        budgets = [Constraint(column(t.name), c.limit) if c.metric == "latency_ms" else c
                   for c in constraints]
        fronts[t.name] = pareto_front(records, device_objectives(objectives, t.name), budgets)
    return fronts


def summary(fronts: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """Per device: front size and archs; and how many of each front's archs are on the first
    device's front too."""
    first = {r["arch_key"] for r in next(iter(fronts.values()))}
    return {name: {"front_size": len(front), "front": [r["arch_key"] for r in front],
                   "on_first_front": sum(r["arch_key"] in first for r in front)}
            for name, front in fronts.items()}


def plot_device_fronts(records: Sequence[Mapping[str, Any]],
                       fronts: Mapping[str, Sequence[Mapping[str, Any]]], metric: str,
                       path: str | Path, title: str) -> Path:
    """One panel per device, side by side: every subnet (grey) against that device's latency,
    its front (red), and the first device's front archs (blue rings), to show where the
    best architecture moves."""
    from raynas.search.plot import figure, save

    names = list(fronts)
    first = {r["arch_key"] for r in fronts[names[0]]}
    fig, axes = figure(4.5 * len(names), 4, ncols=len(names), sharey=True, squeeze=False)
    for i, (ax, name) in enumerate(zip(axes[0], names)):
        x = "latency_ms" if i == 0 else column(name)
        rows = [r for r in records if x in r and metric in r]
        ax.scatter([r[x] for r in rows], [r[metric] for r in rows], s=10, c="0.75")
        front = sorted(fronts[name], key=lambda r: float(r[x]))
        ax.plot([r[x] for r in front], [r[metric] for r in front], "-o", c="tab:red", ms=4,
                drawstyle="steps-post", label=f"front on {name} ({len(front)})")
        if i:
            ring = [r for r in rows if r["arch_key"] in first]
            ax.scatter([r[x] for r in ring], [r[metric] for r in ring], s=60,
                       facecolors="none", edgecolors="tab:blue",
                       label=f"front on {names[0]} ({len(ring)})")
        ax.set_xlabel(f"latency on {name} (ms)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    axes[0][0].set_ylabel(f"validation {metric}")
    fig.suptitle(title)
    return save(fig, path)
