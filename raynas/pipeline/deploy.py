"""Deploy many (``raynas export --budgets``): from one search's Pareto front, the best subnet
under each of several budgets, each exported and checked as a single export is, registered
as a version of one MLflow registered model (aliased by budget), and summed up in one table.

With ``--targets`` (devices the search timed every subnet on, ``latency.targets``), the
same for each device: the best subnet under each budget on that device's front (a latency
budget bounds its latency), re-timed there. ``--targets`` without ``--budgets``: one export
per device, the ``--pick`` of its front within every ``--budget``, into ``<device>/``.

Outputs, under ``<output dir>/deploy/``: one folder per budget (``params_le_20000/``; with
``--targets``, ``<device>/params_le_20000/``: the model files and its ``pareto.png`` with
the chosen point starred), ``deploy.parquet`` and ``deploy.md`` (budget, device, arch,
validation and test metrics, latency at search and measured now, FLOPs, parameters,
registered version), and ``report.html`` (that table and each export's front plot, in one
file). An MLflow parent run ``deploy`` holds one ``export`` child run per
budget and device, and the two tables. Registered versions are aliased by folder
(``edge_latency_ms_le_0_5``) and tagged ``raynas.budget`` and ``raynas.target``.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raynas.errors import ConfigError
from raynas.latency.targets import device_budgets
from raynas.pipeline.export import export_stage, within_budgets
from raynas.pipeline.progress import say
from raynas.search.searchers import Constraint

if TYPE_CHECKING:
    from raynas.pipeline.job import Job


def parse_budgets(text: str, known: dict[str, str]) -> list[Constraint]:
    """``"params<=1e4,2e4,5e4"`` (or ``"0.3,0.5"``: latency in ms) -> one Constraint per
    limit, in the order given."""
    from raynas.search.replay import parse_constraint

    metric, sep, limits = str(text).rpartition("<=")
    if not sep:
        metric, limits = "latency_ms", text
    parts = [p.strip() for p in limits.split(",")]
    if not all(parts):
        raise ConfigError(f"--budgets = {text!r}: write METRIC<=LIMIT,LIMIT,... (e.g. "
                          "params<=1e4,2e4 or latency_ms<=0.3,0.5; plain limits are latency "
                          "in ms)")
    out = [parse_constraint(f"{metric}<={p}", "--budgets", known) for p in parts]
    if len({c.limit for c in out}) != len(out):
        raise ConfigError(f"--budgets = {text!r}: a limit is given twice")
    return out


def budget_label(budget: Constraint) -> str:
    """A folder name and MLflow alias for a budget: ``params<=20000`` -> ``params_le_20000``."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"{budget.metric}_le_{str(budget).split('<=')[1]}")


def deploy_stage(job: Job, checkpoint: str | Path, fronts: Mapping[str | None, list[dict]],
                 sweep: Sequence[Constraint], fixed: Sequence[Constraint] = (),
                 model_name: str | None = None, pick: str | int = "best"
                 ) -> list[dict[str, Any]]:
    """One export per budget of ``sweep`` (each together with every budget of ``fixed``) and
    per device: ``fronts`` maps each device of ``--targets`` to its Pareto front (None: no
    --targets, the job's own target). An empty ``sweep``: one export per device, ``pick``
    within ``fixed``. Returns the summary rows. Every budget is checked against every front
    before any work."""
    lat = job.cfg.latency
    plan = []
    for target, front in fronts.items():
        for b in sweep or [None]:
            budgets = device_budgets([*fixed, *([b] if b else [])], lat, target)
            within_budgets(front, budgets)  # none meets it: an error naming it, nothing written
            folder = "/".join(x for x in (target, b and budget_label(b)) if x)
            plan.append((target, front, b, budgets, folder))
    name = model_name or job.cfg.name
    out = job.out / "deploy"
    rows = []
    with job.stage_run("deploy", None) as parent:
        job.log_config()
        job.tracker.log_params({"deploy.budgets": ", ".join(map(str, sweep or fixed)),
                                "deploy.model_name": name, "deploy.targets": ", ".join(
                                    t or lat.target for t in fronts)})
        for i, (target, front, b, budgets, folder) in enumerate(plan, 1):
            budget = str(b) if b else ", ".join(map(str, fixed)) or "none"  # the row's
            say(f"deploy {i}/{len(plan)}: {budget}" + (f" on {target}" if target else ""))
            tags = {"raynas.budget": budget, "raynas.target": target or lat.target}
            result = export_stage(job, checkpoint, front, parent_id=parent,
                                  pick="best" if sweep else pick,
                                  budgets=budgets, directory=out / folder, target=target,
                                  register=(name, folder.replace("/", "_"), tags))
            rows.append(_row(job, budget, target or lat.target, folder, result))
        _write_tables(rows, out)
        job.tracker.log_artifact(out / "deploy.parquet")
        job.tracker.log_artifact(out / "deploy.md")
        job.tracker.log_artifact(out / "report.html")
    say(f"deploy: {len(rows)} subnets -> {out}; summary {out / 'deploy.md'}")
    return rows


def _row(job: Job, budget: str, target: str, folder: str,
         result: dict[str, Any]) -> dict[str, Any]:
    record = result["record"]
    metrics = [m.name for m in job.task.metrics]
    return {"budget": budget, "target": target, "folder": folder,
            "arch_key": result["arch_key"],
            "arch": job.space.validate(record["arch"]).to_json(),
            **{f"val_{m}": record[m] for m in metrics},
            **{f"test_{m}": record[f"test_{m}"] for m in metrics},
            "latency_ms_at_search": float(result["chosen"]["latency_ms"]),
            "latency_ms": record["latency_ms"], "latency_measured_ms":
            record["latency_measured_ms"], "latency_target": record["latency_target"],
            "latency_node": record.get("latency_node"),
            "flops": record["flops"], "params": record["params"],
            "peak_memory_mb": record["peak_memory_mb"],
            "model_version": record.get("model_version")}


def _write_tables(rows: list[dict[str, Any]], out: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), out / "deploy.parquet")
    from raynas.search.report import html_page, inline_png, markdown_table, table

    cols = [c for c in rows[0] if c not in ("arch", "folder", "latency_node")]
    cells = [[r[c] for c in cols] for r in rows]
    (out / "deploy.md").write_text(markdown_table(cols, cells))
    # The same table and each export's front plot, in one self-contained page.
    parts = ["<h1>Deploy many</h1>", table(cols, cells)]
    for r in rows:
        parts += [f"<h2>{html.escape(r['budget'])} on {html.escape(r['target'])}</h2>",
                  inline_png(out / r["folder"] / "pareto.png")]
    (out / "report.html").write_text(html_page("deploy", parts))
