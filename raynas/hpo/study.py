"""``raynas tune``: a Ray Tune study over how the job's supernet is trained.

Each trial is a supernet training (``raynas.hpo.trial``) with the trial's values of the
job's ``hparams``; the study's metric is the mean validation metric of the probe subnets
(``raynas.hpo.probes``), reported every epoch, so ASHA can stop a weak trial early and
population-based training can restart one from a stronger trial's checkpoint. MLflow gets a
parent run for the study and a child run per trial (its hyperparameters, its curves); the
output folder gets ``tune.json`` (every trial), ``tune.png`` (the curves) and
``best_job.yaml`` (the best completed trial's job, ready for ``raynas run``).
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from ray import tune
from ray.tune.logger import JsonLoggerCallback

from raynas.errors import ConfigError
from raynas.hpo.probes import probe_archs
from raynas.hpo.space import (
    ARCH_PREFIX,
    VIOLATION,
    best_job_doc,
    inside,
    parse_hparams,
    trial_doc,
    tune_space,
)
from raynas.hpo.trial import EPOCHS, NODES, hpo_trial
from raynas.pipeline.progress import say
from raynas.space.dims import Choice

NAME = "tune"  # the Tune experiment's folder under the storage path

_SCHEDULER_OPTIONS = {
    "fifo": set(),
    "asha": {"grace_period", "reduction_factor", "brackets"},
    "pbt": {"perturbation_interval", "quantile_fraction", "resample_probability",
            "perturbation_factors", "burn_in_period"},
}


def build_scheduler(cfg, dims, metric: str, mode: str):
    """The study's trial scheduler, its options checked (ConfigError naming the option)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    name, options = cfg.hpo.scheduler.name, dict(cfg.hpo.scheduler.options)
    if name not in _SCHEDULER_OPTIONS:
        raise ConfigError(f"hpo.scheduler = {name!r}: unknown; choose one of fifo, asha, pbt")
    for key in options:
        if key not in _SCHEDULER_OPTIONS[name]:
            allowed = ", ".join(sorted(_SCHEDULER_OPTIONS[name])) or "none"
            raise ConfigError(f"hpo.scheduler.options.{key}: unknown option of {name}; "
                              f"allowed: {allowed}")
    if name == "pbt" and cfg.hpo.searcher != "random":
        raise ConfigError(f"hpo.searcher = {cfg.hpo.searcher!r}: population-based training "
                          "draws its first population itself; use hpo.searcher = random")
    try:
        if name == "fifo":
            return FIFOScheduler()
        if name == "asha":
            return ASHAScheduler(time_attr=EPOCHS, metric=metric, mode=mode,
                                 max_t=cfg.train.epochs, **{"grace_period": 1, **options})
        mutations = {d.name: list(d.values) if isinstance(d, Choice) else space
                     for d, space in zip(dims, tune_space(dims).values())}
        return PopulationBasedTraining(
            time_attr=EPOCHS, metric=metric, mode=mode, hyperparam_mutations=mutations,
            custom_explore_fn=lambda config: clamp(config, dims),
            **{"perturbation_interval": 1, "quantile_fraction": 0.5, **options})
    except (ValueError, TypeError, AssertionError) as exc:
        raise ConfigError(f"hpo.scheduler.options = {options!r}: {name} refuses them: "
                          f"{exc}") from None


def clamp(config: dict[str, Any], dims) -> dict[str, Any]:
    """PBT's perturbation multiplies a value by 0.8 or 1.2: keep it inside its dim."""
    out = dict(config)
    for d in dims:
        if not isinstance(d, Choice) and d.name in out:
            out[d.name] = inside(d, out[d.name])
    return out


