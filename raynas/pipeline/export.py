"""The export stage: the chosen Pareto point written as a static model (state dict, arch
JSON, TorchScript, ONNX), each checked against the supernet; and where its inputs come from
(a run's checkpoint, a run's Pareto front)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raynas.errors import CheckpointError, ConfigError
from raynas.pipeline.progress import say
from raynas.search.searchers import Constraint, Objective
from raynas.tracking import Tracker

if TYPE_CHECKING:
    from raynas.pipeline.job import Job


def export_stage(job: Job, checkpoint: str | Path, front: list[dict[str, Any]],
                 parent_id: str | None = None, pick: str | int | None = None,
                 records: list[dict[str, Any]] | None = None,
                 budgets: Sequence[Constraint] = (), directory: Path | None = None,
                 register: tuple[str, str | None, dict[str, str]] | None = None,
                 target: str | None = None) -> dict[str, Any]:
    """Export the chosen Pareto point as a static model; check it against the supernet.

    ``records`` (every evaluated subnet, when at hand) keeps them in the replotted
    ``pareto.png``, which adds a star at the exported point. ``budgets``: only Pareto points
    meeting every one are candidates (see ``choose``). ``directory``: where the model and
    the plot go (default: ``subnet/`` and ``pareto.png`` in the job's output folder).
    ``register`` (name, alias, tags): the TorchScript model also becomes a version of that
    registered model in MLflow's model registry. ``target``: a device of ``latency.targets``
    the subnet is re-timed on (``front`` is then that device's, its latency in
    ``latency_ms/<device>``); default the job's own target.
    """
    import torch

    from raynas.evaluation.actor import evaluator_args
    from raynas.evaluation.evaluator import Evaluator
    from raynas.export.serialize import export_metadata, export_subnet
    from raynas.latency.targets import column, device_latency
    from raynas.pipeline.expert_load import load_metrics, measure_expert_load, write_expert_load
    from raynas.search.plot import plot_pareto

    cfg, space = job.cfg, job.space
    chosen = choose(front, cfg.export.pick if pick is None else pick, job.objectives, budgets)
    arch = space.validate(chosen["arch"])
    device = device_latency(cfg.latency, target)
    searched_ms = chosen[column(target) if device else "latency_ms"]
    with job.stage_run("export", parent_id):
        if parent_id is None:
            job.log_config()
        tracker = job.tracker
        # Re-measured on the target (in the meter actor there, with latency.resource).
        args = evaluator_args(cfg, checkpoint, space)
        if device is not None:
            args["latency"] = device.model_dump()
        with job.ray("export") if (device or cfg.latency).resource \
                else contextlib.nullcontext():
            evaluator = Evaluator(**args)
            static = evaluator.prepare(arch)
            record = evaluator.score(arch, static, measure=True)
        example = evaluator.example_batch(256)
        result = export_subnet(evaluator.supernet, static, space, arch, example,
                               directory or job.out / "subnet", cfg.export.formats,
                               cfg.export.atol, task=job.task)
        load = measure_expert_load(static, job.task, evaluator.test_batches)
        if load:  # a subnet with MoE layers: how the test split's tokens spread over experts
            write_expert_load(load, result.directory,
                              f"{cfg.name}: expert load of subnet {arch.key}, test split")
        load_logged = load_metrics(load)
        tracker.log_params({"arch_key": arch.key, "arch": arch.to_json(),
                            **({"budgets": ", ".join(map(str, budgets))} if budgets else {})})
        # The task's metrics, and what its evaluate adds (perplexity, a translation's BLEU)
        # where finite.
        metric_names = [m.name for m in job.task.metrics]
        measures = metric_names + [
            k for k in record if k not in metric_names and f"test_{k}" in record
            and all(isinstance(v, float) and math.isfinite(v)
                    for v in (record[k], record[f"test_{k}"]))]
        tracker.log_metrics({
            **{f"test_{k}": record[f"test_{k}"] for k in measures},
            **{f"val_{k}": record[k] for k in measures},
            "latency_ms": record["latency_ms"], "latency_ms_at_search": searched_ms,
            "latency_ms_measured": record["latency_measured_ms"],
            "flops": record["flops"], "params": record["params"],
            "peak_memory_mb": record["peak_memory_mb"],
            **{f"max_abs_diff_{k}": v for k, v in result.checks.items()},
            **(result.sparsity or {}),
            **load_logged,
        })
        tracker.log_artifacts(result.directory, "subnet")
        if "torchscript" in result.files:
            scripted = torch.jit.load(str(result.directory / result.files["torchscript"]))
            # MLflow's torch flavour takes one array as an input example: models of several
            # inputs (tokens and lengths) are logged without one.
            names = job.task.input_names
            uri = tracker.log_model(scripted, "exported_subnet",
                                    example[names[0]][:1].numpy() if len(names) == 1 else None)
            if register and uri:
                record["model_version"] = tracker.register_model(uri, *register)
        plot = (directory or job.out) / "pareto.png"
        drawn = records or front
        if device is not None:  # that device's latency on the x axis
            def on(rows):
                return [{**r, "latency_ms": r[column(target)], "latency_target": target}
                        for r in rows]

            drawn, front, chosen = on(drawn), on(front), on([chosen])[0]
        plot_pareto(drawn, front, plot,
                    title=f"{cfg.name}: exported subnet"
                    + (f" ({', '.join(map(str, budgets))})" if budgets else ""), chosen=chosen,
                    latency_budget_ms=cfg.search.latency_budget_ms,
                    metric=job.objectives[0].name)
        tracker.log_artifact(plot)
        for b in budgets:  # chosen by its search-time value; measured again here
            now = "latency_ms" if device and b.metric == column(target) else b.metric
            if now in record and float(record[now]) > b.limit:
                say(f"WARNING: {b.metric} {float(record[now]):.4g} measured at export is "
                    f"above the budget {b} ({float(chosen[b.metric]):.4g} at search)")
        primary = job.task.primary.name
        say(f"export: subnet {arch.key} -> {result.directory}  test {primary} "
            f"{record[f'test_{primary}']:.3f}"
            + (f", BLEU {record['test_bleu']:.1f}" if "test_bleu" in record else "")
            + f", {record['latency_measured_ms']:.3f} ms "
            f"measured on {record['latency_target']}"
            + (f" ({record['latency_ms']:.3f} ms by {record['latency_model']})"
               if record["latency_model"] != "measured" else "")
            + f"; formats {', '.join(result.files)} match the "
            f"supernet (max |diff| {max(result.checks.values()):.2g})"
            + (f"; sparsity {result.sparsity['sparsity']:.3f} of its conv/linear weights"
               if result.sparsity else "")
            + (f"; expert load balance {load_logged['expert_load_balance']:.2f} "
               "(1: even)" if load else ""))
    return {**export_metadata(result), "record": record, "chosen": chosen}


def choose(front: list[dict[str, Any]], pick: str | int,
           objectives: Sequence[Objective] = (),
           budgets: Sequence[Constraint] = ()) -> dict[str, Any]:
    """The Pareto point to export: ``"best"`` (the best value of the first objective, ties
    broken by the next ones; without objectives, the fastest) or an index into the front
    ordered by latency. With ``budgets`` (``raynas export --budget``), only the points that
    meet every one are candidates."""
    if not front:
        raise ConfigError("the Pareto front is empty: no evaluated subnet meets the search's "
                          "budgets (search.latency_budget_ms, search.constraints); raise them "
                          "or search longer")
    front = within_budgets(front, budgets)
    if pick == "best":
        objectives = tuple(objectives) or (Objective("latency_ms", "min"),)
        return min(front, key=lambda r: tuple(
            (-1.0 if o.direction == "max" else 1.0) * float(r[o.name]) for o in objectives))
    if isinstance(pick, int) and not isinstance(pick, bool) and 0 <= pick < len(front):
        return front[pick]
    raise ConfigError(f"export.pick = {pick!r}: the Pareto front has {len(front)} points; "
                      f"use 'best' or an index 0..{len(front) - 1} (ordered by latency)")


def within_budgets(front: list[dict[str, Any]],
                   budgets: Sequence[Constraint]) -> list[dict[str, Any]]:
    """The points of ``front`` that meet every budget; an error naming the budget when none
    does."""
    for b in budgets:
        if front and b.metric not in front[0]:
            raise ConfigError(f"budget '{b}': the Pareto front has no {b.metric!r} column")
        meets = [r for r in front if float(r[b.metric]) <= b.limit]
        if front and not meets:
            least = min(float(r[b.metric]) for r in front)
            raise ConfigError(f"budget '{b}': no Pareto point meets it (the front's "
                              f"smallest {b.metric} is {least:g})")
        front = meets
    return front


def checkpoint_from_run(tracker: Tracker, run_id: str, dst: Path) -> Path:
    """The checkpoint a run produced or used: its local path if still there, else the
    ``checkpoint`` artifact of that run (or of the train run it names)."""
    info = tracker.run_info(run_id)
    local = info["tags"].get("raynas.checkpoint")
    if local and Path(local).is_dir():
        return Path(local)
    source = info["tags"].get("raynas.train_run_id", run_id)
    try:
        return tracker.download_artifacts(source, "checkpoint", dst)
    except Exception as exc:
        raise CheckpointError(f"run {run_id}: no checkpoint found ({exc})".splitlines()[0]) \
            from None


def front_from_run(tracker: Tracker, run_id: str, dst: Path) -> list[dict[str, Any]]:
    """The Pareto front a search run logged (its ``pareto.parquet`` artifact)."""
    from raynas.search.results import read_records

    try:
        path = tracker.download_artifacts(run_id, "pareto.parquet", dst)
    except Exception:
        raise ConfigError(f"run {run_id}: has no pareto.parquet artifact; pass the id of a "
                          f"search run") from None
    return read_records(path)
