"""``raynas compare``: the fronts of several searches (searchers, weight schemes, devices) in
one plot and one table, every hypervolume against one reference point.

A source is a search's output folder (``evaluations.parquet``, ``pareto.parquet``,
``search.json``) or the MLflow run id of a search stage (the same three artifacts). The
objectives are the first source's (``search.json``); the reference point is raynas's rule
(``default_reference``) over every source's records together, so the hypervolumes compare.
Each front's ``share`` is its hypervolume over that of the front of all sources pooled: 1.0
for a search whose front no other improves on.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raynas.errors import ConfigError
from raynas.search.pareto import default_reference, hypervolume, pareto_front
from raynas.search.plot import figure, save
from raynas.search.report import markdown_table
from raynas.search.searchers import Objective


@dataclass
class Source:
    label: str
    records: list[dict[str, Any]]  # every evaluated subnet
    front: list[dict[str, Any]]  # its Pareto front (feasible under its own budgets)
    summary: dict[str, Any]  # search.json


def load_source(path: Path, label: str) -> Source:
    """A search output folder (or a folder the three artifacts were downloaded into)."""
    from raynas.search.results import read_records

    missing = [n for n in ("evaluations.parquet", "pareto.parquet", "search.json")
               if not (path / n).is_file()]
    if missing:
        raise ConfigError(f"{label}: {path} holds no {', '.join(missing)}; give a search's "
                          "output folder or the MLflow run id of a search stage")
    return Source(label, read_records(path / "evaluations.parquet"),
                  read_records(path / "pareto.parquet"),
                  json.loads((path / "search.json").read_text()))


def compare(sources: Sequence[Source]) -> tuple[list[Objective], list[float],
                                                 list[dict[str, Any]]]:
    """(objectives, reference, one summary row per source)."""
    objectives = [Objective(n, d) for n, d in sources[0].summary["objectives"]]
    for s in sources:
        for o in objectives:
            if s.records and o.name not in s.records[0]:
                raise ConfigError(f"{s.label}: its records have no {o.name!r} column, an "
                                  f"objective of {sources[0].label}")
    # Only the objectives: one arch found by two searches is two points (weights, devices or
    # timings may differ), not one record to deduplicate.
    pooled = [{o.name: r[o.name] for o in objectives} for s in sources for r in s.front]
    if not pooled:
        raise ConfigError("no source has a Pareto point to compare")
    reference = default_reference(objectives, pooled)
    best = hypervolume(pareto_front(pooled, objectives), objectives, reference)
    rows = []
    first = objectives[0]
    pick = max if first.direction == "max" else min
    for s in sources:
        hv = hypervolume(s.front, objectives, reference)
        rows.append({"source": s.label, "searcher": s.summary.get("searcher"),
                     "evaluated": len(s.records), "front_size": len(s.front),
                     "hypervolume": hv, "share": hv / best if best > 0 else math.nan,
                     f"best_{first.name}": pick((float(r[first.name]) for r in s.front),
                                                default=math.nan)})
    return objectives, reference, rows


def write_outputs(sources: Sequence[Source], objectives: Sequence[Objective],
                  reference: Sequence[float], rows: list[dict[str, Any]], out: Path) -> None:
    """``compare.png`` (every front, and faintly every evaluated subnet, in one colour per
    source), ``compare.md`` and ``compare.parquet``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), out / "compare.parquet")
    (out / "compare.md").write_text(markdown(objectives, reference, rows))
    y, x = objectives[0].name, objectives[-1].name
    fig, ax = figure()
    for i, (s, row) in enumerate(zip(sources, rows)):
        color = f"C{i % 10}"
        ax.scatter([r[x] for r in s.records], [r[y] for r in s.records], s=8, c=color,
                   alpha=0.25)
        front = sorted(s.front, key=lambda r: float(r[x]))
        ax.plot([r[x] for r in front], [r[y] for r in front], "-o", c=color, ms=4,
                drawstyle="steps-post", label=f"{s.label} (share {row['share']:.3f})")
    if x == "latency_ms":
        from matplotlib.ticker import NullFormatter, ScalarFormatter

        ax.set_xscale("log")  # plain numbers on the ticks, not powers of ten
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(x + (" (log scale)" if x == "latency_ms" else ""))
    ax.set_ylabel(y)
    ax.set_title("Pareto fronts; hypervolume share of the pooled front")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, out / "compare.png")


def markdown(objectives: Sequence[Objective], reference: Sequence[float],
             rows: list[dict[str, Any]]) -> str:
    return ("Objectives: " + ", ".join(f"{o.name} ({o.direction})" for o in objectives)
            + "; reference point " + ", ".join(f"{v:.4g}" for v in reference) + ".\n\n"
            + markdown_table(list(rows[0]), [list(r.values()) for r in rows]))
