"""Measured latency on the node that carries the target: a small Ray actor placed by a
custom resource (``latency.resource``), shared by every evaluator of a job (named actor)."""

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

    def ready(self) -> bool:
        return True

    def measure_many(self, archs: list[dict[str, Any]], run_time_s: float | None = None
                     ) -> tuple[list[tuple[float, float]], str]:
        """``(ms, spread)`` of each arch, timed in interleaved windows (for ``run_time_s``
        each, see ``MeasuredLatency.longer``), and this node's id."""
        from raynas.latency.measure import timing_node
        from raynas.supernets import build_static

        models = [build_static(self.space, self.space.validate(a)).eval() for a in archs]
        timings = self.meter.longer(run_time_s).measure_many(models,
                                                             [self.inputs] * len(models))
        return [(t.ms, t.spread) for t in timings], timing_node()


def meter_actor(space: SearchSpace, cfg: LatencyConfig):
    """The job's meter actor for ``cfg.target`` (created on first use, then shared).

    It asks for the target's resource and no CPU: the resource is the reservation (one per
    target node means one measurement at a time there), and a CPU request could starve
    behind the evaluator and the trials on a small cluster.
    """
    import ray

    from raynas.errors import RaynasError

    wait_s = cfg.resource_wait_s
    if not ray.is_initialized():
        raise RuntimeError("latency.resource needs a running Ray (raynas starts one per job)")
    if cfg.resource not in ray.cluster_resources():
        print(f"[raynas] waiting up to {wait_s:.0f} s for a Ray node with resource "
              f"{cfg.resource!r} (latency.resource); the cluster has "
              f"{', '.join(sorted(ray.cluster_resources()))}", flush=True)
    name = f"raynas-latency-{cfg.target}-{space.fingerprint}"
    handle = ray.remote(LatencyMeter).options(
        name=name, get_if_exists=True, resources={cfg.resource: 1}, num_cpus=0,
        max_restarts=3, max_task_retries=3,
    ).remote(space.to_dict(), cfg.model_dump())
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
