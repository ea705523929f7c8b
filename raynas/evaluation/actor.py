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


class EvaluatorActor(Evaluator):
    """The evaluator as a Ray actor. The checkpoint bytes and the known records arrive as
    object references the driver keeps alive (see ``create_evaluator_actor``), so a
    restarted actor loads them again, on whichever node Ray restarts it."""

    def __init__(self, shared: list, **kwargs):
        import ray

        checkpoint, known = ray.get(shared)
        super().__init__(checkpoint=checkpoint, known=known, **kwargs)


# Object references each live evaluator actor restarts from, by actor id.
_SHARED: dict[str, list] = {}


def create_evaluator_actor(cfg: JobConfig, checkpoint: str | Path, space: SearchSpace,
                           known: list[dict] | None = None):
    """Start the evaluator actor, wait until the checkpoint is loaded, return its handle.

    The checkpoint travels through Ray's object store, so the actor may run on any node.
    The actor restarts (reloading the checkpoint) if its process dies, and the call it was
    serving is retried there. ``known``: records of a resumed search, answered from cache.
    Stop it with ``stop_evaluator_actor``.
    """
    import ray

    from raynas.checkpoint import read_checkpoint_bytes

    actor_cls = ray.remote(EvaluatorActor).options(
        num_cpus=cfg.search.evaluator.num_cpus, max_restarts=3, max_task_retries=3,
    )
    args = evaluator_args(cfg, checkpoint, space)
    del args["checkpoint"]
    shared = [ray.put(read_checkpoint_bytes(checkpoint)), ray.put(list(known or []))]
    handle = actor_cls.remote(shared, **args)
    _SHARED[handle._actor_id.hex()] = shared
    ray.get(handle.ready.remote())  # surfaces load errors (bad checkpoint) here, once
    return handle


def stop_evaluator_actor(handle) -> None:
    """Kill the actor and release what it restarts from."""
    import ray

    ray.kill(handle)
    _SHARED.pop(handle._actor_id.hex(), None)
