"""Measured latency in one place per target: a small Ray actor (named, shared by every
evaluator of a job), placed by a custom resource (``latency.resource``) on the node that
carries the target, or, for an evaluator pool without one, beside the evaluators: one meter
times one subnet at a time, so parallel evaluators never time on the same cores at once."""

from __future__ import annotations

from typing import Any

from raynas.config import LatencyConfig
from raynas.runtime import Request, wait_ready
from raynas.space import SearchSpace


class LatencyMeter:
    """Builds each subnet's static model and times it here (weights do not change timing)."""

    def __init__(self, space: dict[str, Any], latency: dict[str, Any]):
        import torch

        from raynas.latency.measure import MeasuredLatency
        from raynas.tasks import example_args

        cfg = LatencyConfig(**latency)
        torch.set_num_threads(cfg.threads)
        self.space = SearchSpace.from_dict(space)
        self.meter = MeasuredLatency.from_config(cfg)
        self.inputs = example_args(self.space, cfg.batch_size)
        self.timed = 0  # subnets timed here

    def ready(self) -> bool:
        return True

    def measure_many(self, archs: list[dict[str, Any]], run_time_s: float | None = None,
                     models: list | None = None) -> tuple[list[tuple[float, float]], str]:
        """``(ms, spread)`` of each arch, timed in interleaved windows (for ``run_time_s``
        each, see ``MeasuredLatency.longer``), and this node's id. ``models``: the archs'
        static models as the evaluator extracted them (a pruned ticket's channels
        included); without them, each is built from its arch."""
        from raynas.latency.measure import timing_node
        from raynas.supernets import build_static

        models = [m.eval() for m in models] if models else [
            build_static(self.space, self.space.validate(a)).eval() for a in archs]
        timings = self.meter.longer(run_time_s).measure_many(models,
                                                             [self.inputs] * len(models))
        self.timed += len(models)
        return [(t.ms, t.spread) for t in timings], timing_node()


def meter_name(space: SearchSpace, cfg: LatencyConfig) -> str:
    return f"raynas-latency-{cfg.target}-{space.fingerprint}"


def meter_actor(space: SearchSpace, cfg: LatencyConfig):
    """The job's meter actor for ``cfg.target`` (created on first use, then shared; create
    it in the driver first, so that it outlives any one evaluator).

    It asks for the target's resource (without ``latency.resource``: nothing, and it runs
    where Ray places it) and no CPU: the resource is the reservation (one per target node
    means one measurement at a time there), and a CPU request could starve behind the
    evaluators and the trials on a small cluster.
    """
    import ray

    from raynas.errors import RaynasError

    wait_s = cfg.resource_wait_s
    if not ray.is_initialized():
        raise RuntimeError("latency.resource needs a running Ray (raynas starts one per job)")
    if cfg.resource and cfg.resource not in ray.cluster_resources():
        print(f"[raynas] waiting up to {wait_s:.0f} s for a Ray node with resource "
              f"{cfg.resource!r} (latency.resource); the cluster has "
              f"{', '.join(sorted(ray.cluster_resources()))}", flush=True)
    name = meter_name(space, cfg)
    handle = ray.remote(LatencyMeter).options(
        name=name, get_if_exists=True, resources={cfg.resource: 1} if cfg.resource else {},
        num_cpus=0,
        max_restarts=3, max_task_retries=3,
    ).remote(space.to_dict(), cfg.model_dump())
    if not cfg.resource:  # beside the evaluators: it starts while they load
        return handle
    try:
        # Says every few seconds that it still waits (a node may join the cluster).
        wait_ready(handle.ready.remote(), f"the latency meter (latency.resource = "
                   f"{cfg.resource!r})", wait_s, timeout_message=(
                       f"latency.resource = {cfg.resource!r}: no Ray node with that "
                       f"resource came up within {wait_s:.0f} s; start one with `ray start "
                       f"--resources '{{\"{cfg.resource}\": 1}}'` or declare it in "
                       "cluster.yaml"))
    except RaynasError:
        ray.kill(handle)
        raise
    return handle


def meter_request(cfg: LatencyConfig) -> Request:
    """What the meter actor asks Ray for (the target's resource, no CPU), to refuse it up
    front where it can never be placed (the embedded Ray without that resource)."""
    return Request(f"latency.resource = {cfg.resource!r} (the latency meter)",
                   ({cfg.resource: 1.0},), "PACK",
                   f"declare it with ray.resources: {{{cfg.resource!r}: 1}}, or join a "
                   "cluster that has a node with it (ray.address)")


def stop_meter(space: SearchSpace, cfg: LatencyConfig) -> None:
    """Kill the job's meter actor for ``cfg.target`` and wait (a few seconds at most) until
    its name is free, so that the next ``meter_actor`` starts a new one."""
    import time

    import ray

    name = meter_name(space, cfg)
    for _ in range(50):
        try:
            ray.kill(ray.get_actor(name))
        except ValueError:  # gone
            return
        time.sleep(0.1)
