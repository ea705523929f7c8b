"""``Evaluator``: checkpoint + archs -> metrics. Pure Python/torch, no Ray.

Loaded once (the supernet, the data, the latency model), then asked for many archs. Each
subnet gets its BatchNorm statistics recalibrated on training batches before it is scored
(statistics gathered while training the whole supernet belong to no single subnet), then
its validation and test accuracy, its extracted static model's measured latency, FLOPs and
parameters. Results are cached by Arch key: asking twice costs nothing.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from raynas.checkpoint import load_checkpoint
from raynas.config import DataConfig, EvaluatorConfig, LatencyConfig
from raynas.data import Splits, load_data
from raynas.export import extract
from raynas.latency import MeasuredLatency, count_flops, count_params
from raynas.latency.models import LatencyModel, build_latency_model, build_measured
from raynas.nn import recalibrate_batchnorm
from raynas.space import Arch, SearchSpace
from raynas.supernets import create_supernet, get_family


class Evaluator:
    """Scores subnets of one trained supernet.

    ``evaluate`` returns one record per arch: ``arch_key``, ``arch`` (dict), ``accuracy``
    (validation, the search objective), ``test_accuracy``, ``latency_ms`` with
    ``latency_target``, ``latency_model``, ``flops``, ``params``, ``eval_s`` and
    ``evaluated_at`` (unix time); ``latency_measured_ms`` too where the subnet was also timed
    to check a non-measured latency model.
    """

    def __init__(self, checkpoint: str | bytes, data: Mapping[str, Any],
                 latency: Mapping[str, Any], evaluator: Mapping[str, Any] | None = None,
                 expected_space: dict | None = None, threads: int = 1,
                 known: Sequence[Mapping[str, Any]] = ()):
        """``checkpoint``: a checkpoint directory, or its ``supernet.pt`` bytes. ``known``:
        records evaluated before (a resumed search); asking for them costs nothing."""
        torch.set_num_threads(threads)
        expected = SearchSpace.from_dict(expected_space) if expected_space else None
        state = load_checkpoint(checkpoint, expected=expected)
        self.space: SearchSpace = state["space"]
        self.supernet = create_supernet(self.space)
        self.supernet.load_state_dict(state["model"])
        self.supernet.eval()
        self.input_shape = get_family(self.space.family).input_shape(dict(self.space.model))
        self.splits: Splits = load_data(DataConfig(**data), self.input_shape)
        self.cfg = EvaluatorConfig(**(evaluator or {}))
        lat = LatencyConfig(**latency)
        self.meter = MeasuredLatency(lat.target, lat.batch_size, lat.threads,
                                     lat.min_run_time_s)
        self.latency: LatencyModel = build_latency_model(lat, self.space, self.meter)
        self.measured = (self.latency if self.latency.kind == "measured"
                         else build_measured(lat, self.space, self.meter))
        self.drift_share = lat.drift_share if self.latency.kind != "measured" else 0.0
        b = self.cfg.calib_batch_size
        self._calib = [self.splits.x_train[i * b:(i + 1) * b]
                       for i in range(self.cfg.calib_batches)]
        self._cache: dict[str, dict[str, Any]] = {r["arch_key"]: dict(r) for r in known}
        self.calls = 0
        self.scored = 0  # subnets evaluated by this process (cache hits excluded)

    def ready(self) -> bool:
        """Cheap call to wait on actor start-up."""
        return True

    def evaluate(self, archs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Metrics for each arch (validated against the space first), in order."""
        self.calls += 1
        return [self._one(self.space.validate(a)) for a in archs]

    def _one(self, arch: Arch) -> dict[str, Any]:
        hit = self._cache.get(arch.key)
        if hit is not None:
            return hit
        t0 = time.perf_counter()
        record = self.score(arch, self.prepare(arch))
        record["eval_s"] = time.perf_counter() - t0
        record["evaluated_at"] = time.time()
        self._cache[arch.key] = record
        self.scored += 1
        return record

    def score(self, arch: Arch, static: torch.nn.Module, measure: bool = False
              ) -> dict[str, Any]:
        """Metrics of ``static``, the subnet ``prepare(arch)`` returned (not cached).

        ``measure``: also time it here (``latency_measured_ms``) whatever the latency model;
        a seeded share (``latency.drift_share``) of subnets gets that anyway.
        """
        with torch.no_grad():
            val = float((static(self.splits.x_val).argmax(-1) == self.splits.y_val).float().mean())
            test = float((static(self.splits.x_test).argmax(-1) == self.splits.y_test)
                         .float().mean())
        example = self.meter.example(self.input_shape)
        record = {
            "arch_key": arch.key,
            "arch": arch.to_dict(),
            "accuracy": val,
            "test_accuracy": test,
            "latency_ms": self.latency.latency_ms(arch, static),
            "latency_target": self.latency.target,
            "latency_model": self.latency.kind,
            "flops": count_flops(static, example[:1]),
            "params": count_params(static),
        }
        if self.latency.node is not None:
            record["latency_node"] = self.latency.node
        if measure or _drift_pick(arch, self.drift_share):
            # Also timed here, so the predicted value can be checked against the truth.
            record["latency_measured_ms"] = (
                record["latency_ms"] if self.latency.kind == "measured"
                else self.measured.latency_ms(arch, static))
        return record

    def prepare(self, arch: Arch) -> torch.nn.Module:
        """Recalibrate BN for ``arch`` and return its static subnet (eval mode).

        The supernet stays set to ``arch`` with those statistics, so its output for ``arch``
        equals the static model's (what export checks).
        """
        self.supernet.set_arch(arch)
        recalibrate_batchnorm(self.supernet, self._calib, lambda m, b: m(b))
        self.supernet.eval()
        return extract(self.supernet, self.space, arch)

    @property
    def cache_size(self) -> int:
        return len(self._cache)


def _drift_pick(arch: Arch, share: float) -> bool:
    """Whether ``arch`` is in the checked share: a pseudo-random but reproducible choice by
    its key, so a rerun checks the same subnets."""
    return share > 0 and int(arch.key[:8], 16) < share * 16**8
