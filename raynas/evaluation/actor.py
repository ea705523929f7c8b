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


def evaluator_request(cfg: JobConfig) -> Request:
    """What a search asks Ray for at least: its evaluator actors (``search.evaluators`` when
    set, else one) and a Tune trial beside them (memory only, ``TRIAL_RESOURCES``: a trial
    waits on an evaluator), to refuse it up front when it can never be placed."""
    e = cfg.search.evaluator
    n = cfg.search.evaluators if isinstance(cfg.search.evaluators, int) else 1
    gpus = float(e.num_gpus)
    return Request(
        f"search.evaluator.num_cpus = {e.num_cpus:g}"
        + (f" and num_gpus = {gpus:g}" if gpus else "")
        + (f" for each of search.evaluators = {n} evaluator actors" if n > 1
           else " for the evaluator actor"),
        tuple({"CPU": e.num_cpus, "GPU": gpus} for _ in range(n)), "PACK",
        "lower search.evaluator.num_cpus or search.evaluators, or give Ray more "
        "(ray.num_cpus, or a cluster with ray.address)")


BATCHES_PER_EVALUATOR = 8


def pool_size(cfg: JobConfig) -> int:
    """``search.evaluators``, or for ``auto`` as many evaluators as the free CPUs (GPUs with
    ``search.evaluator.num_gpus``) of the nodes without a latency target's resource allow,
    at least 1, and one per ``BATCHES_PER_EVALUATOR`` batches of the budget at most: an
    evaluator's start-up (a process importing torch and loading the data, 2-3 s of a core)
    pays off only over several batches (``benchmarks/evaluator_pool.py``). Needs Ray."""
    import ray

    s = cfg.search
    if isinstance(s.evaluators, int):
        return s.evaluators
    from raynas.latency.targets import target_configs

    targets = {t.resource for t in [cfg.latency, *target_configs(cfg.latency)] if t.resource}
    free = {"CPU": 0.0, "GPU": 0.0}
    available = ray.available_resources()
    for node in ray.nodes():
        have = node.get("Resources", {})
        if not node.get("Alive") or targets & set(have):
            continue
        for k in free:  # this node's share of what is free now (the whole node, at worst)
            free[k] += min(have.get(k, 0.0), available.get(k, 0.0))
    e = s.evaluator
    n = int(free["GPU"] // e.num_gpus) if e.num_gpus else int(free["CPU"] // e.num_cpus)
    return max(1, min(n, s.budget // (BATCHES_PER_EVALUATOR * s.subnets_per_trial)))


class EvaluatorActor(Evaluator):
    """The evaluator as a Ray actor. The checkpoint bytes and the known records arrive as
    object references the driver keeps alive (see ``create_evaluator_actor``), so a
    restarted actor loads them again, on whichever node Ray restarts it."""

    def __init__(self, shared: list, index: int = 0, **kwargs):
        import ray

        checkpoint, known = ray.get(shared)
        super().__init__(checkpoint=checkpoint, known=known, **kwargs)
        self.index = index  # each record it scores says so (``evaluator``)


# Object references each live evaluator actor restarts from, by actor id.
_SHARED: dict[str, list] = {}


def create_evaluator_actor(cfg: JobConfig, checkpoint: str | Path, space: SearchSpace,
                           known: list[dict] | None = None, objectives: Sequence = (),
                           constraints: Sequence = ()):
    """Start one evaluator actor, wait until the checkpoint is loaded, return its handle
    (``create_evaluator_pool`` with ``n=1``)."""
    (handle,), _ = create_evaluator_pool(cfg, checkpoint, space, 1, known, objectives,
                                         constraints)
    return handle


def create_evaluator_pool(cfg: JobConfig, checkpoint: str | Path, space: SearchSpace,
                          n: int, known: list[dict] | None = None, objectives: Sequence = (),
                          constraints: Sequence = (), wait: bool = True) -> tuple[list, list]:
    """Start ``n`` evaluator actors; return their handles and their ``ready`` references
    (``wait``: already waited on, so load errors surface here, once; on a cluster, says
    while it waits).

    ``objectives`` and ``constraints`` (``Objective`` / ``Constraint``): the search's, which
    ``search.evaluator.halving`` judges partly scored subnets by.

    The checkpoint goes into Ray's object store once and every actor loads it from there,
    on any node. An actor restarts (reloading the checkpoint) if its process dies, and the
    call it was serving is retried there. ``known``: records of a resumed search, answered
    from cache. With ``n > 1`` the actors time latency in the job's one meter actor per
    target (``raynas.latency.remote``; create it in the driver first). Stop them with
    ``stop_evaluator_actor``.
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
    args["shared_meter"] = n > 1
    shared = [ray.put(read_checkpoint_bytes(checkpoint)), ray.put(list(known or []))]
    handles = [actor_cls.remote(shared, i, **args) for i in range(n)]
    for handle in handles:
        _SHARED[handle._actor_id.hex()] = shared
    ready = [handle.ready.remote() for handle in handles]
    if wait:
        what = "the evaluator actor" if n == 1 else f"{n} evaluator actors"
        wait_ready(ready, what, cfg.ray.placement_timeout_s,
                   report=not is_embedded(cfg.ray.address))
    return handles, ready


def stop_evaluator_actor(handle) -> None:
    """Kill the actor and release what it restarts from."""
    import ray

    ray.kill(handle)
    _SHARED.pop(handle._actor_id.hex(), None)
