"""Latency models: one interface (arch in, milliseconds on a named target out), four sources.

- ``measured``   the static subnet timed on the target (this process, or an actor on the Ray
                 node that carries ``latency.resource``), cached in a Parquet table;
- ``lut``        the sum of per-op times from a lookup table profiled on the target;
- ``predictor``  a learned model on the arch encoding (``raynas latency fit``);
- ``flops``      FLOPs as a proxy, mapped to ms by a line fitted on measurements.

The job picks one with ``latency.model``; the evaluator and the search never branch on it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

from torch import nn

from raynas.config import LatencyConfig
from raynas.errors import ConfigError
from raynas.latency.measure import MeasuredLatency, count_flops, timing_node
from raynas.latency.table import LatencyTable
from raynas.space import Arch, SearchSpace


class LatencyModel(ABC):
    """``latency_ms(arch, static)``: ``static`` is the subnet's plain model when the caller
    has it (measuring reuses it), else None."""

    kind: str
    unit = "ms"

    def __init__(self, space: SearchSpace, target: str):
        self.space, self.target = space, target
        self.node: str | None = None  # where the last value was measured, if it was
        self.spread: float | None = None  # the last timing's window spread, if it was timed

    @abstractmethod
    def latency_ms(self, arch: Arch, static: nn.Module | None = None) -> float: ...


class MeasuredModel(LatencyModel):
    kind = "measured"

    def __init__(self, space: SearchSpace, meter: MeasuredLatency,
                 table: LatencyTable | None = None, remote=None):
        super().__init__(space, meter.target)
        self.meter, self.table, self.remote = meter, table, remote
        self.inputs = input_key(space, meter.batch_size)  # part of a table row's key
        self.hits = 0

    def latency_ms(self, arch, static=None):
        m = self.meter
        if self.table is not None:
            cached = self.table.get(arch, m.target, m.batch_size, m.threads, self.inputs)
            if cached is not None:
                self.hits += 1
                self.node = self.spread = None
                return cached
        ((ms, self.spread),) = self.retime([arch], None if static is None else [static])
        if self.table is not None:
            self.table.add(arch, ms, m.target, m.batch_size, m.threads, inputs=self.inputs)
        return ms

    def retime(self, archs: list[Arch], statics: list[nn.Module] | None = None,
               run_time_s: float | None = None) -> list[tuple[float, float]]:
        """``(ms, spread)`` of each arch timed now, their windows interleaved (the table is
        neither read nor written: the confirmation pass and ``latency_ms`` decide).
        ``run_time_s``: time each arch this long, over twice the meter's windows (the
        confirmation pass), instead of the meter's own ``min_run_time_s``."""
        if self.remote is not None:
            import ray

            out, self.node = ray.get(self.remote.measure_many.remote(
                [a.to_dict() for a in archs], run_time_s, statics))
            return [tuple(t) for t in out]
        from raynas.supernets import build_static
        from raynas.tasks import example_args

        models = statics or [build_static(self.space, a) for a in archs]
        example = example_args(self.space, self.meter.batch_size)
        timings = self.meter.longer(run_time_s).measure_many(models, [example] * len(models))
        self.node = timing_node()
        return [(t.ms, t.spread) for t in timings]


class LUTModel(LatencyModel):
    kind = "lut"

    def __init__(self, space: SearchSpace, lut):
        super().__init__(space, lut.target)
        self.lut = lut

    def latency_ms(self, arch, static=None):
        return self.lut.latency_ms(self.space, arch)


class PredictorModel(LatencyModel):
    """A fitted predictor (``mlp``) or the FLOPs line (``flops``)."""

    def __init__(self, space: SearchSpace, predictor, kind: str, target: str):
        super().__init__(space, target)
        self.predictor, self.kind = predictor, kind

    def latency_ms(self, arch, static=None):
        return float(self.predictor.predict_ms([arch])[0])


def input_key(space: SearchSpace, batch_size: int) -> str:
    """The shapes of the example inputs a subnet of ``space`` is timed on, as text."""
    from raynas.tasks import default_task

    return default_task(space).shape_key(batch_size)


def flops_of(space: SearchSpace):
    """``arch -> FLOPs`` of its static model at batch size 1."""
    from raynas.supernets import build_static
    from raynas.tasks import example_args

    example = example_args(space, 1)
    return lambda arch: count_flops(build_static(space, arch).eval(), example)


def _check_setting(what: str, path: str, have: Mapping[str, Any], cfg: LatencyConfig) -> None:
    """A table or predictor serves only the target, batch size and threads it was made for."""
    for key, want in (("target", cfg.target), ("batch_size", cfg.batch_size),
                      ("threads", cfg.threads)):
        got = have.get(key)
        if got is not None and got != want:
            raise ConfigError(f"latency.{what} = {path!r} was made for {key} {got!r}, but "
                              f"latency.{key} = {want!r}; profile again for this setting")


def build_measured(cfg: LatencyConfig, space: SearchSpace, meter: MeasuredLatency,
                   table: LatencyTable | None = None, shared: bool = False) -> MeasuredModel:
    """Timing on the target: here, or in the meter actor on the node with ``cfg.resource``
    (``shared``: in the job's one meter actor even without a resource: an evaluator pool)."""
    remote = None
    if cfg.resource or shared:
        from raynas.latency.remote import meter_actor

        remote = meter_actor(space, cfg)
    return MeasuredModel(space, meter, table, remote)


def build_latency_model(cfg: LatencyConfig | Mapping[str, Any], space: SearchSpace,
                        meter: MeasuredLatency | None = None, shared: bool = False
                        ) -> LatencyModel:
    """The job's latency model (paths in ``cfg`` already resolved by the caller; ``shared``:
    see ``build_measured``)."""
    if not isinstance(cfg, LatencyConfig):
        cfg = LatencyConfig(**cfg)
    meter = meter or MeasuredLatency.from_config(cfg)
    if cfg.model == "measured":
        return build_measured(cfg, space, meter, LatencyTable(cfg.table) if cfg.table else None,
                              shared)
    if cfg.model == "lut":
        from raynas.latency.lut import LatencyLUT

        lut = LatencyLUT.load(cfg.lut)
        _check_setting("lut", cfg.lut, vars(lut), cfg)
        if lut.family != space.family:
            raise ConfigError(f"latency.lut = {cfg.lut!r} is for family {lut.family!r}, "
                              f"space {space.name!r} is {space.family!r}")
        return LUTModel(space, lut)
    from raynas.latency.predictor import load_predictor

    predictor = load_predictor(cfg.predictor, space, flops_fn=flops_of(space))
    _check_setting("predictor", cfg.predictor, predictor.meta, cfg)
    if predictor.kind != ("flops" if cfg.model == "flops" else "mlp"):
        raise ConfigError(f"latency.predictor = {cfg.predictor!r} is a {predictor.kind!r} "
                          f"predictor; latency.model = {cfg.model!r} needs "
                          f"{'a flops' if cfg.model == 'flops' else 'an mlp'} one")
    return PredictorModel(space, predictor, cfg.model, cfg.target)
