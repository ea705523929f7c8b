"""The files of a fidelity report: the per-subnet table (Parquet and Markdown), the
standalone-vs-inherited plot (PNG) and the summary (JSON)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from raynas.fidelity.metrics import RankAgreement, top_k
from raynas.fidelity.picking import Picked

FILES = ("fidelity.parquet", "fidelity.md", "fidelity.png", "fidelity.json")


def _ranks(values: Sequence[float], goal: str) -> list[int]:
    """1 for the best value, ``len(values)`` for the worst."""
    order = top_k(values, goal, len(values))
    ranks = [0] * len(values)
    for place, i in enumerate(order, 1):
        ranks[i] = place
    return ranks


def subnet_rows(picked: Sequence[Picked], standalone: Sequence[Mapping[str, Any]],
                inherited: Sequence[Mapping[str, Any]], metric: str, goal: str,
                cached: Sequence[bool]) -> list[dict[str, Any]]:
    """One row per subnet, in increasing FLOPs: its arch, FLOPs and parameters, ``metric``
    on the validation and test splits by standalone training and by the supernet, their
    gap, and each side's rank (1: best)."""
    alone = [float(r[metric]) for r in standalone]
    shared = [float(r[metric]) for r in inherited]
    rank_alone, rank_shared = _ranks(alone, goal), _ranks(shared, goal)
    rows = []
    for i, p in enumerate(picked):
        s, h = standalone[i], inherited[i]
        rows.append({
            "arch_key": p.arch.key, "arch": p.arch.to_json(), "flops": p.flops,
            "params": h.get("params"),
            f"standalone_{metric}": alone[i], f"inherited_{metric}": shared[i],
            "gap": alone[i] - shared[i],
            f"standalone_test_{metric}": s.get(f"test_{metric}"),
            f"inherited_test_{metric}": h.get(f"test_{metric}"),
            "standalone_rank": rank_alone[i], "inherited_rank": rank_shared[i],
            "cached": bool(cached[i]), "train_s": s.get("train_s"),
        })
    return rows


def _number(x: Any) -> Any:
    """JSON has no NaN: an undefined correlation is written as null."""
    return None if isinstance(x, float) and math.isnan(x) else x


def markdown(rows: Sequence[Mapping[str, Any]], val: RankAgreement, metric: str,
             title: str) -> str:
    """The report as Markdown: the numbers, then one table row per subnet."""
    lines = [
        f"# {title}", "",
        f"{val.n} subnets, validation {metric}: Kendall tau {val.kendall_tau:.3f}, "
        f"Spearman rho {val.spearman_rho:.3f}, top-{val.k} overlap {val.top_k_overlap:.2f}, "
        f"top-1 regret {val.top1_regret:.4f}, mean gap (standalone - inherited) "
        f"{val.mean_gap:+.4f}.", "",
        f"| # | arch key | FLOPs | standalone {metric} | inherited {metric} | gap "
        "| rank standalone | rank inherited | cached |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for i, r in enumerate(rows):
        lines.append(
            f"| {i} | `{r['arch_key'][:12]}` | {r['flops']:,} | "
            f"{r[f'standalone_{metric}']:.4f} | {r[f'inherited_{metric}']:.4f} | "
            f"{r['gap']:+.4f} | {r['standalone_rank']} | {r['inherited_rank']} | "
            f"{'yes' if r['cached'] else 'no'} |")
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[Mapping[str, Any]], metric: str, path: str | Path, title: str
         ) -> Path:
    """Standalone (x) against inherited (y) ``metric``, one point per subnet coloured by
    FLOPs and labelled by its table row, with the y = x line: points below it are subnets
    the supernet under-rates."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    x = [r[f"standalone_{metric}"] for r in rows]
    y = [r[f"inherited_{metric}"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    lo, hi = min(x + y), max(x + y)
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "--", c="0.5", lw=1, label="y = x")
    points = ax.scatter(x, y, c=[r["flops"] for r in rows], cmap="viridis", s=40,
                        edgecolors="k", linewidths=0.5, zorder=3)
    for i, (a, b) in enumerate(zip(x, y)):
        ax.annotate(str(i), (a, b), textcoords="offset points", xytext=(4, 4), fontsize=7)
    fig.colorbar(points, ax=ax, label="FLOPs")
    ax.set_xlabel(f"standalone {metric} (trained from scratch, validation)")
    ax.set_ylabel(f"inherited {metric} (supernet weights, validation)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    # Upper left: weight sharing usually under-rates, so the points sit below y = x.
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def write_report(directory: str | Path, rows: Sequence[Mapping[str, Any]],
                 val: RankAgreement, test: RankAgreement, metric: str,
                 summary: Mapping[str, Any], title: str) -> Path:
    """Write ``FILES`` into ``directory``; return it. ``summary``: more fields for the JSON
    (settings, counts, wall time)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist([dict(r) for r in rows]), out / "fidelity.parquet")
    (out / "fidelity.md").write_text(markdown(rows, val, metric, title))
    plot(rows, metric, out / "fidelity.png",
         f"{title}\nKendall tau {val.kendall_tau:.2f}, Spearman rho {val.spearman_rho:.2f}")
    doc = {**{k: _number(v) for k, v in val.as_dict().items()},
           "test": {k: _number(v) for k, v in test.as_dict().items()},
           "metric": metric, **summary}
    (out / "fidelity.json").write_text(json.dumps(doc, indent=2, default=str))
    return out