def build_searcher(cfg, metric: str, mode: str, points: list[dict[str, Any]] | None = None):
    """Tune's search algorithm for ``hpo.searcher``, seeded by the job's seed (Optuna and
    Nevergrad also told the budget violations a trial reports: ``raynas.hpo.constrained``);
    ``points``: whole configs its first trials take, in order."""
    options = dict(cfg.hpo.options)
    if cfg.hpo.searcher == "optuna_tpe":
        import optuna

        from raynas.hpo.constrained import ConstrainedOptunaSearch

        try:
            sampler = optuna.samplers.TPESampler(seed=cfg.seed, **options)
        except TypeError as exc:
            raise ConfigError(f"hpo.options = {options!r}: TPESampler refuses them: "
                              f"{exc}") from None
        return ConstrainedOptunaSearch(metric=metric, mode=mode, sampler=sampler,
                                       points_to_evaluate=points)
    if cfg.hpo.searcher == "nevergrad":
        import nevergrad as ng
        import numpy as np

        from raynas.hpo.constrained import ConstrainedNevergradSearch

        name = options.pop("optimizer", "NGOpt")
        if name not in ng.optimizers.registry or options:
            raise ConfigError(f"hpo.options = {cfg.hpo.options!r}: nevergrad takes "
                              "{optimizer: NAME}, a name of nevergrad's registry (e.g. NGOpt, "
                              "TwoPointsDE, CMA)")
        np.random.seed(cfg.seed)  # nevergrad seeds its parametrization from numpy's state
        return ConstrainedNevergradSearch(optimizer=ng.optimizers.registry[name],
                               optimizer_kwargs={"budget": cfg.hpo.trials},
                               metric=metric, mode=mode, points_to_evaluate=points)
    if options:
        raise ConfigError(f"hpo.options = {options!r}: the random searcher has no options")
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=cfg.seed, points_to_evaluate=points)


@dataclass
class StudyOutcome:
    trials: list[dict[str, Any]]
    best: dict[str, Any]
    run_id: str | None
    wall_s: float


class _Tracking(tune.Callback):
    """On the driver: one MLflow child run per trial under the study's run, its
    hyperparameters as params (and as ``hp.<key>`` metrics, which population-based
    training changes), every reported number as a curve over epochs; one progress line per
    report."""

    def __init__(self, key: str, job, parent_id: str | None, runs: dict[str, str],
                 metric: str, epochs: int, on_change, stage: str = "tune"):
        self.key, self.job, self.parent_id, self.runs = key, job, parent_id, runs
        self.metric, self.epochs, self.on_change = metric, epochs, on_change
        self.stage = stage  # of the study's run: each trial's is "<stage>-trial"
        self.trackers: dict[str, Any] = {}

    def __reduce__(self):
        # Tune pickles its callbacks with the experiment; the live one (MLflow clients, the
        # job) is looked up by the study's key when a pickled copy is loaded.
        return _live_tracking, (self.key,)

    def _tracker(self, trial):
        from raynas.tracking import MlflowTracker

        tid = trial.trial_id
        if tid not in self.trackers and isinstance(self.job.tracker, MlflowTracker):
            tracker = MlflowTracker(self.job.tracker.uri, self.job.cfg.experiment_name)
            tags = {"raynas.stage": f"{self.stage}-trial", "raynas.job": self.job.cfg.name,
                    "raynas.trial": tid}
            # A Ctrl-C can land between creating a trial's run and noting it in the job
            # state: on --resume the run is then found by its tags, not made twice.
            noted = self.runs.get(tid)
            run_id = noted or tracker.find_run(self.parent_id, tags)
            if run_id:
                tracker.resume_run(run_id)
            else:
                run_id = tracker.start_run(f"trial {tid}", parent_id=self.parent_id, tags=tags)
            if not noted:
                self.runs[tid] = run_id
                self.on_change()
                # A new run, or one a Ctrl-C cut short before its params were logged.
                if not tracker.run_info(run_id)["params"]:
                    tracker.log_params(trial.config)
            self.trackers[tid] = tracker
        return self.trackers.get(tid)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        tracker = self._tracker(trial)
        config = result.get("config") or trial.config  # pbt may have changed trial.config
        if tracker is not None:
            numbers = {k: v for k, v in result.items() if isinstance(v, int | float)
                       and not isinstance(v, bool) and "/" not in k}
            numbers.update({f"hp.{k}": v for k, v in config.items()
                            if isinstance(v, int | float)})
            tracker.log_metrics(numbers, step=int(result[EPOCHS]))
            if result.get(NODES):
                tracker.set_tags({"raynas.train_nodes": result[NODES]})
        # A drawn subnet (arch.* values) shows as its key, which the trial reports.
        hp = ", ".join([f"{k}={_short(v)}" for k, v in config.items()
                        if not k.startswith(ARCH_PREFIX)]
                       + ([f"subnet {result['arch_key']}"] if "arch_key" in result else []))
        if result.get("feasible") == 0:
            over = ", ".join(f"{k.removeprefix(VIOLATION)} {v:+.0%}" for k, v in result.items()
                             if k.startswith(VIOLATION) and v > 0)
            say(f"{self.stage}: trial {trial.trial_id} ({hp}): over budget ({over} of the "
                f"limit); not trained")
            return
        note = (f", continued from a checkpoint at epoch {int(result['restored_at_epoch'])}"
                if "restored_at_epoch" in result else "")
        epochs = config.get("epochs", self.epochs)  # a finetune trial's own
        say(f"{self.stage}: trial {trial.trial_id} epoch {int(result[EPOCHS])}/{epochs}  "
            f"{self.metric} {result[self.metric]:.4f}  ({hp}{note})")

    def _end(self, trial, status: str) -> None:
        tracker = self.trackers.pop(trial.trial_id, None)
        if tracker is not None:
            tracker.end_run(status)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, "FAILED")


