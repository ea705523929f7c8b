"""Learned latency predictors, fitted on measured ``(arch, latency_ms)`` samples.

Two kinds:

* ``MLPPredictor`` (``"mlp"``): HAT's predictor, an MLP on the space's arch encoding.
* ``FlopsLinear`` (``"flops"``): the FLOPs proxy made honest, ``ms = a * flops + b``.

``fit_predictor`` validates the records, splits them by arch into train and held-out sets,
fits on the train split and reports held-out metrics (``regression_metrics``); the returned
predictor is exactly the one the metrics describe. ``save`` / ``load_predictor`` keep it in one
file of tensors and plain values (``torch.load(weights_only=True)``), tied to the space's
fingerprint and to the measurement settings (target, batch size, threads, torch version).

A record is a mapping with ``arch`` (valid in the space), ``latency_ms`` (> 0) and optionally
``flops``, ``latency_target``, ``batch_size``, ``threads`` and ``torch_version``.

Modules: ``metrics`` (``regression_metrics``), ``base`` (``LatencyPredictor`` and the file
format), ``mlp``, ``flops`` (the two kinds) and ``fit`` (record checks, ``fit_predictor``,
``load_predictor``).
"""

from __future__ import annotations

from raynas.latency.predictor.base import MEASUREMENT_FIELDS, FlopsFn, LatencyPredictor
from raynas.latency.predictor.fit import KINDS, fit_predictor, load_predictor
from raynas.latency.predictor.flops import FlopsLinear
from raynas.latency.predictor.metrics import regression_metrics
from raynas.latency.predictor.mlp import MLPPredictor

__all__ = ["KINDS", "MEASUREMENT_FIELDS", "FlopsFn", "FlopsLinear", "LatencyPredictor",
           "MLPPredictor", "fit_predictor", "load_predictor", "regression_metrics"]
