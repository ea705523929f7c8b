"""The search stage: subnets of the trained supernet searched through Ray Tune and a pool
of evaluator actors; every evaluation kept in ``evaluations.parquet`` (a part appended per
batch while the search runs, one file when it ends) and MLflow."""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raynas.checkpoint import load_checkpoint
from raynas.config import resolve_path
from raynas.latency.confirm import AGREEMENT
from raynas.latency.drift import DriftMonitor
from raynas.latency.table import LatencyTable
from raynas.pipeline.latency import noise_path
from raynas.pipeline.progress import say
from raynas.runtime import kill_point
from raynas.search.pareto import default_reference, hypervolume, pareto_front
from raynas.tracking import Tracker

if TYPE_CHECKING:
    from raynas.pipeline.job import Job


@dataclass
class SearchSummary:
    """What a search produced: every evaluated record, the Pareto front (and its Parquet
    file) and the search run's id."""

    records: list[dict[str, Any]]
    front: list[dict[str, Any]]
    pareto_path: Path
    run_id: str | None


def finished_search(job: Job, run_id: str | None) -> SearchSummary:
    """The summary of a search that finished before (``--resume``), read from its files."""
    from raynas.search.results import read_records

    return SearchSummary(read_records(job.out / "evaluations.parquet"),
                         read_records(job.out / "pareto.parquet"),
                         job.out / "pareto.parquet", run_id)


