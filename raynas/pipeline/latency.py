"""Latency datasets: profiling a job's subnets on its latency target (plus an optional
per-op lookup table), and fitting a latency predictor on such a table."""

from __future__ import annotations

import contextlib
import json
import random
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raynas.config import resolve_path
from raynas.errors import ConfigError
from raynas.latency.table import LatencyTable
from raynas.pipeline.progress import say
from raynas.runtime import Request, check_placeable
from raynas.space import SearchSpace
from raynas.tracking import Tracker

if TYPE_CHECKING:
    from raynas.pipeline.job import Job


def profile_latency(job: Job, n: int, out: str | Path | None = None,
                    lut: str | Path | None = None) -> dict[str, Any]:
    """Measure ``n`` distinct subnets on the job's latency target into a Parquet table
    (rows already there for this setting are reused), and optionally build a per-op
    lookup table; tracked as a ``latency-profile`` run."""
    from raynas.latency.measure import MeasuredLatency, count_params
    from raynas.latency.models import build_measured, flops_of
    from raynas.latency.predictor import regression_metrics
    from raynas.supernets import build_static

    cfg, space = job.cfg, job.space
    lat = cfg.latency
    path = Path(out) if out else (resolve_path(cfg, lat.table) if lat.table else
                                  job.out / "latency" / f"{lat.target}.parquet")
    archs = distinct_archs(space, n, cfg.seed)
    table = LatencyTable(path)
    before = len(table)
    meter = MeasuredLatency.from_config(lat)
    flops = flops_of(space)
    t0 = time.perf_counter()
    with job.stage_run("latency-profile", None):
        tracker = job.tracker
        tracker.log_params({"target": lat.target, "batch_size": lat.batch_size,
                            "threads": lat.threads, "n": len(archs),
                            "space": space.name, "resource": lat.resource,
                            "min_run_time_s": lat.min_run_time_s, "windows": lat.windows,
                            "estimator": lat.estimator})
        with job.ray("profile") if lat.resource else contextlib.nullcontext():
            model = build_measured(lat, space, meter, table)
            where = f"on Ray nodes with resource {lat.resource!r}" if lat.resource else "here"
            say(f"latency profile: {len(archs)} subnets of {space.name} on target "
                f"{lat.target!r} ({where}), batch {lat.batch_size}, {lat.threads} "
                f"thread(s) -> {path}")
            values = []
            for i, arch in enumerate(archs):
                ms = model.latency_ms(arch)
                table.add(arch, ms, lat.target, lat.batch_size, lat.threads,
                          flops(arch), count_params(build_static(space, arch)),
                          inputs=model.inputs)
                values.append(ms)
                if (i + 1) % max(1, len(archs) // 10) == 0 or i + 1 == len(archs):
                    say(f"latency profile {i + 1}/{len(archs)} subnets "
                        f"({model.hits} from the table)")
                    if (i + 1) % 50 == 0 or i + 1 == len(archs):
                        table.save()  # nothing lost if interrupted
            table.save()
            metrics = {"subnets": len(archs), "new_rows": len(table) - before,
                       "reused_rows": model.hits, "median_ms": statistics.median(values),
                       "min_ms": min(values), "max_ms": max(values),
                       "profile_wall_s": time.perf_counter() - t0}
            result = {"table": str(path), **metrics}
            if lut:
                say("latency profile: building the per-op lookup table")
                built = _build_lut(space, lat, meter, cfg.ray.address)
                lut_path = built.save(lut)
                pred = [built.latency_ms(space, a) for a in archs]
                check = regression_metrics(pred, values)
                metrics.update({f"lut_{k}": v for k, v in check.items()})
                metrics["lut_ops"] = len(built.ops)
                tracker.log_artifact(lut_path)
                result.update(lut=str(lut_path), lut_ops=len(built.ops), lut_check=check)
                say(f"lookup table: {len(built.ops)} ops -> {lut_path}; on the "
                    f"{len(archs)} profiled subnets: {check['within_10pct']:.0%} within "
                    f"10%, MAPE {check['mape']:.1%}, Kendall tau "
                    f"{check['kendall_tau']:.3f}")
        tracker.log_metrics(metrics)
        tracker.log_artifact(path)
    say(f"latency profile: {len(archs)} subnets, median {metrics['median_ms']:.3f} ms "
        f"[{metrics['min_ms']:.3f}-{metrics['max_ms']:.3f}], {metrics['new_rows']} new rows "
        f"in {metrics['profile_wall_s']:.1f} s -> {path}")
    return result


def distinct_archs(space: SearchSpace, n: int, seed: int) -> list:
    """``n`` distinct seeded random subnets of ``space`` (all of a smaller space)."""
    size = space.size()
    if size is not None and size <= n:
        return list(space.enumerate())
    rng, seen, archs = random.Random(seed), set(), []
    while len(archs) < n:
        a = space.sample(rng)
        if a.key not in seen:
            seen.add(a.key)
            archs.append(a)
    return archs


def noise_path(job: Job, target: str) -> Path:
    """Where ``raynas latency noise`` writes a target's noise floor (a search reads it)."""
    return job.out / "latency" / f"{target}.noise.json"


def latency_noise(job: Job, n: int, repeats: int, device: str | None = None
                  ) -> dict[str, Any]:
    """The noise floor of measured latency on one of the job's devices (``device``: a
    ``latency.targets`` name; None, the job's target): ``n`` distinct seeded subnets, each
    timed ``repeats`` times by the job's timing protocol (one pass over them all, then the
    next), and how far each repeat lands from the subnet's first timing. Written to
    ``<output dir>/latency/<target>.noise.json``, which a search of the job then logs;
    tracked as a ``latency-noise`` run."""
    from raynas.latency.confirm import AGREEMENT
    from raynas.latency.measure import MeasuredLatency
    from raynas.latency.models import build_measured
    from raynas.latency.targets import device_latency

    cfg, space = job.cfg, job.space
    lat = device_latency(cfg.latency, device) or cfg.latency
    archs = distinct_archs(space, n, cfg.seed)
    path = noise_path(job, lat.target)
    times: list[list[float]] = [[] for _ in archs]
    spreads: list[float] = []
    t0 = time.perf_counter()
    with job.stage_run("latency-noise", None):
        settings = {"target": lat.target, "subnets": len(archs), "repeats": repeats,
                    "batch_size": lat.batch_size, "threads": lat.threads,
                    "min_run_time_s": lat.min_run_time_s, "windows": lat.windows,
                    "estimator": lat.estimator, "resource": lat.resource}
        job.tracker.log_params(settings)
        with job.ray("noise") if lat.resource else contextlib.nullcontext():
            model = build_measured(lat, space, MeasuredLatency.from_config(lat))
            say(f"latency noise: {len(archs)} subnets of {space.name} timed {repeats} times "
                f"on target {lat.target!r} ({lat.windows} windows, {lat.estimator}, "
                f"{lat.min_run_time_s:g} s each)")
            for p in range(repeats):
                for i, arch in enumerate(archs):
                    ((ms, spread),) = model.retime([arch])
                    times[i].append(ms)
                    spreads.append(spread)
                say(f"latency noise: pass {p + 1}/{repeats} done")
        deviations = [abs(t[k] / t[0] - 1.0) for t in times for k in range(1, repeats)]
        agree = sum(all(abs(t[k] / t[0] - 1.0) <= AGREEMENT for k in range(1, repeats))
                    for t in times) / len(times)
        q = statistics.quantiles(deviations, n=10) if len(deviations) > 1 else deviations * 9
        metrics = {"agreement": agree, "median_deviation": statistics.median(deviations),
                   "p90_deviation": q[8], "max_deviation": max(deviations),
                   "median_spread": statistics.median(spreads),
                   "median_ms": statistics.median(t[0] for t in times),
                   "noise_wall_s": time.perf_counter() - t0}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**settings, **metrics, "when": time.time(),
                                    "times_ms": times}, indent=1))
        job.tracker.log_metrics(metrics)
        job.tracker.log_artifact(path)
    say(f"latency noise on {lat.target!r}: {agree:.0%} of subnets time again within "
        f"{AGREEMENT:.0%} of their first timing; deviation median "
        f"{metrics['median_deviation']:.1%}, 90th percentile {metrics['p90_deviation']:.1%}, "
        f"largest {metrics['max_deviation']:.1%} -> {path}")
    return {"path": str(path), **settings, **metrics}


