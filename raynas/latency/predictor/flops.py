"""The FLOPs proxy as a latency predictor: a least-squares line from FLOPs to ms."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from raynas.errors import ConfigError
from raynas.latency.predictor.base import FlopsFn, LatencyPredictor
from raynas.space import SearchSpace


class FlopsLinear(LatencyPredictor):
    """The FLOPs proxy as a predictor: ``ms = a * flops + b``, least squares on the records'
    ``flops``.

    Only ``a`` and ``b`` are stored. To predict for new archs it needs ``flops_fn(arch) ->
    int`` (build the static subnet and count its FLOPs), given here or to ``load_predictor``.
    """

    kind = "flops"

    def __init__(self, space: SearchSpace, *, flops_fn: FlopsFn | None = None):
        super().__init__(space)
        self.flops_fn = flops_fn
        self.a = 0.0
        self.b = 0.0

    def predict_from_flops(self, flops: Sequence[float]) -> list[float]:
        self._require_fitted()
        return [self.a * float(f) + self.b for f in flops]

    def predict_ms(self, archs: Sequence[Mapping[str, Any]]) -> list[float]:
        self._require_fitted()
        if self.flops_fn is None:
            raise ConfigError("FlopsLinear.predict_ms needs FLOPs of each arch: pass "
                              "flops_fn=(arch -> FLOPs) when building or loading the "
                              "predictor, or use predict_from_flops()")
        valid = self._validate_archs(archs)
        return self.predict_from_flops([self.flops_fn(a) for a in valid])

    def _predict_records(self, records: Sequence[Mapping[str, Any]]) -> list[float]:
        return self.predict_from_flops([r["flops"] for r in records])

    def _fit(self, records: Sequence[Mapping[str, Any]]) -> None:
        flops = np.array([float(r["flops"]) for r in records])
        ms = np.array([float(r["latency_ms"]) for r in records])
        if np.ptp(flops) == 0:
            raise ConfigError(f"FlopsLinear: all {len(records)} training records have the same "
                              f"flops ({flops[0]:.0f}); a line through them is undetermined")
        design = np.stack([flops, np.ones_like(flops)], axis=1)
        (a, b), *_ = np.linalg.lstsq(design, ms, rcond=None)
        self.a, self.b = float(a), float(b)

    def _state(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        self.a = float(state["a"])
        self.b = float(state["b"])

