"""A search's report, ``report.html`` (one self-contained file, images inline): the front, the
searcher's progress (hypervolume of the first N subnets, against the search's reference
point), which dimensions matter for each objective, and the front's subnets in a table.

Importance is Optuna's mean-decrease-in-impurity evaluator (a seeded random forest) over the
evaluated subnets, one value per dimension (a per-layer dimension gives one per layer, kept
where every subnet has that layer), summing to 1 per objective.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from raynas.search.pareto import hypervolume
from raynas.search.plot import figure, save
from raynas.search.searchers import Constraint, Objective
from raynas.space import Choice, FloatRange, IntRange, PerLayer, SearchSpace


def progress(records: Sequence[Mapping[str, Any]], objectives: Sequence[Objective],
             reference: Sequence[float], constraints: Sequence[Constraint] = (),
             points: int = 100) -> list[tuple[int, float]]:
    """``(N, hypervolume of the first N records)``, at up to ``points`` values of N."""
    n = len(records)
    steps = sorted({max(1, round(n * i / points)) for i in range(1, points + 1)}) if n else []
    return [(k, hypervolume(records[:k], objectives, reference, constraints)) for k in steps]


def importances(records: Sequence[Mapping[str, Any]], space: SearchSpace,
                objectives: Sequence[Objective], seed: int = 0) -> dict[str, dict[str, float]]:
    """Objective -> {dimension: importance}, largest first (empty with under 4 records)."""
    import optuna
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )
    from optuna.importance import MeanDecreaseImpurityImportanceEvaluator, get_param_importances

    rows = [r for r in records if float(r.get("fidelity", 1.0)) >= 1  # scored in full
            and all(math.isfinite(float(r[o.name])) for o in objectives)]
    if len(rows) < 4:
        return {}
    trials = []
    for r in rows:
        arch = space.validate(r["arch"])
        params, dists = {}, {}
        for d in space.dims:
            if isinstance(d, PerLayer):
                for i, v in enumerate(arch[d.name]):
                    params[f"{d.name}[{i}]"] = v
                    dists[f"{d.name}[{i}]"] = CategoricalDistribution(d.values)
                continue
            params[d.name] = arch[d.name]
            if isinstance(d, Choice):
                dists[d.name] = CategoricalDistribution(d.values)
            elif isinstance(d, IntRange):
                dists[d.name] = IntDistribution(d.low, d.high)
            elif isinstance(d, FloatRange):
                dists[d.name] = FloatDistribution(d.low, d.high)
        trials.append(optuna.trial.create_trial(
            params=params, distributions=dists,
            values=[float(r[o.name]) for o in objectives]))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=[
        "maximize" if o.direction == "max" else "minimize" for o in objectives])
    study.add_trials(trials)
    out = {}
    for j, o in enumerate(objectives):
        try:
            found = get_param_importances(
                study, evaluator=MeanDecreaseImpurityImportanceEvaluator(seed=seed),
                target=lambda t, j=j: t.values[j])
        except (RuntimeError, ValueError):  # e.g. every dimension constant
            found = {}
        out[o.name] = {k: float(v) for k, v in found.items()}
    return out


def write_report(path: Path, *, title: str, space: SearchSpace,
                 records: Sequence[Mapping[str, Any]], front: Sequence[Mapping[str, Any]],
                 objectives: Sequence[Objective], reference: Sequence[float],
                 constraints: Sequence[Constraint], metrics: Mapping[str, Any],
                 images: Sequence[Path] = ()) -> dict[str, Any]:
    """Write ``report.html`` (and ``report_progress.png``, ``report_importance.png`` beside
    it); return what it shows as data (progress and importances)."""
    steps = progress(records, objectives, reference, constraints)
    weights = importances(records, space, objectives)
    out = Path(path).parent
    drawn = [*images, _plot_progress(steps, out / "report_progress.png")]
    if any(weights.values()):
        drawn.append(_plot_importance(weights, out / "report_importance.png"))
    cols = ["arch_key", *[o.name for o in objectives],
            *[c for c in ("latency_ms", "flops", "params", "peak_memory_mb")
              if c not in {o.name for o in objectives}]]
    parts = [f"<h1>{html.escape(title)}</h1>",
             "<p>Objectives: " + ", ".join(f"{o.name} ({o.direction})" for o in objectives)
             + (("; budgets: " + ", ".join(map(str, constraints))) if constraints else "")
             + "; hypervolume reference point " + ", ".join(f"{v:.4g}" for v in reference)
             + ".</p>", table(["metric", "value"], [[k, v] for k, v in metrics.items()])]
    parts += [inline_png(image) for image in drawn]
    for name, w in weights.items():
        parts.append(f"<h2>What matters for {html.escape(name)}</h2>"
                     + table(["dimension", "importance"], [[k, v] for k, v in w.items()]))
    parts.append(f"<h2>Pareto front ({len(front)} subnets)</h2>"
                 + table([*cols, "arch"], [[*(r.get(c) for c in cols),
                                             space.validate(r["arch"]).to_json()]
                                            for r in front]))
    Path(path).write_text(html_page(title, parts))
    return {"progress": steps, "importance": weights}


def _cell(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))


def table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An HTML table (floats to 4 significant digits)."""
    return ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in r)
                      + "</tr>" for r in rows) + "</table>")


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """The same table in Markdown."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def html_page(title: str, parts: Sequence[str]) -> str:
    """One self-contained page of HTML ``parts``."""
    return ("<!doctype html><meta charset='utf-8'><title>" + html.escape(title)
            + "</title><style>body{font-family:sans-serif;max-width:1000px;margin:auto}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;"
            "font-size:13px}</style>" + "\n".join(parts) + "\n")


def inline_png(path: Path) -> str:
    """An <img> carrying the PNG file itself."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return (f'<p><img alt="{html.escape(Path(path).name)}" '
            f'src="data:image/png;base64,{data}" style="max-width:100%"></p>')


def _plot_progress(steps: Sequence[tuple[int, float]], path: Path) -> Path:
    fig, ax = figure(6, 3.5)
    ax.plot([n for n, _ in steps], [hv for _, hv in steps], "-", c="tab:green")
    ax.set_xlabel("subnets evaluated")
    ax.set_ylabel("hypervolume")
    ax.set_title("search progress")
    ax.grid(alpha=0.3)
    return save(fig, path)


def _plot_importance(weights: Mapping[str, Mapping[str, float]], path: Path) -> Path:
    names = sorted({k for w in weights.values() for k in w})
    fig, ax = figure(6.5, 0.3 * len(names) + 1.5)
    height = 0.8 / max(len(weights), 1)
    for i, (objective, w) in enumerate(weights.items()):
        ax.barh([k + (i - (len(weights) - 1) / 2) * height for k in range(len(names))],
                [w.get(n, 0.0) for n in names], height=height, label=objective)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("importance (mean decrease in impurity)")
    ax.legend(fontsize=8)
    return save(fig, path)
