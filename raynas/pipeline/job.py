"""A raynas job: its config, tracker and MLflow runs, the job state behind ``--resume``, and
``Job.run()``, which runs the stages (train -> search -> export) under one parent run.

The stages live in their own modules (``train``, ``search``, ``export``, ``latency``); each
takes the Job for its config, space, tracker and bookkeeping.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from raynas.config import JobConfig, LatencyConfig, resolve_path
from raynas.errors import ConfigError
from raynas.pipeline.export import export_stage
from raynas.pipeline.fidelity import check_gate, fidelity_stage, pick_fidelity_subnets
from raynas.pipeline.latency import profile_latency
from raynas.pipeline.progress import say
from raynas.pipeline.search import SearchSummary, finished_search, search_stage
from raynas.pipeline.train import check_train_inputs, train_stage
from raynas.runtime import (
    Request,
    ResourceError,
    check_placeable,
    placement_timed_out,
    placement_watch,
    ray_session,
)
from raynas.search.searchers import Constraint, Objective
from raynas.space import SearchSpace
from raynas.space.registry import load_space
from raynas.supernets import check_space, create_supernet
from raynas.tasks import Task, build_task
from raynas.tickets import load_ticket
from raynas.tracking import Tracker, flatten
from raynas.training.dropout import DROPOUTS, check_dropout_site
from raynas.training.pruning import PRUNERS, check_prune_site
from raynas.training.samplers import SAMPLERS

STATE_FILE = "job-state.json"
# The configuration the runs table shows beside each run's metrics (``Job.log_config``).
HEADLINE_PARAMS = ("space", "search.searcher")


class Job:
    """One job config bound to its space, output folder and tracker."""

    def __init__(self, cfg: JobConfig, tracker: Tracker | None = None):
        self.cfg = cfg
        self.space: SearchSpace = load_space(cfg.space, base=Path(cfg.base_dir))
        check_space(self.space)  # unknown family or unread dims: clear error before any work
        with torch.device("meta"):  # the weight scheme's options, checked without any memory
            net = create_supernet(self.space, cfg.weights.model_dump())
        drop = cfg.train.dropout
        check_dropout_site(drop.name, DROPOUTS.create(drop.name, drop.options, space=self.space),
                           net, self.space)
        # Pruning on a family it cannot act on, or a ticket of another space: clear errors now.
        check_prune_site(PRUNERS.create(cfg.train.prune.name, cfg.train.prune.options,
                                        space=self.space), net, self.space)
        if cfg.train.init_ticket:
            load_ticket(resolve_path(cfg, cfg.train.init_ticket), expected=self.space)
        # The sampler's option values, checked before any work (its tables build lazily).
        SAMPLERS.create(cfg.train.sampler.name, cfg.train.sampler.options, space=self.space,
                        num_subnets=cfg.train.num_subnets, seed=cfg.seed)
        self.task: Task = build_task(self.space, cfg.task.model_dump() if cfg.task else None)
        if cfg.data.path and not resolve_path(cfg, cfg.data.path).exists():
            raise ConfigError(f"data.path = {cfg.data.path!r}: does not exist")
        self.out = cfg.out_dir
        self._tracker = tracker
        self._in_ray = False
        self.objectives = search_objectives(cfg, self.task)
        self.constraints = search_constraints(cfg, self.task)

    @contextlib.contextmanager
    def ray(self, *stages: str) -> Iterator[None]:
        """Ray for the block: the job's cluster or embedded instance (reused if already up).

        On entry, what ``stages`` ask Ray for is checked: on the embedded Ray, a request that
        can never be placed is a ``ResourceError`` before any work. During the block, work
        that waits to be placed is reported every few seconds (and stops the block after
        ``ray.placement_timeout_s``), and Ctrl-C raises KeyboardInterrupt at once.
        """
        if self._in_ray:  # an outer block (Job.run) checked and watches already
            yield
            return
        r = self.cfg.ray
        with ray_session(r.address, r.num_cpus, r.resources):
            check_placeable(self.resource_requests(stages), r.address)
            with placement_watch(None, r.placement_timeout_s, say=say):
                self._in_ray = True
                try:
                    yield
                finally:
                    self._in_ray = False

    def resource_requests(self, stages: tuple[str, ...] | list[str]) -> list[Request]:
        """What the named stages (``train``, ``search``, ``fidelity``, ``finetune``,
        ``export``, ``profile``) ask Ray for, in the job's terms (see
        ``raynas.runtime.check_placeable``)."""
        out = []
        if "train" in stages:
            from raynas.training.trainer import train_request

            out.append(train_request(self.cfg))
        if "search" in stages:
            from raynas.evaluation.actor import evaluator_request

            out.append(evaluator_request(self.cfg))
        if "fidelity" in stages:
            from raynas.pipeline.fidelity import standalone_request

            out.append(standalone_request(self.cfg))
        if "finetune" in stages:
            from raynas.hpo.finetune_train import finetune_request

            out.append(finetune_request(self.cfg))
        from raynas.latency.remote import meter_request
        from raynas.latency.targets import target_configs

        if self.cfg.latency.resource and {"search", "export", "profile"} & set(stages):
            out.append(meter_request(self.cfg.latency))
        if "search" in stages:  # every subnet is timed on each of latency.targets too
            out += [meter_request(t) for t in target_configs(self.cfg.latency) if t.resource]
        return out

    @property
    def tracker(self) -> Tracker:
        """The job's tracker, opened on first use (bad input fails before a store is made)."""
        if self._tracker is None:
            # Looked up on the package, where the command line (and its tests) take it from.
            from raynas import pipeline

            self._tracker = pipeline.MlflowTracker(self.cfg.tracking_uri,
                                                   self.cfg.experiment_name)
        return self._tracker

    # ---- runs ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def stage_run(self, name: str, parent_id: str | None,
                  resume_id: str | None = None) -> Iterator[str | None]:
        """An MLflow run for the block (``resume_id``: reopen that run instead); it ends
        FINISHED, KILLED on Ctrl-C, or FAILED on any other error."""
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
            timed_out = placement_timed_out()
            if timed_out:  # not Ctrl-C: Ray could not place a stage in time
                self.tracker.end_run("FAILED")
                raise ResourceError(timed_out) from None
            self._mark_interrupted(name)
            self.tracker.end_run("KILLED")
            raise
        except BaseException:
            self.tracker.end_run("FAILED")
            raise
        self.tracker.end_run("FINISHED")

    def log_config(self) -> None:
        """Write the resolved config to the output folder and log it to the current run."""
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / "config.yaml"
        path.write_text(yaml.safe_dump(self.cfg.resolved(), sort_keys=False))
        self.tracker.log_params(flatten(self.cfg.resolved()))
        self.tracker.log_params({"space.fingerprint": self.space.fingerprint,
                                 "space.size": self.space.size()})
        self.tracker.log_artifact(path)
        self.tracker.show_columns(self.headline_metrics, HEADLINE_PARAMS)

    @property
    def headline_metrics(self) -> list[str]:
        """The metrics the runs table shows, in this order: what a job run (and its export)
        logs of the exported subnet, and of its search."""
        return [f"test_{self.task.metrics[0].name}", "latency_ms", "params", "hypervolume"]

    def log_headline(self, record: dict[str, Any]) -> None:
        """Log the exported subnet's metrics, and the search's, on the job's parent run, so
        that the runs table's row of each job shows them without opening the job."""
        found = self.out / "search.json"
        search = json.loads(found.read_text()) if found.is_file() else {}
        self.tracker.log_metrics({
            **{f"test_{m.name}": record.get(f"test_{m.name}") for m in self.task.metrics},
            "latency_ms": record.get("latency_ms"), "params": record.get("params"),
            **{k: search.get(k) for k in ("hypervolume", "front_size", "evaluated")}})

    # ---- job state: what `raynas run --resume` continues ---------------------------------
    def _mark_interrupted(self, name: str) -> None:
        """Ctrl-C: say so in the job state (a running stage, and the job), so that the
        state tells what ``--resume`` will continue."""
        if not self.state_path.is_file():
            return
        state = json.loads(self.state_path.read_text())
        if state.get(name, {}).get("status") == "running":
            self.save_state(name, status="interrupted")
        elif name == self.cfg.name and state.get("parent_run_id"):
            self.save_state(status="interrupted")
            say(f"interrupted; `raynas run ... --resume` (same job and overrides) continues "
                f"it from {self.state_path}")

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

    def save_state(self, stage: str | None = None, **values: Any) -> None:
        """Merge ``values`` into the job state (under ``stage`` if given), atomically."""
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
        if state.get("train", {}).get("status") != "finished":
            check_train_inputs(self)  # a wrong train.resume_from: before any run or file
        fidelity = state.get("fidelity", {}).get("status") != "finished" and \
            self.cfg.fidelity.stage
        picked = pick_fidelity_subnets(self) if fidelity else None  # bad settings: now
        if not resume and self.state_path.is_file():
            self.state_path.unlink()  # a fresh job in this directory
        with contextlib.ExitStack() as ray_up:
            # Ray first: what it can never place is refused before any MLflow run or output.
            ray_up.enter_context(self.ray("train", *(["fidelity"] if fidelity else []),
                                          "search"))
            with self.stage_run(self.cfg.name, None, state.get("parent_run_id")) as parent:
                if resume:
                    say(f"resuming job {self.cfg.name!r} in {self.out} (MLflow run {parent})")
                else:
                    self.save_state(parent_run_id=parent)
                    self.log_config()
                train, search = state.get("train", {}), state.get("search", {})
                if train.get("status") == "finished" and Path(train["checkpoint"]).is_dir():
                    checkpoint, train_id = Path(train["checkpoint"]), train["run_id"]
                    say(f"train: finished before, reusing {checkpoint}")
                else:
                    checkpoint, train_id = train_stage(self, parent, resume=train or None)
                if fidelity:  # between train and search; may stop the job (exit status 3)
                    check_gate(self, fidelity_stage(self, checkpoint, parent, train_id, picked))
                if search.get("status") == "finished":
                    summary = finished_search(self, search["run_id"])
                    say(f"search: finished before, {len(summary.records)} subnets")
                else:
                    summary = self.search(checkpoint, parent, train_run_id=train_id,
                                          resume=search or None)
                ray_up.close()  # the export runs here, Ray down
                exported = self.export(checkpoint, summary.front, parent,
                                       records=summary.records)
                self.log_headline(exported.get("record") or {})
                self.tracker.log_metrics({"job_wall_s": time.perf_counter() - t0})
        self.save_state(status="finished")
        return {"parent_run_id": parent, "checkpoint": checkpoint, "front": summary.front,
                "export": exported, "wall_s": time.perf_counter() - t0}

    # ---- stages (each in its own module) ---------------------------------------------------
    def train(self, parent_id: str | None = None,
              resume: dict[str, Any] | None = None) -> tuple[Path, str | None]:
        """Train the supernet; see :func:`raynas.pipeline.train.train_stage`."""
        check_train_inputs(self)  # a wrong train.resume_from: before any run or file
        return train_stage(self, parent_id, resume)

    def search(self, checkpoint: str | Path, parent_id: str | None = None,
               train_run_id: str | None = None,
               resume: dict[str, Any] | None = None) -> SearchSummary:
        """Search the supernet's subnets; see :func:`raynas.pipeline.search.search_stage`."""
        return search_stage(self, checkpoint, parent_id, train_run_id, resume)

    def export(self, checkpoint: str | Path, front: list[dict[str, Any]],
               parent_id: str | None = None, pick: str | int | None = None,
               records: list[dict[str, Any]] | None = None,
               budgets: Sequence[Constraint] = (),
               register: tuple[str, str | None, dict[str, str]] | None = None
               ) -> dict[str, Any]:
        """Export a Pareto point; see :func:`raynas.pipeline.export.export_stage`."""
        return export_stage(self, checkpoint, front, parent_id, pick, records, budgets,
                            register=register)

    def deploy(self, checkpoint: str | Path, fronts: dict[str | None, list[dict[str, Any]]],
               sweep: Sequence[Constraint], fixed: Sequence[Constraint] = (),
               model_name: str | None = None, pick: str | int = "best"
               ) -> list[dict[str, Any]]:
        """One export per budget and device; see :func:`raynas.pipeline.deploy.deploy_stage`."""
        from raynas.pipeline.deploy import deploy_stage

        return deploy_stage(self, checkpoint, fronts, sweep, fixed, model_name, pick)

    def profile_latency(self, n: int, out: str | Path | None = None,
                        lut: str | Path | None = None) -> dict[str, Any]:
        """Profile subnets' latency; see :func:`raynas.pipeline.latency.profile_latency`."""
        return profile_latency(self, n, out, lut)