def _build_lut(space: SearchSpace, lat, meter, job_address: str | None):
    """Build the lookup table on the target: here, or in a task on a node with its resource."""
    from raynas.latency.lut import LatencyLUT

    if not lat.resource:
        return LatencyLUT.build(space, meter, progress=say)
    import ray

    def build(space_doc):
        return LatencyLUT.build(SearchSpace.from_dict(space_doc), meter).to_dict()

    check_placeable([Request(f"the lookup table's build task (latency.resource = "
                             f"{lat.resource!r}, latency.threads = {lat.threads})",
                             ({lat.resource: 1.0, "CPU": float(lat.threads)},), "PACK",
                             "lower latency.threads, or give that node more CPUs")],
                    job_address)
    task = ray.remote(build).options(resources={lat.resource: 1}, num_cpus=lat.threads)
    doc = ray.get(task.remote(space.to_dict()))
    return LatencyLUT.from_dict(doc)


def fit_latency(table: str | Path, space: SearchSpace, tracker: Tracker, kind: str = "mlp",
                out: str | Path | None = None, target: str | None = None,
                holdout: float = 0.2, seed: int = 0) -> dict[str, Any]:
    """Fit a latency predictor on a measured table; report held-out accuracy; track it."""
    from raynas.latency.models import flops_of
    from raynas.latency.predictor import fit_predictor

    rows = LatencyTable(table).records()
    targets = sorted({r["latency_target"] for r in rows})
    if target is None and len(targets) > 1:
        raise ConfigError(f"table {table} holds several targets ({', '.join(targets)}); "
                          "choose one with --target")
    target = target or (targets[0] if targets else None)
    records = [r for r in rows if r["latency_target"] == target]
    if not records:
        raise ConfigError(f"table {table} has no rows for target {target!r}; it has "
                          f"{', '.join(targets) or 'none'}")
    out = Path(out) if out else Path(table).with_name(f"{Path(table).stem}.{kind}.pt")
    t0 = time.perf_counter()
    with _tracked(tracker, f"latency-fit-{kind}", {"raynas.stage": "latency-fit"}):
        tracker.log_params({"kind": kind, "table": str(table), "target": target,
                            "space": space.name, "space.fingerprint": space.fingerprint,
                            "holdout": holdout, "seed": seed, "rows": len(records)})
        kwargs = {"flops_fn": flops_of(space)} if kind == "flops" else {}
        predictor, metrics = fit_predictor(records, space, kind=kind, holdout=holdout,
                                           seed=seed, **kwargs)
        predictor.save(out)
        metrics = {**metrics, "fit_wall_s": time.perf_counter() - t0}
        tracker.log_metrics({k: float(v) for k, v in metrics.items()})
        tracker.log_artifact(out)
    say(f"latency fit ({kind}) on {metrics['n_train']} subnets, held-out "
        f"{metrics['n_test']}: {metrics['within_10pct']:.1%} within 10%, MAPE "
        f"{metrics['mape']:.1%}, RMSE {metrics['rmse_ms']:.4f} ms, Kendall tau "
        f"{metrics['kendall_tau']:.3f} -> {out}")
    return {"predictor": str(out), "target": target, **metrics}


@contextlib.contextmanager
def _tracked(tracker: Tracker, name: str, tags: dict[str, str]) -> Iterator[None]:
    tracker.start_run(name, tags=tags)
    try:
        yield
    except BaseException:
        tracker.end_run("FAILED")
        raise
    tracker.end_run("FINISHED")
