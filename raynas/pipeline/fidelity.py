"""The fidelity stage: does the trained supernet rank subnets as training them from scratch
does? M subnets spread over the FLOPs range are scored twice, with the supernet's weights
(the evaluator) and trained alone from scratch (Ray Tune trials, cached), and the two
rankings compared. ``raynas fidelity`` runs it alone; ``fidelity.stage`` puts it between
train and search in ``raynas run``."""

from __future__ import annotations

import contextlib
import functools
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raynas.checkpoint import load_checkpoint
from raynas.config import JobConfig
from raynas.fidelity.metrics import RankAgreement, check_threshold, rank_agreement
from raynas.fidelity.picking import Picked, pick_subnets, static_flops
from raynas.fidelity.report import FILES, subnet_rows, write_report
from raynas.fidelity.standalone import (
    StandaloneCache,
    cache_key,
    standalone_settings,
    train_standalone,
)
from raynas.pipeline.progress import say
from raynas.runtime import Request

if TYPE_CHECKING:
    from raynas.pipeline.job import Job


@dataclass
class FidelityOutcome:
    """What a fidelity stage measured: the agreement on the validation split (what a search
    optimises) and on the test split, the per-subnet rows, where the files went, its run."""

    val: RankAgreement
    test: RankAgreement
    rows: list[dict[str, Any]]
    directory: Path
    run_id: str | None
    trained: int
    cached: int


def cache_dir(cfg: JobConfig) -> Path:
    """``fidelity.cache_dir`` (relative: from the working directory), else
    ``fidelity-cache`` beside the output folder (``outputs/fidelity-cache`` by default), so
    jobs whose outputs sit side by side share standalone results."""
    if cfg.fidelity.cache_dir:
        return Path(cfg.fidelity.cache_dir).resolve()
    return cfg.out_dir.parent / "fidelity-cache"


def standalone_request(cfg: JobConfig, what: str = "a standalone training of fidelity"
                       ) -> Request:
    """What one training in a Tune trial (fidelity's standalone one, a fine-tuning trial)
    asks Ray for, to refuse it up front when it can never be placed."""
    gpu = cfg.train.use_gpu
    return Request(f"{what}: 1 CPU{' and 1 GPU' if gpu else ''}",
                   ({"CPU": 1.0, "GPU": 1.0 if gpu else 0.0},), "PACK",
                   "give Ray a GPU, or set train.use_gpu=false" if gpu else
                   "give Ray more CPUs (ray.num_cpus, or a cluster with ray.address)")


def pick_fidelity_subnets(job: Job) -> list[Picked]:
    """The job's M subnets, spread over the FLOPs range (``fidelity.*``); a ``ConfigError``
    when the spread holds fewer. Cheap enough to call before any run, to fail early."""
    f = job.cfg.fidelity
    return pick_subnets(job.space, static_flops(job.space, job.task), f.subnets, f.spread,
                        f.candidates, job.cfg.seed)


def standalone_results(job: Job, picked: list[Picked]) -> tuple[list[dict], list[bool]]:
    """Each subnet trained from scratch: from the cache, or as a Ray Tune trial (one CPU, or
    a GPU with ``train.use_gpu``) whose result is cached as it arrives. Returns the results
    and which came from the cache."""
    from raynas.search.trials import run_trials

    cfg, metric = job.cfg, job.task.primary.name
    settings = standalone_settings(cfg, job.space)
    cache = StandaloneCache(cache_dir(cfg))
    keys = [cache_key(p.arch, settings) for p in picked]
    results = [cache.get(k) for k in keys]
    cached = [r is not None for r in results]
    todo = [i for i, r in enumerate(results) if r is None]
    say(f"fidelity: standalone training of {len(todo)} subnets for "
        f"{settings['train']['epochs']} epochs each ({sum(cached)} cached in {cache.directory})")
    if not todo:
        return results, cached

    done = 0

    def arrived(j: int, result: dict[str, Any]) -> None:
        nonlocal done
        i, done = todo[j], done + 1
        cache.put(keys[i], picked[i].arch, settings, result)  # kept if the rest is stopped
        results[i] = result
        say(f"fidelity: trained {done}/{len(todo)}: subnet {i} ({picked[i].flops:,} FLOPs) "
            f"{metric} {result[metric]:.4f} in {result['train_s']:.1f} s")

    gpu = cfg.train.use_gpu
    train = functools.partial(train_standalone, settings=settings, threads=1)
    with job.ray("fidelity"):
        out = run_trials(train, [picked[i].arch.to_dict() for i in todo],
                         resources={"cpu": 1, "gpu": 1} if gpu else {"cpu": 1},
                         storage_path=cfg.storage_path,
                         name=f"fidelity-{uuid.uuid4().hex[:8]}",
                         max_concurrent=cfg.fidelity.max_concurrent, on_result=arrived)
    for j, i in enumerate(todo):
        if results[i] is None:  # a result the callback did not see: keep it too
            cache.put(keys[i], picked[i].arch, settings, out[j])
        results[i] = out[j]
    return results, cached