_LIVE: dict[str, _Tracking] = {}


def _live_tracking(key: str) -> _Tracking:
    return _LIVE[key]


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def run_study(job, resume: bool = False) -> StudyOutcome:
    """Run (or with ``resume``, continue) the study of ``job``'s ``hparams``."""
    cfg = job.cfg
    dims = parse_hparams(cfg)
    if not dims:
        raise ConfigError("hparams: empty; `raynas tune` needs at least one, e.g. "
                          "hparams: {train.lr: {type: float, low: 0.01, high: 0.3, "
                          "log: true}} in the job file")
    metric = f"val_{job.task.primary.name}_probes"
    mode = job.task.primary.goal
    scheduler = build_scheduler(cfg, dims, metric, mode)
    searcher = build_searcher(cfg, metric, mode)
    state = job.load_state().get("tune", {}) if resume else {}
    storage = cfg.storage_path
    experiment = f"{storage}/{NAME}"
    if resume and not tune.Tuner.can_restore(experiment):
        raise ConfigError(f"--resume: no Ray Tune study to continue in {experiment}")
    random.seed(cfg.seed)  # population-based training's draws happen on the driver
    probes = probe_archs(job.space, cfg.hpo.probes, cfg.seed)
    trainable = tune.with_resources(
        tune.with_parameters(hpo_trial, job_doc=trial_doc(cfg, {}), base_dir=cfg.base_dir,
                             probes=probes, storage=f"{storage}/tune-train"),
        {"cpu": 0, "memory": 1})  # the trial only relays: its Train workers ask for the CPUs
    # (or GPUs); Tune needs some resource in a request, so one byte of memory
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our progress lines, not Tune's tables
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    t0, started = time.perf_counter(), time.time()
    with job.stage_run("tune", None, state.get("run_id")) as run_id:
        if not resume:
            job.log_config()
            job.tracker.log_params({"hpo.metric": metric})
            (job.out / "probes.json").write_text(json.dumps(probes, indent=1))
            job.tracker.log_artifact(job.out / "probes.json")
        runs: dict[str, str] = dict(state.get("trial_runs", {}))
        job.save_state("tune", run_id=run_id, status="running", trial_runs=runs)
        tracking = _LIVE[experiment] = _Tracking(
            experiment, job, run_id, runs, metric, cfg.train.epochs,
            lambda: job.save_state("tune", trial_runs=runs))
        say(f"tune: {cfg.hpo.trials} trials of {cfg.train.epochs} epochs over "
            f"{', '.join(d.name for d in dims)}; {cfg.hpo.searcher} suggests, "
            f"{cfg.hpo.scheduler.name} schedules, judged by {metric} over {len(probes)} "
            f"probe subnets")
        if cfg.hpo.scheduler.name == "pbt" and cfg.hpo.max_concurrent_trials < cfg.hpo.trials:
            say(f"tune: note: pbt with hpo.max_concurrent_trials = "
                f"{cfg.hpo.max_concurrent_trials} < hpo.trials = {cfg.hpo.trials}: the later "
                "trials start beside finished ones and exploit less; a population trains "
                "best side by side")
        with job.ray("train"):
            if resume:
                tuner = tune.Tuner.restore(experiment, trainable=trainable,
                                           resume_unfinished=True, resume_errored=True)
            else:
                tuner = tune.Tuner(
                    trainable, param_space=tune_space(dims),
                    tune_config=tune.TuneConfig(
                        search_alg=searcher, scheduler=scheduler, num_samples=cfg.hpo.trials,
                        max_concurrent_trials=cfg.hpo.max_concurrent_trials,
                        trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}"),
                    run_config=tune.RunConfig(
                        name=NAME, storage_path=storage, verbose=0,
                        callbacks=[tracking, JsonLoggerCallback()],  # curves: result.json
                        # pbt: a donor's checkpoint must outlive the restart of the trial
                        # that exploits it, so every one stays.
                        checkpoint_config=tune.CheckpointConfig(
                            num_to_keep=None if cfg.hpo.scheduler.name == "pbt" else 2)))
            try:
                grid = tuner.fit()
            finally:
                _LIVE.pop(experiment, None)
        outcome = _outcome(job, grid, metric, mode, run_id, time.perf_counter() - t0, runs,
                           started)
        job.save_state("tune", status="finished")
    return outcome