# Record fields every search can optimise besides the task's metrics.
SUBNET_FIELDS = {"latency_ms": "min", "flops": "min", "params": "min", "peak_memory_mb": "min"}


def default_objectives(task: Task) -> tuple[Objective, ...]:
    """What a search optimises unless the job says: the task's primary metric and latency."""
    return (Objective(task.primary.name, task.primary.goal), Objective("latency_ms", "min"))


def record_metrics(task: Task, latency: LatencyConfig | None = None) -> dict[str, str]:
    """Metric -> goal for everything a subnet's record holds: the task's metrics, latency,
    FLOPs, parameters, peak memory (and each device's latency, ``latency_ms/<name>``)."""
    from raynas.latency.targets import column

    devices = {column(t.name): "min" for t in (latency.targets if latency else ())}
    return {m.name: m.goal for m in task.metrics} | SUBNET_FIELDS | devices


def search_constraints(cfg: JobConfig, task: Task) -> tuple[Constraint, ...]:
    """``search.latency_budget_ms`` and ``search.constraints``, checked against what a record
    holds."""
    from raynas.search.replay import parse_constraint

    budget = cfg.search.latency_budget_ms
    out = [Constraint("latency_ms", budget)] if budget else []
    known = record_metrics(task, cfg.latency)
    out += [parse_constraint(text, f"search.constraints[{i}]", known)
            for i, text in enumerate(cfg.search.constraints)]
    return tuple(out)


def search_objectives(cfg: JobConfig, task: Task) -> tuple[Objective, ...]:
    """``search.objectives`` checked against what a record holds (the task's metrics and
    the subnet's latency, FLOPs and parameters); default: the task's primary metric and
    latency."""
    if cfg.search.objectives is None:
        return default_objectives(task)
    known = record_metrics(task, cfg.latency)
    out = []
    for i, o in enumerate(cfg.search.objectives):
        if o.name not in known:
            raise ConfigError(f"search.objectives[{i}].name = {o.name!r}: not a metric of task "
                              f"{task.name!r}; choose from {', '.join(known)}")
        out.append(Objective(o.name, o.goal))
    if len({o.name for o in out}) != len(out):
        raise ConfigError("search.objectives: an objective is named twice")
    return tuple(out)
