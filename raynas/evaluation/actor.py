"""The shared evaluator actor: one process holds the trained supernet for every trial."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from raynas.config import JobConfig, resolve_path
from raynas.evaluation.evaluator import Evaluator
from raynas.runtime import Request, is_embedded, wait_ready
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
        "task": cfg.task.model_dump() if cfg.task else None,
        # Ray sets CUDA_VISIBLE_DEVICES for an actor that holds a GPU: "cuda" is its own.
        "device": "cuda" if cfg.search.evaluator.num_gpus > 0 else "cpu",
        "seed": cfg.seed,
        "weights": cfg.weights.model_dump(),
    }


def latency_args(cfg: JobConfig) -> dict:
    """The latency section with its file paths made absolute (they cross processes)."""
    lat = cfg.latency.model_dump()
    for key in ("table", "lut", "predictor"):
        if lat.get(key):
            lat[key] = str(resolve_path(cfg, lat[key]).resolve())
    return lat


def evaluator_request(cfg: JobConfig, trial_cpus: float = 0.5) -> Request:
    """What a search asks Ray for at least: the evaluator actor and, beside it, one Tune
    trial (``trial_cpus``, as ``run_search`` gives each), to refuse it up front when it can
    never be placed."""
    e = cfg.search.evaluator
    gpus = float(e.num_gpus)
    return Request(
        f"search.evaluator.num_cpus = {e.num_cpus:g}"
        + (f" and num_gpus = {gpus:g}" if gpus else "")
        + f" for the evaluator actor, plus {trial_cpus:g} CPU for a Tune trial beside it",
        ({"CPU": e.num_cpus, "GPU": gpus}, {"CPU": trial_cpus}), "PACK",
        "lower search.evaluator.num_cpus, or give Ray more (ray.num_cpus, or a cluster "
        "with ray.address)")


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
                           known: list[dict] | None = None, objectives: Sequence = (),
                           constraints: Sequence = ()):
    """Start the evaluator actor, wait until the checkpoint is loaded, return its handle.

    ``objectives`` and ``constraints`` (``Objective`` / ``Constraint``): the search's, which
    ``search.evaluator.halving`` judges partly scored subnets by.

    The checkpoint travels through Ray's object store, so the actor may run on any node.
    The actor restarts (reloading the checkpoint) if its process dies, and the call it was
    serving is retried there. ``known``: records of a resumed search, answered from cache.
    Stop it with ``stop_evaluator_actor``.
    """
    import ray

    from raynas.checkpoint import read_checkpoint_bytes

    actor_cls = ray.remote(EvaluatorActor).options(
        num_cpus=cfg.search.evaluator.num_cpus, num_gpus=cfg.search.evaluator.num_gpus,
        max_restarts=3, max_task_retries=3,
    )
    args = evaluator_args(cfg, checkpoint, space)
    del args["checkpoint"]
    args["objectives"] = [(o.name, o.direction) for o in objectives]
    args["constraints"] = [(c.metric, c.limit) for c in constraints]
    shared = [ray.put(read_checkpoint_bytes(checkpoint)), ray.put(list(known or []))]
    handle = actor_cls.remote(shared, **args)
    _SHARED[handle._actor_id.hex()] = shared
    # Surfaces load errors (bad checkpoint) here, once; on a cluster, says while it waits.
    wait_ready(handle.ready.remote(), "the evaluator actor", cfg.ray.placement_timeout_s,
               report=not is_embedded(cfg.ray.address))
    return handle


def stop_evaluator_actor(handle) -> None:
    """Kill the actor and release what it restarts from."""
    import ray

    ray.kill(handle)
    _SHARED.pop(handle._actor_id.hex(), None)
