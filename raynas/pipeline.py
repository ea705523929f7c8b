"""A raynas job: train -> search -> export, each stage an MLflow run.

``Job.run()`` nests the three stage runs under one parent run. Each stage also runs alone
(``raynas train|search|export``), taking the previous stage's checkpoint or run id.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from raynas.checkpoint import load_checkpoint
from raynas.config import JobConfig, resolve_path
from raynas.errors import CheckpointError, ConfigError
from raynas.latency.drift import DriftMonitor
from raynas.latency.table import LatencyTable
from raynas.runtime import ray_session
from raynas.search.pareto import default_reference, hypervolume
from raynas.search.searchers import DEFAULT_OBJECTIVES, Constraint
from raynas.space import SearchSpace
from raynas.space.registry import load_space
from raynas.supernets import get_family
from raynas.tracking import MlflowTracker, Tracker, flatten

STATE_FILE = "job-state.json"


def say(message: str) -> None:
    print(f"[raynas] {message}", flush=True)


@dataclass
class SearchSummary:
    records: list[dict[str, Any]]
    front: list[dict[str, Any]]
    pareto_path: Path
    run_id: str | None


class Job:
    """One job config bound to its space, output folder and tracker."""

    def __init__(self, cfg: JobConfig, tracker: Tracker | None = None):
        self.cfg = cfg
        self.space: SearchSpace = load_space(cfg.space, base=Path(cfg.base_dir))
        get_family(self.space.family)  # unknown family: clear error before any work
        if cfg.data.path and not resolve_path(cfg, cfg.data.path).is_file():
            raise ConfigError(f"data.path = {cfg.data.path!r}: file does not exist")
        self.out = cfg.out_dir
        self._tracker = tracker
        self.objectives = (DEFAULT_OBJECTIVES if cfg.search.latency_objective
                           else DEFAULT_OBJECTIVES[:1])
        budget = cfg.search.latency_budget_ms
        self.constraints = (Constraint("latency_ms", budget),) if budget else ()

    def _ray(self):
        r = self.cfg.ray
        return ray_session(r.address, r.num_cpus, r.resources)

    @property
    def tracker(self) -> Tracker:
        """The job's tracker, opened on first use (bad input fails before a store is made)."""
        if self._tracker is None:
            self._tracker = MlflowTracker(self.cfg.tracking_uri, self.cfg.experiment_name)
        return self._tracker

    # ---- runs ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _run(self, name: str, parent_id: str | None,
             resume_id: str | None = None) -> Iterator[str | None]:
        if resume_id:
            run_id = self.tracker.resume_run(resume_id)
        else:
            run_id = self.tracker.start_run(
                name, parent_id=parent_id,
                tags={"raynas.stage": name, "raynas.job": self.cfg.name,
                      "raynas.space": self.space.name, "raynas.output_dir": str(self.out)})
        try:
            yield run_id
        except KeyboardInterrupt:
            self.tracker.end_run("KILLED")
            raise
        except BaseException:
            self.tracker.end_run("FAILED")
            raise
        self.tracker.end_run("FINISHED")

    def _log_config(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / "config.yaml"
        path.write_text(yaml.safe_dump(self.cfg.resolved(), sort_keys=False))
        self.tracker.log_params(flatten(self.cfg.resolved()))
        self.tracker.log_params({"space.fingerprint": self.space.fingerprint,
                                 "space.size": self.space.size()})
        self.tracker.log_artifact(path)

    # ---- job state: what `raynas run --resume` continues ---------------------------------
    @property
    def state_path(self) -> Path:
        return self.out / STATE_FILE

    def load_state(self) -> dict[str, Any]:
        """The state of the interrupted job in this output directory (for ``--resume``)."""
        if not self.state_path.is_file():
            raise ConfigError(f"--resume: {self.state_path} does not exist, so there is no "
                              f"job to resume in {self.out}; run without --resume (or pass "
                              "the --output-dir of the interrupted job)")
        state = json.loads(self.state_path.read_text())
        now = json.loads(json.dumps(self.cfg.resolved(), default=str))
        before, now = flatten(state.get("config", {})), flatten(now)
        changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
        if changed:
            raise ConfigError(
                "--resume: the job differs from the interrupted one in " + ", ".join(
                    f"{k} ({before.get(k)!r} -> {now.get(k)!r})" for k in changed[:5])
                + "; resume with the same job file and overrides")
        return state

    def _save_state(self, stage: str | None = None, **values: Any) -> None:
        state = (json.loads(self.state_path.read_text()) if self.state_path.is_file()
                 else {"config": self.cfg.resolved()})
        if stage:
            state[stage] = {**state.get(stage, {}), **values}
        else:
            state.update(values)
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2, default=str))
        tmp.replace(self.state_path)

    def run(self, resume: bool = False) -> dict[str, Any]:
        """Train, search and export under one parent run; return a summary.

        ``resume``: continue the job interrupted in this output directory: a finished
        training is reused, an interrupted one continues from its latest checkpoint, an
        interrupted search continues its Tune experiment, all in the same MLflow runs.
        """
        t0 = time.perf_counter()
        state = self.load_state() if resume else {}
        if not resume and self.state_path.is_file():
            self.state_path.unlink()  # a fresh job in this directory
        with self._run(self.cfg.name, None, state.get("parent_run_id")) as parent:
            if resume:
                say(f"resuming job {self.cfg.name!r} in {self.out} (MLflow run {parent})")
            else:
                self._save_state(parent_run_id=parent)
                self._log_config()
            train, search = state.get("train", {}), state.get("search", {})
            with self._ray():
                if train.get("status") == "finished" and Path(train["checkpoint"]).is_dir():
                    checkpoint, train_id = Path(train["checkpoint"]), train["run_id"]
                    say(f"train: finished before, reusing {checkpoint}")
                else:
                    checkpoint, train_id = self.train(parent, resume=train or None)
                if search.get("status") == "finished":
                    summary = self._finished_search(search["run_id"])
                    say(f"search: finished before, {len(summary.records)} subnets")
                else:
                    summary = self.search(checkpoint, parent, train_run_id=train_id,
                                          resume=search or None)
            exported = self.export(checkpoint, summary.front, parent,
                                   records=summary.records)
            self.tracker.log_metrics({"job_wall_s": time.perf_counter() - t0})
        self._save_state(status="finished")
        return {"parent_run_id": parent, "checkpoint": checkpoint, "front": summary.front,
                "export": exported, "wall_s": time.perf_counter() - t0}

    def _finished_search(self, run_id: str | None) -> SearchSummary:
        from raynas.search.results import read_records

        return SearchSummary(read_records(self.out / "evaluations.parquet"),
                             read_records(self.out / "pareto.parquet"),
                             self.out / "pareto.parquet", run_id)

    # ---- stages ----------------------------------------------------------------------------
    def train(self, parent_id: str | None = None,
              resume: dict[str, Any] | None = None) -> tuple[Path, str | None]:
        """Train the supernet; return the stable checkpoint directory and the run id.

        ``resume``: the job state of an interrupted training (its run and Ray Train run
        name): Ray Train continues it from its latest checkpoint.
        """
        from raynas.training.trainer import train_supernet

        resume = resume or {}
        with self._run("train", parent_id, resume.get("run_id")) as run_id:
            if parent_id is None:
                self._log_config()
            ray_name = resume.get("ray_name") or f"train-{run_id or uuid.uuid4().hex}"[:14]
            self._save_state("train", run_id=run_id, ray_name=ray_name, status="running")
            t = self.cfg.train
            if t.resume_from:  # a wrong checkpoint fails here, not inside a Ray worker
                load_checkpoint(resolve_path(self.cfg, t.resume_from), expected=self.space)
            say(f"train: supernet for space {self.space.name!r} ({self.space.size():,} "
                f"subnets), {t.epochs} epochs on {t.num_workers} Ray Train workers")
            tracking = ({"uri": self.tracker.uri, "run_id": run_id}
                        if isinstance(self.tracker, MlflowTracker) else None)
            t0 = time.perf_counter()
            with self._ray():
                result = train_supernet(self.cfg, self.space, tracking, name=ray_name)
            checkpoint = self.out / "checkpoint"
            if checkpoint.exists():
                shutil.rmtree(checkpoint)
            result.copy_to(checkpoint)
            self.tracker.log_artifacts(checkpoint, "checkpoint")
            self.tracker.set_tags({"raynas.checkpoint": str(checkpoint)})
            self.tracker.log_metrics({"train_wall_s": time.perf_counter() - t0})
            self._save_state("train", status="finished", checkpoint=str(checkpoint))
            say(f"train: done, checkpoint {checkpoint}")
        return checkpoint, run_id

    def search(self, checkpoint: str | Path, parent_id: str | None = None,
               train_run_id: str | None = None,
               resume: dict[str, Any] | None = None) -> SearchSummary:
        """Search the trained supernet's subnets through Ray Tune and the evaluator actor.

        ``resume``: the job state of an interrupted search: its Tune experiment is restored
        (trials and searcher state), and the subnets it had evaluated are not evaluated
        again nor logged twice.
        """

        from raynas.evaluation.actor import create_evaluator_actor, stop_evaluator_actor
        from raynas.search.plot import plot_pareto
        from raynas.search.registry import create_searcher
        from raynas.search.results import read_records, write_records
        from raynas.search.tune_driver import can_resume, run_search

        s = self.cfg.search
        load_checkpoint(checkpoint, expected=self.space)  # a wrong checkpoint fails here, clearly
        resume = resume or {}
        with self._run("search", parent_id, resume.get("run_id")) as run_id:
            if parent_id is None:
                self._log_config()
            tune_name = resume.get("tune_name") or f"search-{run_id or uuid.uuid4().hex}"[:15]
            table = self.out / "evaluations.parquet"
            prior = read_records(table) if resume and table.is_file() else []
            restore = bool(resume) and can_resume(self.cfg.storage_path, tune_name)
            if resume:
                say(f"search: resuming with {len(prior)} subnets evaluated before"
                    + ("" if restore else " (no Tune experiment saved yet: starting a new "
                       "one that knows them)"))
            if resume and not restore:
                tune_name = f"search-{uuid.uuid4().hex}"[:15]
            self._save_state("search", run_id=run_id, tune_name=tune_name, status="running")
            self.tracker.set_tags({"raynas.checkpoint": str(Path(checkpoint).resolve()),
                                   **({"raynas.train_run_id": train_run_id}
                                      if train_run_id else {})})
            with self._ray():
                if self.cfg.latency.resource:  # a missing target node fails here, clearly
                    from raynas.latency.remote import meter_actor

                    meter_actor(self.space, self.cfg.latency)
                evaluator = create_evaluator_actor(self.cfg, checkpoint, self.space,
                                                   known=prior)
                searcher = create_searcher(
                    s.searcher, space=self.space, objectives=self.objectives,
                    constraints=self.constraints, seed=self.cfg.seed,
                    **{"population_size": s.population_size, **s.options})
                say(f"search: {s.searcher}, {s.budget} subnets, {s.subnets_per_trial} per "
                    f"Tune trial" + (f", latency budget {s.latency_budget_ms} ms"
                                     if s.latency_budget_ms else ""))
                step = iter(range(len(prior), 10**9))
                lat = self.cfg.latency
                drift = DriftMonitor(lat.drift_bound, lat.drift_window)
                so_far: list[dict[str, Any]] = list(prior)

                def log_records(batch: list[dict[str, Any]]) -> None:
                    so_far.extend(batch)  # the table grows as results arrive
                    write_records(self.out / "evaluations.parquet", so_far, self.space)
                    for r in batch:
                        n = next(step)
                        row = {"subnet_accuracy": r["accuracy"],
                               "subnet_latency_ms": r["latency_ms"]}
                        if "latency_measured_ms" in r and r["latency_model"] != "measured":
                            row["subnet_latency_measured_ms"] = r["latency_measured_ms"]
                        self.tracker.log_metrics(row, step=n)
                    warning = drift.update(batch)
                    if drift.mean_error is not None and any(
                            "latency_measured_ms" in r for r in batch):
                        self.tracker.log_metrics({"latency_drift_error": drift.mean_error},
                                                 step=n)
                    if warning:
                        say(f"WARNING: {warning}")
                        self.tracker.set_tags({"raynas.latency_drift": "warning"})

                outcome = run_search(
                    searcher, evaluator, budget=s.budget,
                    subnets_per_trial=s.subnets_per_trial,
                    max_concurrent_trials=s.max_concurrent_trials,
                    storage_path=self.cfg.storage_path, objectives=self.objectives,
                    constraints=self.constraints, on_records=log_records, name=tune_name,
                    resume=restore, prior=prior)
                stop_evaluator_actor(evaluator)
            records, front = outcome.records, outcome.front
            self._save_measured(records)
            write_records(self.out / "evaluations.parquet", records, self.space)
            pareto_path = write_records(self.out / "pareto.parquet", front, self.space)
            plot_pareto(records, front, self.out / "pareto.png",
                        title=f"{self.cfg.name}: {self.space.name} ({s.searcher})",
                        latency_budget_ms=s.latency_budget_ms)
            reference = default_reference(self.objectives, records)
            unique = len({r["arch_key"] for r in records})
            metrics = {
                "evaluated": len(records), "unique_subnets": unique, "front_size": len(front),
                "hypervolume": hypervolume(records, self.objectives, reference,
                                           self.constraints),
                "search_wall_s": outcome.wall_s,
                "subnets_per_s": len(records) / max(outcome.wall_s, 1e-9),
            }
            if drift.checks:
                metrics["latency_drift_checks"] = drift.checks
                metrics["latency_drift_warnings"] = drift.warnings
            if front:
                metrics["best_accuracy"] = max(r["accuracy"] for r in front)
                metrics["front_latency_span"] = (front[-1]["latency_ms"]
                                                 / front[0]["latency_ms"])
            self.tracker.log_metrics(metrics)
            self.tracker.log_params({"hypervolume.reference": reference})
            summary = {**metrics, "hypervolume_reference": reference,
                       "objectives": [[o.name, o.direction] for o in self.objectives],
                       "latency_budget_ms": s.latency_budget_ms, "searcher": s.searcher}
            (self.out / "search.json").write_text(json.dumps(summary, indent=2))
            for name in ("evaluations.parquet", "pareto.parquet", "pareto.png", "search.json"):
                self.tracker.log_artifact(self.out / name)
            self._save_state("search", status="finished")
            say(f"search: {len(records)} subnets ({unique} unique) in {outcome.wall_s:.1f} s, "
                f"Pareto front {len(front)} points -> {pareto_path}")
        return SearchSummary(records, front, pareto_path, run_id)

    def profile_latency(self, n: int, out: str | Path | None = None,
                        lut: str | Path | None = None) -> dict[str, Any]:
        """Measure ``n`` distinct subnets on the job's latency target into a Parquet table
        (rows already there for this setting are reused), and optionally build a per-op
        lookup table; tracked as a ``latency-profile`` run."""
        import random as _random
        import statistics

        from raynas.latency.measure import MeasuredLatency, count_params
        from raynas.latency.models import build_measured, flops_of
        from raynas.latency.predictor import regression_metrics
        from raynas.supernets import build_static

        lat = self.cfg.latency
        path = Path(out) if out else (resolve_path(self.cfg, lat.table) if lat.table else
                                      self.out / "latency" / f"{lat.target}.parquet")
        size = self.space.size()
        if size is not None and size <= n:
            archs = list(self.space.enumerate())
        else:
            rng, seen, archs = _random.Random(self.cfg.seed), set(), []
            while len(archs) < n:
                a = self.space.sample(rng)
                if a.key not in seen:
                    seen.add(a.key)
                    archs.append(a)
        table = LatencyTable(path)
        before = len(table)
        meter = MeasuredLatency(lat.target, lat.batch_size, lat.threads, lat.min_run_time_s)
        flops = flops_of(self.space)
        t0 = time.perf_counter()
        with self._run("latency-profile", None):
            self.tracker.log_params({"target": lat.target, "batch_size": lat.batch_size,
                                     "threads": lat.threads, "n": len(archs),
                                     "space": self.space.name, "resource": lat.resource,
                                     "min_run_time_s": lat.min_run_time_s})
            with (self._ray()
                  if lat.resource else contextlib.nullcontext()):
                model = build_measured(lat, self.space, meter, table)
                where = f"on Ray nodes with resource {lat.resource!r}" if lat.resource \
                    else "here"
                say(f"latency profile: {len(archs)} subnets of {self.space.name} on target "
                    f"{lat.target!r} ({where}), batch {lat.batch_size}, {lat.threads} "
                    f"thread(s) -> {path}")
                values = []
                for i, arch in enumerate(archs):
                    ms = model.latency_ms(arch)
                    table.add(arch, ms, lat.target, lat.batch_size, lat.threads,
                              flops(arch), count_params(build_static(self.space, arch)))
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
                    built = _build_lut(self.space, lat, meter)
                    lut_path = built.save(lut)
                    pred = [built.latency_ms(self.space, a) for a in archs]
                    check = regression_metrics(pred, values)
                    metrics.update({f"lut_{k}": v for k, v in check.items()})
                    metrics["lut_ops"] = len(built.ops)
                    self.tracker.log_artifact(lut_path)
                    result.update(lut=str(lut_path), lut_ops=len(built.ops), lut_check=check)
                    say(f"lookup table: {len(built.ops)} ops -> {lut_path}; on the "
                        f"{len(archs)} profiled subnets: {check['within_10pct']:.0%} within "
                        f"10%, MAPE {check['mape']:.1%}, Kendall tau "
                        f"{check['kendall_tau']:.3f}")
            self.tracker.log_metrics(metrics)
            self.tracker.log_artifact(path)
        say(f"latency profile: {len(archs)} subnets, median {metrics['median_ms']:.3f} ms "
            f"[{metrics['min_ms']:.3f}-{metrics['max_ms']:.3f}], {metrics['new_rows']} new rows "
            f"in {metrics['profile_wall_s']:.1f} s -> {path}")
        return result

    def _save_measured(self, records: list[dict[str, Any]]) -> None:
        """Append what the search measured to ``latency.table`` (the driver owns the file)."""
        lat = self.cfg.latency
        if not lat.table:
            return
        table = LatencyTable(resolve_path(self.cfg, lat.table))
        before = len(table)
        for r in records:
            ms = (r["latency_ms"] if r.get("latency_model") == "measured"
                  else r.get("latency_measured_ms"))
            if ms is not None:
                table.add(self.space.validate(r["arch"]), ms, lat.target, lat.batch_size,
                          lat.threads, r.get("flops"), r.get("params"))
        table.save()
        say(f"latency table {table.path}: {len(table) - before} new rows, {len(table)} in all")

    def export(self, checkpoint: str | Path, front: list[dict[str, Any]],
               parent_id: str | None = None, pick: str | int | None = None,
               records: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Export the chosen Pareto point as a static model; check it against the supernet.

        ``records`` (every evaluated subnet, when at hand) keeps them in the replotted
        ``pareto.png``, which adds a star at the exported point.
        """
        import torch

        from raynas.evaluation.actor import evaluator_args
        from raynas.evaluation.evaluator import Evaluator
        from raynas.export.serialize import export_metadata, export_subnet
        from raynas.search.plot import plot_pareto

        chosen = choose(front, self.cfg.export.pick if pick is None else pick)
        arch = self.space.validate(chosen["arch"])
        with self._run("export", parent_id):
            if parent_id is None:
                self._log_config()
            # Re-measured on the target (in the meter actor there, with latency.resource).
            with (self._ray()
                  if self.cfg.latency.resource else contextlib.nullcontext()):
                evaluator = Evaluator(**evaluator_args(self.cfg, checkpoint, self.space))
                static = evaluator.prepare(arch)
                record = evaluator.score(arch, static, measure=True)
            result = export_subnet(evaluator.supernet, static, self.space, arch,
                                   evaluator.splits.x_test[:256], self.out / "subnet",
                                   self.cfg.export.formats, self.cfg.export.atol)
            self.tracker.log_params({"arch_key": arch.key, "arch": arch.to_json()})
            self.tracker.log_metrics({
                "test_accuracy": record["test_accuracy"], "val_accuracy": record["accuracy"],
                "latency_ms": record["latency_ms"], "latency_ms_at_search": chosen["latency_ms"],
                "latency_ms_measured": record["latency_measured_ms"],
                "flops": record["flops"], "params": record["params"],
                **{f"max_abs_diff_{k}": v for k, v in result.checks.items()},
            })
            self.tracker.log_artifacts(result.directory, "subnet")
            if "torchscript" in result.files:
                scripted = torch.jit.load(str(result.directory / result.files["torchscript"]))
                self.tracker.log_model(scripted, "exported_subnet",
                                       evaluator.splits.x_test[:1].numpy())
            plot_pareto(records or front, front, self.out / "pareto.png",
                        title=f"{self.cfg.name}: exported subnet", chosen=chosen,
                        latency_budget_ms=self.cfg.search.latency_budget_ms)
            self.tracker.log_artifact(self.out / "pareto.png")
            say(f"export: subnet {arch.key} -> {result.directory}  test accuracy "
                f"{record['test_accuracy']:.3f}, {record['latency_measured_ms']:.3f} ms "
                f"measured on {record['latency_target']}"
                + (f" ({record['latency_ms']:.3f} ms by {record['latency_model']})"
                   if record["latency_model"] != "measured" else "")
                + f"; formats {', '.join(result.files)} match the "
                f"supernet (max |diff| {max(result.checks.values()):.2g})")
        return {**export_metadata(result), "record": record}


def choose(front: list[dict[str, Any]], pick: str | int) -> dict[str, Any]:
    """The Pareto point to export: ``"best"`` (highest accuracy, then lowest latency) or an
    index into the front ordered by latency."""
    if not front:
        raise ConfigError("the Pareto front is empty: no evaluated subnet meets the latency "
                          "budget (search.latency_budget_ms); raise it or search longer")
    if pick == "best":
        return max(front, key=lambda r: (r["accuracy"], -r["latency_ms"]))
    if isinstance(pick, int) and not isinstance(pick, bool) and 0 <= pick < len(front):
        return front[pick]
    raise ConfigError(f"export.pick = {pick!r}: the Pareto front has {len(front)} points; "
                      f"use 'best' or an index 0..{len(front) - 1} (ordered by latency)")


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
    from raynas.search.results import read_records

    try:
        path = tracker.download_artifacts(run_id, "pareto.parquet", dst)
    except Exception:
        raise ConfigError(f"run {run_id}: has no pareto.parquet artifact; pass the id of a "
                          f"search run") from None
    return read_records(path)



def _build_lut(space: SearchSpace, lat, meter):
    """Build the lookup table on the target: here, or in a task on a node with its resource."""
    from raynas.latency.lut import LatencyLUT

    if not lat.resource:
        return LatencyLUT.build(space, meter, progress=say)
    import ray

    def build(space_doc):
        return LatencyLUT.build(SearchSpace.from_dict(space_doc), meter).to_dict()

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
