"""Fitting a predictor on measured records (checked, deduplicated, split by arch) and
loading a saved one."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from raynas.checkpoint import load_torch_file
from raynas.errors import CheckpointError, ConfigError, RaynasError
from raynas.latency.predictor.base import (
    FORMAT,
    FORMAT_VERSION,
    MEASUREMENT_FIELDS,
    FlopsFn,
    LatencyPredictor,
    _is_number,
)
from raynas.latency.predictor.flops import FlopsLinear
from raynas.latency.predictor.metrics import regression_metrics
from raynas.latency.predictor.mlp import MLPPredictor
from raynas.space import SearchSpace

MIN_RECORDS = 10
MIN_HELD_OUT = 2
#: Records mixing different values of these are refused: their latencies are not comparable.
_MUST_AGREE = ("latency_target", "batch_size", "threads")

KINDS: dict[str, type[LatencyPredictor]] = {"mlp": MLPPredictor, "flops": FlopsLinear}


def _plain(value: Any) -> Any:
    """numpy scalars as Python ones: the saved file must load with ``weights_only=True``."""
    return value.item() if isinstance(value, np.generic) else value


def _clean_records(records: Sequence[Mapping[str, Any]], space: SearchSpace,
                   need_flops: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Validate, check measurement settings agree, dedupe by arch key (mean latency)."""
    if isinstance(records, Mapping) or not isinstance(records, Sequence):
        raise ConfigError("latency records must be a list of {arch, latency_ms, ...} mappings")
    if not records:
        raise ConfigError("no latency records to fit on")
    first = records[0]
    measurement = ({f: _plain(first.get(f)) for f in MEASUREMENT_FIELDS}
                   if isinstance(first, Mapping) else {})
    by_key: dict[str, dict[str, Any]] = {}
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping) or "arch" not in rec or "latency_ms" not in rec:
            raise ConfigError(f"latency record {i}: needs 'arch' and 'latency_ms', got "
                              f"{sorted(rec) if isinstance(rec, Mapping) else type(rec).__name__}")
        try:
            arch = space.validate(rec["arch"])
        except RaynasError as exc:
            raise ConfigError(f"latency record {i}: {exc}") from None
        ms = rec["latency_ms"]
        if not _is_number(ms) or not math.isfinite(ms) or ms <= 0:
            raise ConfigError(f"latency record {i}: latency_ms = {ms!r}, must be a finite "
                              "number > 0")
        for f in _MUST_AGREE:
            if rec.get(f) != measurement[f]:
                raise ConfigError(
                    f"latency records mix measurement settings: record 0 has {f} = "
                    f"{measurement[f]!r}, record {i} has {rec.get(f)!r}; fit one predictor "
                    "per target, batch size and thread count")
        flops = rec.get("flops")
        if need_flops and (not _is_number(flops) or not math.isfinite(flops) or flops < 0):
            raise ConfigError(f"latency record {i}: flops = {flops!r}; the 'flops' predictor "
                              "needs a FLOPs count (>= 0) in every record")
        entry = by_key.setdefault(arch.key, {"arch": arch, "ms": [], "flops": flops})
        entry["ms"].append(float(ms))
    clean = [{"arch": e["arch"], "latency_ms": sum(e["ms"]) / len(e["ms"]), "flops": e["flops"]}
             for e in by_key.values()]
    return clean, measurement


