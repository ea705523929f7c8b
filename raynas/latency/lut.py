"""Lookup-table latency: profile each distinct op once on the target, sum a subnet's ops.

A table is a JSON file (plain data, safe to load from anywhere)::

    {"format": "raynas-latency-lut/1", "family": "cnn", "target": "local-cpu",
     "batch_size": 1, "threads": 1, "torch_version": "2.13.0+cpu",
     "overhead_ms": 0.004, "ops": {"cnn.conv(c16>24,k3,s1)@8": 0.0123, ...}}

``overhead_ms`` is what a whole subnet costs beyond the sum of its ops (the Python call chain
between them), fitted as the median gap over a few measured subnets. Op keys name the
computation and its input shape, so one table serves every space of a family whose ops it
covers.
"""

from __future__ import annotations

import json
import os
import random
import statistics
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from raynas.errors import ConfigError
from raynas.latency.measure import MeasuredLatency
from raynas.latency.table import torch_version
from raynas.space import Arch, SearchSpace

FORMAT = "raynas-latency-lut/1"


class LatencyLUT:
    def __init__(self, ops: dict[str, float], family: str, target: str, batch_size: int,
                 threads: int, torch_version: str, overhead_ms: float = 0.0):
        self.ops, self.family, self.target = dict(ops), family, target
        self.batch_size, self.threads, self.torch_version = batch_size, threads, torch_version
        self.overhead_ms = overhead_ms

    def op_sum_ms(self, space: SearchSpace, arch: Arch) -> float:
        from raynas.supernets import subnet_ops

        total = 0.0
        for op in subnet_ops(space, arch):
            ms = self.ops.get(op.key)
            if ms is None:
                raise ConfigError(f"latency lookup table has no entry for op {op.key!r} of "
                                  f"arch {arch.key}; rebuild it for space {space.name!r} "
                                  "(raynas latency profile JOB --lut)")
            total += ms
        return total

    def latency_ms(self, space: SearchSpace, arch: Arch) -> float:
        return self.overhead_ms + self.op_sum_ms(space, arch)

    # ---- building --------------------------------------------------------------------------
    @classmethod
    def build(cls, space: SearchSpace, meter: MeasuredLatency, calibrate: int = 8,
              seed: int = 0, progress: Callable[[str], None] | None = None) -> LatencyLUT:
        """Time every distinct op of ``space`` once, then fit the overhead on ``calibrate``
        random whole subnets."""
        from raynas.supernets import build_static, subnet_ops
        from raynas.tasks import example_args

        ops = {}
        for arch in _cover(space, seed):
            for op in subnet_ops(space, arch):
                ops.setdefault(op.key, op)
        table: dict[str, float] = {}
        for i, (key, op) in enumerate(sorted(ops.items())):
            table[key] = meter.measure_ms(op.build().eval(), op.input_shape)
            if progress and (i + 1) % 16 == 0:
                progress(f"lut {i + 1}/{len(ops)} ops")
        lut = cls(table, space.family, meter.target, meter.batch_size, meter.threads,
                  torch_version())
        if calibrate:
            rng = random.Random(seed)
            inputs = example_args(space, meter.batch_size)
            gaps = []
            for _ in range(calibrate):
                arch = space.sample(rng)
                gaps.append(meter.measure_ms(build_static(space, arch).eval(), inputs)
                            - lut.op_sum_ms(space, arch))
            lut.overhead_ms = statistics.median(gaps)
        return lut

    # ---- files -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "family": self.family, "target": self.target,
                "batch_size": self.batch_size, "threads": self.threads,
                "torch_version": self.torch_version, "overhead_ms": self.overhead_ms,
                "ops": dict(sorted(self.ops.items()))}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> LatencyLUT:
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"latency.lut = {str(path)!r}: no such file; build one with "
                              "`raynas latency profile JOB.yaml --lut`") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"latency.lut = {str(path)!r}: not a lookup table ({e})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ConfigError(f"latency.lut = {str(path)!r}: not a lookup table (expected "
                              f"format {FORMAT!r})")
        return cls.from_dict(doc)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> LatencyLUT:
        return cls(doc["ops"], doc["family"], doc["target"], doc["batch_size"],
                   doc["threads"], doc["torch_version"], doc.get("overhead_ms", 0.0))


def _cover(space: SearchSpace, seed: int, limit: int = 200_000,
           samples: int = 20_000) -> Iterable[Arch]:
    """Archs whose ops cover the space: all of them when it is small enough, else many
    samples plus the largest and smallest."""
    size = space.size()
    if size is not None and size <= limit:
        return space.enumerate()
    rng = random.Random(seed)
    return [space.largest(), space.smallest(), *(space.sample(rng) for _ in range(samples))]