def search_stage(job: Job, checkpoint: str | Path, parent_id: str | None = None,
                 train_run_id: str | None = None,
                 resume: dict[str, Any] | None = None) -> SearchSummary:
    """Search the trained supernet's subnets through Ray Tune and the evaluator actor.

    ``resume``: the job state of an interrupted search: its Tune experiment is restored
    (trials and searcher state), and the subnets it had evaluated are not evaluated
    again nor logged twice.
    """
    from raynas.evaluation.actor import create_evaluator_pool, pool_size, stop_evaluator_actor
    from raynas.latency.remote import meter_actor, stop_meter
    from raynas.runtime import is_embedded
    from raynas.search.plot import plot_pareto
    from raynas.search.registry import create_searcher
    from raynas.search.report import write_report
    from raynas.search.results import append_records, parts_dir, read_records, write_records
    from raynas.search.tune_driver import can_resume, run_search

    cfg, space, tracker = job.cfg, job.space, job.tracker
    s = cfg.search
    # A wrong checkpoint (space or weight scheme) fails here, clearly.
    load_checkpoint(checkpoint, expected=space, weights=cfg.weights.model_dump())
    resume = resume or {}
    with job.stage_run("search", parent_id, resume.get("run_id")) as run_id:
        if parent_id is None:
            job.log_config()
        tune_name = resume.get("tune_name") or f"search-{run_id or uuid.uuid4().hex}"[:15]
        table = job.out / "evaluations.parquet"
        prior = read_records(table) if resume and (table.is_file() or parts_dir(
            table).is_dir()) else []
        if prior:  # one file again: this run's batches append after its rows
            write_records(table, prior, space)
        restore = bool(resume) and can_resume(cfg.storage_path, tune_name)
        if resume:
            say(f"search: resuming with {len(prior)} subnets evaluated before"
                + ("" if restore else " (no Tune experiment saved yet: starting a new "
                   "one that knows them)"))
        if resume and not restore:
            tune_name = f"search-{uuid.uuid4().hex}"[:15]
        job.save_state("search", run_id=run_id, tune_name=tune_name, status="running")
        tracker.set_tags({"raynas.checkpoint": str(Path(checkpoint).resolve()),
                          **({"raynas.train_run_id": train_run_id} if train_run_id else {})})
        with job.ray("search"):
            n = pool_size(cfg)
            meter = None
            if cfg.latency.resource or n > 1:
                # The job's one meter for its target, owned (and its handle held) here so
                # that it outlives any evaluator; a missing target node fails here, clearly.
                meter = meter_actor(space, cfg.latency)
            # On the embedded Ray the evaluators load while Tune starts; on a cluster the
            # driver waits for them first, saying so while they are being placed.
            pool, ready = create_evaluator_pool(cfg, checkpoint, space, n, known=prior,
                                                objectives=job.objectives,
                                                constraints=job.constraints,
                                                wait=not is_embedded(cfg.ray.address))
            searcher = create_searcher(
                s.searcher, space=space, objectives=job.objectives,
                constraints=job.constraints, seed=cfg.seed,
                **{"population_size": s.population_size, **s.options})
            concurrent = s.max_concurrent_trials or 2 * n
            say(f"search: {s.searcher}, {s.budget} subnets, {s.subnets_per_trial} per "
                f"Tune trial, {n} evaluator{'s' if n > 1 else ''}, {concurrent} trials at "
                f"once" + (f", budgets {', '.join(map(str, job.constraints))}"
                                 if job.constraints else ""))
            # One MLflow series per objective, plus latency (the front's other axis).
            logged = list(dict.fromkeys([o.name for o in job.objectives] + ["latency_ms"]))
            lat = cfg.latency
            drift = DriftMonitor(lat.drift_bound, lat.drift_window)
            so_far: list[dict[str, Any]] = list(prior)

            def row_of(r: dict[str, Any]) -> dict[str, float]:
                row = {f"subnet_{k}": r[k] for k in logged}
                if "latency_measured_ms" in r and r["latency_model"] != "measured":
                    row["subnet_latency_measured_ms"] = r["latency_measured_ms"]
                return row

            # A record's MLflow step is its row in evaluations.parquet, the durable record:
            # a resumed search logs the steps the lost driver had written but not logged.
            if prior:
                lost = log_missing(tracker, [(i, row_of(r)) for i, r in enumerate(prior)])
                if lost:
                    say(f"search: logged {lost} subnet metric values to MLflow that the "
                        "interrupted run had written to evaluations.parquet only")

            def log_records(batch: list[dict[str, Any]]) -> None:
                start = len(so_far)
                so_far.extend(batch)  # the table grows as results arrive, a part a batch
                append_records(table, batch, space, start)
                kill_point("search.records_written")  # tests: lose the driver right here
                tracker.log_metric_rows([(start + i, row_of(r)) for i, r in enumerate(batch)])
                n = len(so_far) - 1
                warning = drift.update(batch)
                if drift.mean_error is not None and any(
                        "latency_measured_ms" in r for r in batch):
                    tracker.log_metrics({"latency_drift_error": drift.mean_error}, step=n)
                if warning:
                    say(f"WARNING: {warning}")
                    tracker.set_tags({"raynas.latency_drift": "warning"})

            try:
                outcome = run_search(
                    searcher, pool, budget=s.budget, subnets_per_trial=s.subnets_per_trial,
                    max_concurrent_trials=concurrent, storage_path=cfg.storage_path,
                    objectives=job.objectives, constraints=job.constraints,
                    on_records=log_records, name=tune_name, resume=restore, prior=prior)
            except RuntimeError:
                import ray

                ray.get(ready)  # an evaluator that could not load says why, first
                raise
            records, front, confirmed = outcome.records, outcome.front, {}
            if lat.model == "measured" and lat.confirm and records:
                records, front, confirmed = _confirm(job, records, pool[0])
            for handle in pool:
                stop_evaluator_actor(handle)
            if meter is not None:
                stop_meter(space, cfg.latency)
        save_measured(job, records)
        write_records(job.out / "evaluations.parquet", records, space)
        pareto_path = write_records(job.out / "pareto.parquet", front, space)
        plot_pareto(records, front, job.out / "pareto.png",
                    title=f"{cfg.name}: {space.name} ({s.searcher})",
                    latency_budget_ms=s.latency_budget_ms, metric=job.objectives[0].name)
        devices = _device_fronts(job, records) if cfg.latency.targets else None
        reference = default_reference(job.objectives, records, job.constraints)
        unique = len({r["arch_key"] for r in records})
        metrics = {
            "evaluated": len(records), "unique_subnets": unique, "front_size": len(front),
            "hypervolume": hypervolume(records, job.objectives, reference, job.constraints),
            "search_wall_s": outcome.wall_s, "evaluators": n,
            "subnets_per_s": len(records) / max(outcome.wall_s, 1e-9),
        }
        metrics["eval_s"] = sum(float(r.get("eval_s") or 0.0) for r in records)
        halved = ""
        if s.evaluator.halving is not None and records:
            stopped = sum(1 for r in records if r.get("fidelity", 1.0) < 1)
            metrics["halving_stopped"] = stopped
            metrics["validation_share"] = sum(r.get("fidelity", 1.0) for r in records) / len(
                records)
            halved = (f", {stopped} stopped early by halving (validation share "
                      f"{metrics['validation_share']:.2f})")
        metrics.update(confirmed)
        noise = noise_path(job, cfg.latency.target)
        if noise.is_file():  # the target's noise floor, from `raynas latency noise`
            floor = json.loads(noise.read_text())
            metrics.update({f"latency_noise_{k}": floor[k]
                            for k in ("agreement", "median_deviation", "p90_deviation")})
        if drift.checks:
            metrics["latency_drift_checks"] = drift.checks
            metrics["latency_drift_warnings"] = drift.warnings
        if front:
            first = job.objectives[0]
            pick = max if first.direction == "max" else min
            metrics[f"best_{first.name}"] = pick(r[first.name] for r in front)
            metrics["front_latency_span"] = front[-1]["latency_ms"] / front[0]["latency_ms"]
        tracker.log_metrics(metrics)
        tracker.log_params({"hypervolume.reference": reference})
        summary = {**metrics, "hypervolume_reference": reference,
                   "objectives": [[o.name, o.direction] for o in job.objectives],
                   "latency_budget_ms": s.latency_budget_ms,
                   "constraints": [str(c) for c in job.constraints], "searcher": s.searcher,
                   **({"devices": devices} if devices else {})}
        (job.out / "search.json").write_text(json.dumps(summary, indent=2))
        write_report(job.out / "report.html", title=f"{cfg.name}: {space.name} ({s.searcher})",
                     space=space, records=records, front=front, objectives=job.objectives,
                     reference=reference, constraints=job.constraints, metrics=metrics,
                     images=[job.out / "pareto.png"]
                     + ([job.out / "pareto_devices.png"] if devices else []))
        for name in ("evaluations.parquet", "pareto.parquet", "pareto.png", "search.json",
                     "report.html"):
            tracker.log_artifact(job.out / name)
        for name in (devices or {}):
            tracker.log_artifact(job.out / f"pareto_{name}.parquet", "devices")
        if devices:
            tracker.log_artifact(job.out / "pareto_devices.png")
        job.save_state("search", status="finished")
        say(f"search: {len(records)} subnets ({unique} unique) in {outcome.wall_s:.1f} s"
            f"{halved}, Pareto front {len(front)} points -> {pareto_path}")
    return SearchSummary(records, front, pareto_path, run_id)


