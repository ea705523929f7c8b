"""Measured latency on the node that carries the target: a small Ray actor placed by a
custom resource (``latency.resource``), shared by every evaluator of a job (named actor)."""

from __future__ import annotations

from typing import Any

from raynas.config import LatencyConfig
from raynas.space import SearchSpace


class LatencyMeter:
    """Builds each subnet's static model and times it here (weights do not change timing)."""

    def __init__(self, space: dict[str, Any], latency: dict[str, Any]):
        import torch

        from raynas.latency.measure import MeasuredLatency
        from raynas.supernets import get_family

        cfg = LatencyConfig(**latency)
        torch.set_num_threads(cfg.threads)
        self.space = SearchSpace.from_dict(space)
        self.meter = MeasuredLatency(cfg.target, cfg.batch_size, cfg.threads, cfg.min_run_time_s)
        self.shape = get_family(self.space.family).input_shape(dict(self.space.model))

    def measure(self, arch: dict[str, Any]) -> tuple[float, str]:
        """``(latency_ms, node_id)`` of one arch."""
        import ray

        from raynas.supernets import build_static

        model = build_static(self.space, self.space.validate(arch)).eval()
        return self.meter.measure_ms(model, self.shape), ray.get_runtime_context().get_node_id()


def meter_actor(space: SearchSpace, cfg: LatencyConfig):
    """The job's meter actor for ``cfg.target`` (created on first use, then shared)."""
    import ray

    if not ray.is_initialized():
        raise RuntimeError("latency.resource needs a running Ray (raynas starts one per job)")
    name = f"raynas-latency-{cfg.target}-{space.fingerprint}"
    return ray.remote(LatencyMeter).options(
        name=name, get_if_exists=True, resources={cfg.resource: 1}, num_cpus=cfg.threads,
        max_restarts=3, max_task_retries=3,
    ).remote(space.to_dict(), cfg.model_dump())