def fidelity_stage(job: Job, checkpoint: str | Path, parent_id: str | None = None,
                   train_run_id: str | None = None,
                   picked: list[Picked] | None = None) -> FidelityOutcome:
    """Measure the supernet's fidelity (see the module doc) in a ``fidelity`` run; write the
    report to ``<output dir>/fidelity/``. ``picked``: the subnets, when already picked
    (``pick_fidelity_subnets``). The threshold is ``check_gate``'s."""
    from raynas.evaluation.actor import evaluator_args
    from raynas.evaluation.evaluator import Evaluator

    cfg, space, tracker = job.cfg, job.space, job.tracker
    f, metric, goal = cfg.fidelity, job.task.primary.name, job.task.primary.goal
    # A wrong checkpoint (space or weight scheme) fails here, clearly.
    load_checkpoint(checkpoint, expected=space, weights=job.cfg.weights.model_dump())
    picked = picked or pick_fidelity_subnets(job)
    t0 = time.perf_counter()
    with job.stage_run("fidelity", parent_id) as run_id:
        if parent_id is None:
            job.log_config()
        job.save_state("fidelity", run_id=run_id, status="running")
        tracker.set_tags({"raynas.checkpoint": str(Path(checkpoint).resolve()),
                          **({"raynas.train_run_id": train_run_id} if train_run_id else {})})
        say(f"fidelity: {len(picked)} subnets of {space.name!r} from {picked[0].flops:,} to "
            f"{picked[-1].flops:,} FLOPs, scored with the supernet's weights")
        evaluator = Evaluator(**evaluator_args(cfg, checkpoint, space))
        inherited = evaluator.evaluate([p.arch.to_dict() for p in picked])
        standalone, cached = standalone_results(job, picked)
        agree = {split: rank_agreement([float(r[f"{split}{metric}"]) for r in standalone],
                                       [float(r[f"{split}{metric}"]) for r in inherited],
                                       goal, f.top_k) for split in ("", "test_")}
        val, test = agree[""], agree["test_"]
        rows = subnet_rows(picked, standalone, inherited, metric, goal, cached)
        trained = len(picked) - sum(cached)
        wall = time.perf_counter() - t0
        summary = {"goal": goal, "subnets": len(picked), "standalone_trained": trained,
                   "standalone_cached": sum(cached), "fidelity_wall_s": wall,
                   "epochs": cfg.fidelity.epochs or cfg.train.epochs,
                   "spread": list(f.spread), "min_kendall_tau": f.min_kendall_tau,
                   "cache_dir": str(cache_dir(cfg)), "checkpoint": str(checkpoint)}
        out = write_report(job.out / "fidelity", rows, val, test, metric, summary,
                           f"{cfg.name}: {space.name}, {metric} of {len(picked)} subnets")
        _log(tracker, val, test, rows, metric, summary, out)
        passed = (None if f.min_kendall_tau is None
                  else val.kendall_tau >= f.min_kendall_tau)
        tracker.set_tags({"raynas.fidelity_gate": {None: "off", True: "passed",
                                                   False: "failed"}[passed]})
        say(f"fidelity: Kendall tau {val.kendall_tau:.3f}, Spearman rho "
            f"{val.spearman_rho:.3f}, top-{val.k} overlap {val.top_k_overlap:.2f}, top-1 "
            f"regret {val.top1_regret:.4f}, mean gap {val.mean_gap:+.4f} (validation "
            f"{metric}, standalone - inherited) in {wall:.1f} s -> {out}")
    job.save_state("fidelity", status="below_threshold" if passed is False else "finished",
                   kendall_tau=val.kendall_tau)
    return FidelityOutcome(val, test, rows, out, run_id, trained, sum(cached))


def _log(tracker, val: RankAgreement, test: RankAgreement, rows: list[dict[str, Any]],
         metric: str, summary: dict[str, Any], out: Path) -> None:
    numbers = {k: v for k, v in val.as_dict().items() if k not in ("n", "k")}
    tracker.log_params({"fidelity.metric": metric, "fidelity.top_k": val.k,
                        "fidelity.epochs_used": summary["epochs"],
                        "fidelity.cache_dir": summary["cache_dir"]})
    tracker.log_metrics({**numbers, **{f"test_{k}": v for k, v in test.as_dict().items()
                                       if k not in ("n", "k")},
                         **{k: summary[k] for k in ("subnets", "standalone_trained",
                                                    "standalone_cached", "fidelity_wall_s")}})
    # One step per subnet (the table's row), in increasing FLOPs.
    tracker.log_metric_rows([(i, {"subnet_flops": r["flops"],
                                  f"subnet_standalone_{metric}": r[f"standalone_{metric}"],
                                  f"subnet_inherited_{metric}": r[f"inherited_{metric}"]})
                             for i, r in enumerate(rows)])
    for name in FILES:
        tracker.log_artifact(out / name, "fidelity")


def run_fidelity(job: Job, checkpoint: str | Path | None = None,
                 train_run_id: str | None = None) -> FidelityOutcome:
    """``raynas fidelity``: one parent run with the ``fidelity`` run under it, after a
    ``train`` run when no ``checkpoint`` is given (the job's train stage). The threshold
    is left to the caller (``check_gate``): the runs finish, as the measurement did."""
    from raynas.pipeline.train import check_train_inputs, train_stage

    if checkpoint is None:
        check_train_inputs(job)
    else:
        load_checkpoint(checkpoint, expected=job.space, weights=job.cfg.weights.model_dump())
    picked = pick_fidelity_subnets(job)  # bad fidelity settings: before any run or file
    # Ray only where something trains: a report whose subnets are all cached needs none.
    with job.ray("train", "fidelity") if checkpoint is None else contextlib.nullcontext():
        with job.stage_run(job.cfg.name, None) as parent:
            job.log_config()
            if checkpoint is None:
                checkpoint, train_run_id = train_stage(job, parent)
            return fidelity_stage(job, checkpoint, parent, train_run_id, picked)


def check_gate(job: Job, outcome: FidelityOutcome) -> None:
    """``FidelityBelowThreshold`` (exit status 3) when ``fidelity.min_kendall_tau`` is set
    and the measured Kendall tau is below it."""
    check_threshold(outcome.val.kendall_tau, job.cfg.fidelity.min_kendall_tau,
                    job.task.primary.name, outcome.directory)