def fit_predictor(records: Sequence[Mapping[str, Any]], space: SearchSpace, kind: str = "mlp",
                  holdout: float = 0.2, seed: int = 0,
                  **options: Any) -> tuple[LatencyPredictor, dict[str, float]]:
    """Fit a ``kind`` predictor on measured records; return it and its held-out metrics.

    Records are validated against ``space`` and deduplicated by arch (repeated measurements of
    one arch are averaged). Distinct archs are shuffled with ``seed`` and ``holdout`` of them
    kept out of training; the predictor is fitted on the rest and never refitted, so the
    returned metrics (``regression_metrics`` on the held-out archs, plus ``n_train`` and
    ``n_test``) describe the returned predictor exactly. ``options`` go to the predictor's
    constructor (for ``"mlp"``: ``steps``, ``lr``, ...; for ``"flops"``: ``flops_fn``;
    ``seed`` is passed to the MLP too).
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown latency predictor kind {kind!r}; "
                          f"choose from {', '.join(KINDS)}")
    if not _is_number(holdout) or not 0 < holdout < 1:
        raise ConfigError(f"holdout = {holdout!r}: must be a fraction strictly between 0 and 1")
    clean, measurement = _clean_records(records, space, need_flops=(kind == "flops"))
    n = len(clean)
    if n < MIN_RECORDS:
        raise ConfigError(f"need latency records of at least {MIN_RECORDS} distinct archs to fit "
                          f"a predictor, got {n} (from {len(records)} records)")
    n_test = int(round(holdout * n))
    if n_test < MIN_HELD_OUT or n - n_test < 2:
        raise ConfigError(f"holdout = {holdout} of {n} distinct archs leaves {n_test} held-out "
                          f"and {n - n_test} for training; need at least {MIN_HELD_OUT} of each")
    clean.sort(key=lambda r: r["arch"].key)  # the split depends on the seed, not record order
    random.Random(seed).shuffle(clean)
    test, train = clean[:n_test], clean[n_test:]

    if kind == "mlp":
        options.setdefault("seed", seed)
    try:
        predictor = KINDS[kind](space, **options)
    except TypeError as exc:
        raise ConfigError(f"latency predictor {kind!r}: {exc}") from None
    predictor._fit(train)
    predictor.n_train = len(train)
    predictor.measurement = measurement
    metrics = regression_metrics(predictor._predict_records(test),
                                 [r["latency_ms"] for r in test])
    del metrics["n"]
    metrics.update(n_train=len(train), n_test=len(test))
    predictor.metrics = dict(metrics)
    return predictor, metrics


# ---- loading ---------------------------------------------------------------------------------
def load_predictor(path: str | Path, space: SearchSpace, *,
                   flops_fn: FlopsFn | None = None) -> LatencyPredictor:
    """Load a predictor saved by ``LatencyPredictor.save`` for ``space``.

    Raises ``CheckpointError`` if the file is missing, unreadable, not a raynas latency
    predictor, or was fitted for a space with another fingerprint. ``flops_fn`` is handed to
    a ``"flops"`` predictor (ignored by the others).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"latency predictor {str(path)!r} does not exist")
    payload = load_torch_file(path, f"latency predictor {str(path)!r}")
    if (not isinstance(payload, dict) or payload.get("format") != FORMAT
            or not {"kind", "space_fingerprint", "state"} <= payload.keys()):
        raise CheckpointError(f"{str(path)!r} is not a raynas latency predictor file")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"latency predictor {str(path)!r} has format version "
                              f"{payload.get('format_version')!r}; this raynas reads "
                              f"version {FORMAT_VERSION}")
    kind = payload["kind"]
    if kind not in KINDS:
        raise CheckpointError(f"latency predictor {str(path)!r} is of unknown kind {kind!r}")
    if payload["space_fingerprint"] != space.fingerprint:
        raise CheckpointError(
            f"latency predictor {str(path)!r} was fitted for space "
            f"{payload.get('space_name')!r} (fingerprint {payload['space_fingerprint']}); "
            f"this job uses space {space.name!r} (fingerprint {space.fingerprint})")
    predictor = FlopsLinear(space, flops_fn=flops_fn) if kind == "flops" else KINDS[kind](space)
    try:
        predictor._load_state(payload["state"])
        predictor.measurement = {f: payload.get("measurement", {}).get(f)
                                 for f in MEASUREMENT_FIELDS}
        predictor.n_train = int(payload["n_train"])
        predictor.metrics = dict(payload.get("metrics", {}))
    except Exception as exc:
        raise CheckpointError(f"latency predictor {str(path)!r} is damaged: "
                              f"{type(exc).__name__}: {exc}") from None
    return predictor
