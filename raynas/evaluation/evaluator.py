"""``Evaluator``: checkpoint + archs -> metrics. Pure Python/torch, no Ray.

Loaded once (the supernet, the task and its data, the latency model), then asked for many
archs. Each subnet gets its BatchNorm statistics recalibrated on a seeded random sample of
training batches before it is scored (statistics gathered while training the whole supernet
belong to no single subnet), then the task's metrics on the validation split (what the
search optimises) and on the test split (reported only, as ``test_<metric>``), its extracted
static model's latency, FLOPs and parameters. Results are cached by Arch key: asking twice
costs nothing. With a GPU (``device``) the scoring runs there; latency is timed on the
latency section's own device. With ``search.evaluator.halving`` and the search's objectives, a
subnet is scored on a slice of the validation set first, and on more only while it could still
reach the front (``raynas.evaluation.halving``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from raynas.checkpoint import load_checkpoint
from raynas.config import EvaluatorConfig, LatencyConfig
from raynas.evaluation.halving import Halving, estimate
from raynas.export import extract
from raynas.latency import MeasuredLatency, count_flops, count_params
from raynas.latency.memory import peak_memory_mb
from raynas.latency.models import LatencyModel, build_latency_model, build_measured
from raynas.latency.targets import column as target_column
from raynas.latency.targets import target_configs
from raynas.nn import recalibrate_batchnorm
from raynas.space import Arch, SearchSpace
from raynas.supernets import create_supernet
from raynas.tasks import build_task, load_task_data, make_loader, sample_batches, to_device
from raynas.weights import active_net
from raynas.weights.masks import install_masks


class Evaluator:
    """Scores subnets of one trained supernet.

    ``evaluate`` returns one record per arch: ``arch_key``, ``arch`` (dict), every metric of
    the task on the validation split under its own name (``accuracy``, ``loss``...) and on the
    test split as ``test_<name>``, ``latency_ms`` with ``latency_target``, ``latency_model``,
    ``flops``, ``params``, ``peak_memory_mb`` (one inference at the latency batch size,
    ``raynas.latency.memory``), ``eval_device`` (where it was scored: cpu or cuda), ``eval_s`` and
    ``evaluated_at`` (unix time), in an evaluator pool ``evaluator`` (which one, from 0);
    ``latency_measured_ms`` too where the subnet was also timed to check a non-measured
    latency model, ``latency_node`` wherever a latency was measured and ``latency_spread``
    (its timing windows' spread, ``raynas.latency.measure.Timing``) wherever the job's own
    measured latency was timed rather than read from the table; with halving,
    ``fidelity`` (the share of the validation set scored: below 1, the metrics are estimates
    over it and the test metrics NaN).
    """

    index: int | None = None  # in a pool of evaluator actors

    def __init__(self, checkpoint: str | bytes, data: Mapping[str, Any],
                 latency: Mapping[str, Any], evaluator: Mapping[str, Any] | None = None,
                 expected_space: dict | None = None, threads: int = 1,
                 known: Sequence[Mapping[str, Any]] = (), task: Mapping[str, Any] | None = None,
                 device: str = "cpu", seed: int = 0, weights: Mapping[str, Any] | None = None,
                 objectives: Sequence[Sequence[Any]] = (),
                 constraints: Sequence[Sequence[Any]] = (), shared_meter: bool = False):
        """``checkpoint``: a checkpoint directory, or its ``supernet.pt`` bytes. ``known``:
        records evaluated before (a resumed search); asking for them costs nothing.
        ``weights``: the job's weight scheme, checked against the checkpoint's (None: the
        checkpoint's, unchecked). ``objectives`` (``(metric, goal)`` pairs) and
        ``constraints`` (``(metric, limit)``): the search's, which halving judges by; without
        objectives every subnet is scored in full. ``shared_meter``: time in the job's one
        meter actor per target (an evaluator pool), not in this process."""
        torch.set_num_threads(threads)
        expected = SearchSpace.from_dict(expected_space) if expected_space else None
        state = load_checkpoint(checkpoint, expected=expected, weights=weights)
        self.space: SearchSpace = state["space"]
        self.device = torch.device(device)
        self.supernet = create_supernet(self.space, state["weights"])
        self.supernet.load_state_dict(state["model"])
        masks = state.get("masks") or {}
        if masks.get("weights") or masks.get("channels"):  # trained with train.prune / a ticket
            install_masks(active_net(self.supernet), masks.get("weights"), masks.get("channels"))
        self.supernet.to(self.device).eval()
        self.task = build_task(self.space, task)
        self.data = load_task_data(self.task, data)
        self.cfg = EvaluatorConfig(**(evaluator or {}))
        batch = int(data.get("batch_size", 256))
        # Held once per actor, as batches: the val / test splits are what every subnet is
        # scored on (with halving, the val split in its rungs instead, below); the
        # calibration batches are a seeded random sample of the training set.
        self.test_batches = [to_device(b, self.device)
                             for b in make_loader(self.data.test, batch)]
        self._calib = [to_device(b, self.device) for b in sample_batches(
            self.data.train, self.cfg.calib_batches, self.cfg.calib_batch_size, seed)]
        lat = LatencyConfig(**latency)
        self.meter = MeasuredLatency.from_config(lat)
        self.latency: LatencyModel = build_latency_model(lat, self.space, self.meter,
                                                         shared_meter)
        self.measured = (self.latency if self.latency.kind == "measured"
                         else build_measured(lat, self.space, self.meter, shared=shared_meter))
        self.drift_share = lat.drift_share if self.latency.kind != "measured" else 0.0
        # latency.targets: more devices every subnet is timed on (latency_ms/<name>).
        self.confirm_run_time_s = lat.confirm_run_time_s
        self.targets = [(t.target, build_measured(t, self.space,
                                                  MeasuredLatency.from_config(t)))
                        for t in target_configs(lat)]
        ex = self.task.example_inputs(1)
        self._flops_inputs = tuple(ex[k] for k in self.task.input_names)
        ex = self.task.example_inputs(lat.batch_size)  # memory: at the deployed batch size
        self._memory_inputs = tuple(ex[k] for k in self.task.input_names)
        self._cache: dict[str, dict[str, Any]] = {r["arch_key"]: dict(r) for r in known}
        self.halving: Halving | None = None
        self.val_batches: list = []
        h = self.cfg.halving
        if h is None or h.start >= 1 or not objectives:
            self.val_batches = [to_device(b, self.device)
                                for b in make_loader(self.data.val, batch)]
        else:
            n = len(self.data.val)
            self.halving = Halving(h.start, h.eta, h.z, n, objectives, constraints,
                                   {m.name: m.goal for m in self.task.metrics}, known)
            (everything,) = sample_batches(self.data.val, 1, n, seed)  # seeded order
            self.rung_batches = []  # per rung, its new samples in batches
            for lo, hi in zip([0, *self.halving.ends], self.halving.ends):
                self.rung_batches.append([to_device({k: v[i:min(i + batch, hi)]
                                                     for k, v in everything.items()},
                                                    self.device)
                                          for i in range(lo, hi, batch)])
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
        if self.index is not None:  # which of a pool's evaluators scored it
            record["evaluator"] = self.index
        self._cache[arch.key] = record
        self.scored += 1
        if self.halving is not None:
            if record["fidelity"] < 1:
                self.halving.stopped += 1
            else:
                self.halving.add(record)
        return record

    def score(self, arch: Arch, static: torch.nn.Module, measure: bool = False
              ) -> dict[str, Any]:
        """Metrics of ``static``, the subnet ``prepare(arch)`` returned (not cached).

        ``measure``: also time it (``latency_measured_ms``) whatever the latency model;
        a seeded share (``latency.drift_share``) of subnets gets that anyway.
        """
        head: dict[str, Any] = {"arch_key": arch.key, "arch": arch.to_dict()}
        if self.halving is None:
            val = self.task.evaluate(static, self.val_batches, self.device)
            test = self.task.evaluate(static, self.test_batches, self.device)
            exact = self._exact(arch, static.to("cpu"), measure)
            return {**head, **val, **{f"test_{k}": v for k, v in test.items()}, **exact}
        # Halving: the exact metrics first (the optimistic point needs them), then the rungs.
        exact = self._exact(arch, static.to("cpu"), measure)
        static.to(self.device)
        val, fidelity = self._halved(static, exact)
        test = (self.task.evaluate(static, self.test_batches, self.device) if fidelity >= 1
                else {m.name: math.nan for m in self.task.metrics})
        return {**head, **val, **{f"test_{k}": v for k, v in test.items()}, **exact,
                "fidelity": fidelity}

    @torch.no_grad()
    def _halved(self, static: torch.nn.Module, exact: Mapping[str, Any]
                ) -> tuple[dict[str, float], float]:
        """The validation metrics over the rungs ``static`` reaches, and their share."""
        static.eval()
        parts: dict[str, tuple[list, list]] = {}  # metric -> per-sample sums, counts
        for end, batches in zip(self.halving.ends, self.rung_batches):
            for b in batches:
                for name, (s, n) in self.task.sample_sums(static(*self.task.inputs(b)),
                                                          b).items():
                    parts.setdefault(name, ([], []))
                    parts[name][0].append(s.numpy())
                    parts[name][1].append(n.numpy())
            sums = {name: (np.concatenate(s), np.concatenate(n))
                    for name, (s, n) in parts.items()}
            if end < self.halving.samples and self.halving.hopeless(exact, sums):
                break
        share = end / self.halving.samples
        return {name: ratio for name, (ratio, _) in estimate(sums, end).items()}, share

    def _exact(self, arch: Arch, cpu: torch.nn.Module, measure: bool) -> dict[str, Any]:
        """Latency, FLOPs, parameters and peak memory of the static subnet (on the CPU;
        timing moves it to the latency device itself)."""
        record = {
            "latency_ms": self.latency.latency_ms(arch, cpu),
            "latency_target": self.latency.target,
            "latency_model": self.latency.kind,
            "flops": count_flops(cpu, self._flops_inputs),
            "params": count_params(cpu),
            "peak_memory_mb": peak_memory_mb(cpu, self._memory_inputs),
            "eval_device": self.device.type,
        }
        if self.latency.node is not None:
            record["latency_node"] = self.latency.node
        if self.latency.spread is not None:
            record["latency_spread"] = self.latency.spread
        for name, model in self.targets:
            record[target_column(name)] = model.latency_ms(arch, cpu)
            if model.node is not None:
                record[f"latency_node/{name}"] = model.node
        if measure or _drift_pick(arch, self.drift_share):
            # Also timed here, so the predicted value can be checked against the truth.
            record["latency_measured_ms"] = (
                record["latency_ms"] if self.latency.kind == "measured"
                else self.measured.latency_ms(arch, cpu))
            if self.measured.node is not None:
                record["latency_node"] = self.measured.node
        return record

    def retime(self, archs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The confirmation pass: each arch timed again on the job's target for
        ``latency.confirm_run_time_s``, the archs' windows interleaved
        (``latency_confirm_ms``, ``latency_confirm_spread``, ``latency_node``). Only for the
        measured latency model."""
        if self.latency.kind != "measured" or not archs:
            return []
        out = []
        for i in range(0, len(archs), 16):  # 16 static models in memory at a time
            chunk = [self.space.validate(a) for a in archs[i:i + 16]]
            for ms, spread in self.latency.retime(chunk, run_time_s=self.confirm_run_time_s):
                out.append({"latency_confirm_ms": ms, "latency_confirm_spread": spread,
                            "latency_node": self.latency.node})
        return out

    def prepare(self, arch: Arch) -> torch.nn.Module:
        """Recalibrate BN for ``arch`` and return its static subnet (eval mode).

        The supernet stays set to ``arch`` with those statistics, so its output for ``arch``
        equals the static model's (what export checks).
        """
        self.supernet.set_arch(arch)
        recalibrate_batchnorm(self.supernet, self._calib,
                              lambda m, b: m(*self.task.inputs(b)))
        self.supernet.eval()
        return extract(self.supernet, self.space, arch).to(self.device)

    def inherit(self, arch: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The record of ``arch`` (as ``evaluate`` gives it) and the state dict, on the CPU,
        of its static subnet: the weights it inherits, BN recalibrated as it was scored
        (what ``raynas finetune`` trains on from)."""
        (record,) = self.evaluate([arch])
        static = self.prepare(self.space.validate(arch))
        return record, {k: v.cpu() for k, v in static.state_dict().items()}

    def example_batch(self, n: int = 256) -> dict[str, torch.Tensor]:
        """Up to ``n`` test samples on the CPU (export checks run on real inputs)."""
        return next(iter(make_loader(self.data.test, n)))

    @property
    def cache_size(self) -> int:
        return len(self._cache)


def _drift_pick(arch: Arch, share: float) -> bool:
    """Whether ``arch`` is in the checked share: a pseudo-random but reproducible choice by
    its key, so a rerun checks the same subnets."""
    return share > 0 and int(arch.key[:8], 16) < share * 16**8
