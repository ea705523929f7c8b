"""The latency predictor interface, its file format and the measurement settings it keeps."""

from __future__ import annotations

import numbers
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from raynas.errors import RaynasError
from raynas.space import Arch, SearchSpace

FORMAT = "raynas-latency-predictor"
FORMAT_VERSION = 1

#: Record fields that describe how latencies were measured; a predictor keeps their values.
MEASUREMENT_FIELDS = ("latency_target", "batch_size", "threads", "torch_version")

FlopsFn = Callable[[Arch], int]


def _is_number(value: Any) -> bool:
    """A real number (numpy scalars from a Parquet table included), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


class LatencyPredictor(ABC):
    """Predicts the latency in ms of archs of one space, for one measurement setting.

    ``measurement`` holds the settings the training latencies were measured under
    (``latency_target``, ``batch_size``, ``threads``, ``torch_version``; None where the records
    did not say), ``n_train`` the number of distinct archs it was fitted on and ``metrics`` its
    held-out ``regression_metrics`` (with ``n_train`` and ``n_test``), as ``fit_predictor``
    computed them.
    """

    kind: ClassVar[str]

    def __init__(self, space: SearchSpace):
        self.space = space
        self.measurement: dict[str, Any] = {f: None for f in MEASUREMENT_FIELDS}
        self.n_train = 0
        self.metrics: dict[str, float] = {}

    @abstractmethod
    def predict_ms(self, archs: Sequence[Mapping[str, Any]]) -> list[float]:
        """Predicted latency in ms of each arch (each validated against the space)."""

    @abstractmethod
    def _fit(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Fit on validated, deduplicated records (``arch`` is an Arch)."""

    def _predict_records(self, records: Sequence[Mapping[str, Any]]) -> list[float]:
        """Predictions for validated records (held-out evaluation); FlopsLinear reads flops."""
        return self.predict_ms([r["arch"] for r in records])

    @abstractmethod
    def _state(self) -> dict[str, Any]:
        """The fitted parameters: tensors and plain values only."""

    @abstractmethod
    def _load_state(self, state: Mapping[str, Any]) -> None: ...

    @property
    def meta(self) -> dict[str, Any]:
        """Measurement setting and fit summary, keyed as latency tables and LUTs key them
        (``target``, ``batch_size``, ``threads``, ``torch_version``, ``kind``, ``n_train``,
        ``metrics``)."""
        return {"target": self.measurement["latency_target"],
                "batch_size": self.measurement["batch_size"],
                "threads": self.measurement["threads"],
                "torch_version": self.measurement["torch_version"],
                "kind": self.kind, "n_train": self.n_train, "metrics": dict(self.metrics)}

    @property
    def fitted(self) -> bool:
        return self.n_train > 0

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise RaynasError(f"{type(self).__name__} is not fitted: use fit_predictor() or "
                              "load_predictor()")

    def _validate_archs(self, archs: Sequence[Mapping[str, Any]]) -> list[Arch]:
        if isinstance(archs, Mapping):  # one arch passed where a list is expected
            raise TypeError("predict_ms takes a sequence of archs, not one arch")
        return [self.space.validate(a) for a in archs]

    def save(self, path: str | Path) -> Path:
        """Write the predictor to ``path`` (atomically); return the path."""
        self._require_fitted()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "space_name": self.space.name,
            "space_fingerprint": self.space.fingerprint,
            "measurement": dict(self.measurement),
            "n_train": int(self.n_train),
            "metrics": dict(self.metrics),
            "state": self._state(),
        }
        tmp = path.with_name(path.name + ".tmp")
        torch.save(payload, tmp)
        tmp.replace(path)  # a crash never leaves half a file under the real name
        return path