def _confirm(job: Job, records: list[dict[str, Any]], evaluator
             ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, float]]:
    """The confirmation pass (``raynas.latency.confirm``) through the evaluator actor: the
    records with the candidates re-timed, the front over them, and the pass's figures."""
    import ray

    from raynas.latency.confirm import confirm

    lat = job.cfg.latency
    records, figures = confirm(records, job.objectives, job.constraints, lat.confirm_margin,
                               lambda archs: ray.get(evaluator.retime.remote(archs)))
    front = pareto_front(records, job.objectives, job.constraints)
    if figures["latency_confirmed"]:
        say(f"latency: re-timed {figures['latency_confirmed']:.0f} front candidates "
            f"(latency.confirm_margin {lat.confirm_margin:g}): "
            f"{figures['latency_confirm_agreement']:.0%} within "
            f"{AGREEMENT:.0%} of their first timing, {figures['latency_confirm_lowered']:.0f} "
            f"lower by more; front {len(front)} points")
    return records, front, figures


def _device_fronts(job: Job, records: list[dict[str, Any]]) -> dict[str, Any]:
    """``latency.targets``: one front per device, written as ``pareto_<device>.parquet`` and
    drawn side by side in ``pareto_devices.png``; returns their summary for search.json."""
    from raynas.latency import targets
    from raynas.search.results import write_records

    fronts = targets.device_fronts(records, job.objectives, job.constraints, job.cfg.latency)
    for name, front in fronts.items():
        write_records(job.out / f"pareto_{name}.parquet", front, job.space)
    targets.plot_device_fronts(records, fronts, job.objectives[0].name,
                               job.out / "pareto_devices.png",
                               f"{job.cfg.name}: Pareto front per device")
    out = targets.summary(fronts)
    say("devices: " + "; ".join(f"{n} front {d['front_size']} points, {d['on_first_front']} "
                                f"on {next(iter(fronts))}'s" for n, d in out.items()))
    return out


def log_missing(tracker: Tracker, rows: list[tuple[int, dict[str, float]]]) -> int:
    """Log the values of ``(step, {metric: value})`` rows that the tracker's run does not
    have at that step yet; return how many. Safe to repeat: nothing is logged twice."""
    have = {k: tracker.metric_steps(k) for k in {k for _, row in rows for k in row}}
    missing = [(step, {k: v for k, v in row.items() if step not in have[k]
                       and v is not None and math.isfinite(v)}) for step, row in rows]
    missing = [(step, row) for step, row in missing if row]
    tracker.log_metric_rows(missing)
    return sum(len(row) for _, row in missing)


def save_measured(job: Job, records: list[dict[str, Any]]) -> None:
    """Append what the search measured to ``latency.table`` (the driver owns the file)."""
    lat = job.cfg.latency
    if not lat.table:
        return
    table = LatencyTable(resolve_path(job.cfg, lat.table))
    from raynas.latency.models import input_key

    inputs = input_key(job.space, lat.batch_size)
    before = len(table)
    for r in records:
        ms = (r["latency_ms"] if r.get("latency_model") == "measured"
              else r.get("latency_measured_ms"))
        if ms is not None:
            table.add(job.space.validate(r["arch"]), ms, lat.target, lat.batch_size,
                      lat.threads, r.get("flops"), r.get("params"), inputs=inputs)
    table.save()
    say(f"latency table {table.path}: {len(table) - before} new rows, {len(table)} in all")