def _outcome(job, grid, metric: str, mode: str, run_id, wall_s: float,
             runs: dict[str, str], started: float) -> StudyOutcome:
    from raynas.hpo.report import write_outputs

    epochs = job.cfg.train.epochs
    trials = []
    for result in grid:
        history = result.metrics_dataframe
        curve = ([] if history is None or metric not in history else
                 [(int(e), float(v)) for e, v in zip(history[EPOCHS], history[metric])])
        last = result.metrics or {}
        done = curve[-1][0] if curve else int(last.get(EPOCHS, 0))
        trial_id = Path(result.path).name.removeprefix("trial_")
        restored = ([] if history is None or "restored_at_epoch" not in history else
                    [int(e) for e in history["restored_at_epoch"].dropna()])
        trials.append({
            "trial_id": trial_id,
            "config": dict(result.config or {}), "epochs_done": done,
            "status": ("failed" if result.error else "completed" if done >= epochs
                       else "stopped"),
            metric: curve[-1][1] if curve else last.get(metric), "curve": curve,
            "restored_at_epochs": restored, "run_id": runs.get(trial_id),
            # When its last epoch was reported, in seconds since the study (re)started.
            "ended_s": (None if history is None or "timestamp" not in history or not len(history)
                        else float(history["timestamp"].iloc[-1]) - started),
            "checkpoint": result.checkpoint.path if result.checkpoint else None,
        })
    completed = [t for t in trials if t["status"] == "completed" and t[metric] is not None]
    if not completed:
        errors = [str(r.error).strip().splitlines()[-1] for r in grid if r.error]
        raise RuntimeError("no trial of the study completed its training"
                           + (f"; first error: {errors[0]}" if errors else ""))
    best = (max if mode == "max" else min)(completed, key=lambda t: t[metric])
    job.out.mkdir(parents=True, exist_ok=True)
    (job.out / "best_job.yaml").write_text(
        "# The best completed trial of `raynas tune` "
        f"({metric} = {best[metric]:.4f}): run it with `raynas run` on this file.\n"
        + yaml.safe_dump(best_job_doc(job.cfg, best["config"]), sort_keys=False))
    write_outputs(job, trials, best, metric, mode, wall_s)
    return StudyOutcome(trials, best, run_id, wall_s)
