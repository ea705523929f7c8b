"""A raynas job: train -> search -> export, each stage an MLflow run.

``Job.run()`` nests the three stage runs under one parent run. Each stage also runs alone
(``raynas train|search|export``), taking the previous stage's checkpoint or run id.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from raynas.checkpoint import load_checkpoint
from raynas.config import JobConfig, resolve_path
from raynas.errors import CheckpointError, ConfigError
from raynas.runtime import ray_session
from raynas.search.pareto import default_reference, hypervolume
from raynas.search.searchers import DEFAULT_OBJECTIVES, Constraint
from raynas.space import SearchSpace
from raynas.space.registry import load_space
from raynas.supernets import get_family
from raynas.tracking import MlflowTracker, Tracker, flatten


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
        self.objectives = DEFAULT_OBJECTIVES
        budget = cfg.search.latency_budget_ms
        self.constraints = (Constraint("latency_ms", budget),) if budget else ()

    @property
    def tracker(self) -> Tracker:
        """The job's tracker, opened on first use (bad input fails before a store is made)."""
        if self._tracker is None:
            self._tracker = MlflowTracker(self.cfg.tracking_uri, self.cfg.experiment_name)
        return self._tracker

    # ---- runs ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _run(self, name: str, parent_id: str | None) -> Iterator[str | None]:
        run_id = self.tracker.start_run(name, parent_id=parent_id,
                                        tags={"raynas.stage": name, "raynas.job": self.cfg.name,
                                              "raynas.space": self.space.name})
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

    def run(self) -> dict[str, Any]:
        """Train, search and export under one parent run; return a summary."""
        t0 = time.perf_counter()
        with self._run(self.cfg.name, None) as parent:
            self._log_config()
            with ray_session(self.cfg.ray.address, self.cfg.ray.num_cpus):
                checkpoint, train_id = self.train(parent)
                summary = self.search(checkpoint, parent, train_run_id=train_id)
            exported = self.export(checkpoint, summary.front, parent,
                                   records=summary.records)
            self.tracker.log_metrics({"job_wall_s": time.perf_counter() - t0})
        return {"parent_run_id": parent, "checkpoint": checkpoint, "front": summary.front,
                "export": exported, "wall_s": time.perf_counter() - t0}

    # ---- stages ----------------------------------------------------------------------------
    def train(self, parent_id: str | None = None) -> tuple[Path, str | None]:
        """Train the supernet; return the stable checkpoint directory and the run id."""
        from raynas.training.trainer import train_supernet

        with self._run("train", parent_id) as run_id:
            if parent_id is None:
                self._log_config()
            t = self.cfg.train
            if t.resume_from:  # a wrong checkpoint fails here, not inside a Ray worker
                load_checkpoint(resolve_path(self.cfg, t.resume_from), expected=self.space)
            say(f"train: supernet for space {self.space.name!r} ({self.space.size():,} "
                f"subnets), {t.epochs} epochs on {t.num_workers} Ray Train workers")
            tracking = ({"uri": self.tracker.uri, "run_id": run_id}
                        if isinstance(self.tracker, MlflowTracker) else None)
            with ray_session(self.cfg.ray.address, self.cfg.ray.num_cpus):
                result = train_supernet(self.cfg, self.space, tracking)
            checkpoint = self.out / "checkpoint"
            if checkpoint.exists():
                shutil.rmtree(checkpoint)
            shutil.copytree(result.checkpoint_dir, checkpoint)
            self.tracker.log_artifacts(checkpoint, "checkpoint")
            self.tracker.set_tags({"raynas.checkpoint": str(checkpoint)})
            say(f"train: done, checkpoint {checkpoint}")
        return checkpoint, run_id

    def search(self, checkpoint: str | Path, parent_id: str | None = None,
               train_run_id: str | None = None) -> SearchSummary:
        """Search the trained supernet's subnets through Ray Tune and the evaluator actor."""
        import ray

        from raynas.evaluation.actor import create_evaluator_actor
        from raynas.search.plot import plot_pareto
        from raynas.search.registry import create_searcher
        from raynas.search.results import write_records
        from raynas.search.tune_driver import run_search

        s = self.cfg.search
        load_checkpoint(checkpoint, expected=self.space)  # a wrong checkpoint fails here, clearly
        with self._run("search", parent_id) as run_id:
            if parent_id is None:
                self._log_config()
            self.tracker.set_tags({"raynas.checkpoint": str(Path(checkpoint).resolve()),
                                   **({"raynas.train_run_id": train_run_id}
                                      if train_run_id else {})})
            with ray_session(self.cfg.ray.address, self.cfg.ray.num_cpus):
                evaluator = create_evaluator_actor(self.cfg, checkpoint, self.space)
                searcher = create_searcher(
                    s.searcher, space=self.space, objectives=self.objectives,
                    constraints=self.constraints, seed=self.cfg.seed,
                    population_size=s.population_size)
                say(f"search: {s.searcher}, {s.budget} subnets, {s.subnets_per_trial} per "
                    f"Tune trial" + (f", latency budget {s.latency_budget_ms} ms"
                                     if s.latency_budget_ms else ""))
                step = iter(range(10**9))

                def log_records(batch: list[dict[str, Any]]) -> None:
                    for r in batch:
                        self.tracker.log_metrics(
                            {"subnet_accuracy": r["accuracy"],
                             "subnet_latency_ms": r["latency_ms"]}, step=next(step))

                outcome = run_search(
                    searcher, evaluator, budget=s.budget,
                    subnets_per_trial=s.subnets_per_trial,
                    max_concurrent_trials=s.max_concurrent_trials,
                    storage_path=self.out / "ray", objectives=self.objectives,
                    constraints=self.constraints, on_records=log_records)
                ray.kill(evaluator)
            records, front = outcome.records, outcome.front
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
            say(f"search: {len(records)} subnets ({unique} unique) in {outcome.wall_s:.1f} s, "
                f"Pareto front {len(front)} points -> {pareto_path}")
        return SearchSummary(records, front, pareto_path, run_id)

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
            evaluator = Evaluator(**evaluator_args(self.cfg, checkpoint, self.space))
            static = evaluator.prepare(arch)
            record = evaluator.score(arch, static)
            result = export_subnet(evaluator.supernet, static, self.space, arch,
                                   evaluator.splits.x_test[:256], self.out / "subnet",
                                   self.cfg.export.formats, self.cfg.export.atol)
            self.tracker.log_params({"arch_key": arch.key, "arch": arch.to_json()})
            self.tracker.log_metrics({
                "test_accuracy": record["test_accuracy"], "val_accuracy": record["accuracy"],
                "latency_ms": record["latency_ms"], "latency_ms_at_search": chosen["latency_ms"],
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
                f"{record['test_accuracy']:.3f}, {record['latency_ms']:.3f} ms on "
                f"{record['latency_target']}; formats {', '.join(result.files)} match the "
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

