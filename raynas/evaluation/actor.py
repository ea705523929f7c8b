"""The shared evaluator actor: one process holds the trained supernet for every trial."""

from __future__ import annotations

from pathlib import Path

from raynas.config import JobConfig, resolve_path
from raynas.evaluation.evaluator import Evaluator
from raynas.space import SearchSpace


def evaluator_args(cfg: JobConfig, checkpoint: str | Path, space: SearchSpace) -> dict:
    """Constructor arguments of ``Evaluator`` for a job (plain values: they cross processes)."""
    data = cfg.data.model_dump()
    if data.get("path"):
        data["path"] = str(resolve_path(cfg, data["path"]).resolve())
    return {
        "checkpoint": str(checkpoint),
        "data": data,
        "latency": latency_args(cfg),
        "evaluator": cfg.search.evaluator.model_dump(),
        "expected_space": space.to_dict(),
        "threads": max(1, int(cfg.search.evaluator.num_cpus)),
    }


def latency_args(cfg: JobConfig) -> dict:
    """The latency section with its file paths made absolute (they cross processes)."""
    lat = cfg.latency.model_dump()
    for key in ("table", "lut", "predictor"):
        if lat.get(key):
            lat[key] = str(resolve_path(cfg, lat[key]).resolve())
    return lat


def create_evaluator_actor(cfg: JobConfig, checkpoint: str | Path, space: SearchSpace):
    """Start the evaluator actor, wait until the checkpoint is loaded, return its handle.

    The actor restarts (reloading the checkpoint) if its process dies; calls are retried.
    """
    import ray

    actor_cls = ray.remote(Evaluator).options(
        num_cpus=cfg.search.evaluator.num_cpus, max_restarts=3, max_task_retries=3,
    )
    handle = actor_cls.remote(**evaluator_args(cfg, checkpoint, space))
    ray.get(handle.ready.remote())  # surfaces load errors (bad checkpoint) here, once
    return handle
