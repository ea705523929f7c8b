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
"""

from __future__ import annotations

import contextlib
import math
import numbers
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from raynas.errors import CheckpointError, ConfigError, RaynasError
from raynas.space import Arch, SearchSpace

FORMAT = "raynas-latency-predictor"
FORMAT_VERSION = 1
MIN_RECORDS = 10
MIN_HELD_OUT = 2

#: Record fields that describe how latencies were measured. Records mixing different values of
#: the first three are refused: their latencies are not comparable.
MEASUREMENT_FIELDS = ("latency_target", "batch_size", "threads", "torch_version")
_MUST_AGREE = ("latency_target", "batch_size", "threads")

FlopsFn = Callable[[Arch], int]


# ---- metrics ---------------------------------------------------------------------------------
def regression_metrics(pred: Sequence[float], true: Sequence[float]) -> dict[str, float]:
    """Accuracy of predicted latencies ``pred`` against measured ``true`` (both in ms).

    Returns ``rmse_ms``, ``mape`` (mean |pred - true| / true, a fraction, not a percent),
    ``within_10pct`` (share of predictions with |pred - true| / true <= 0.10), ``kendall_tau``
    (rank agreement, what a latency-constrained search relies on; NaN when fewer than two
    values or when either side is constant) and ``n``.
    """
    p = np.asarray(pred, dtype=np.float64).reshape(-1)
    t = np.asarray(true, dtype=np.float64).reshape(-1)
    if p.shape != t.shape:
        raise ValueError(f"regression_metrics: {p.size} predictions for {t.size} true values")
    if p.size == 0:
        raise ValueError("regression_metrics: no values")
    if not (np.all(np.isfinite(t)) and np.all(t > 0)):
        raise ValueError("regression_metrics: true latencies must be finite and > 0")
    rel = np.abs(p - t) / t
    tau = float("nan")
    if p.size >= 2 and np.ptp(p) > 0 and np.ptp(t) > 0:
        from scipy.stats import kendalltau  # lazy: scipy is slow to import

        tau = float(kendalltau(p, t).statistic)
    return {
        "rmse_ms": float(np.sqrt(np.mean((p - t) ** 2))),
        "mape": float(np.mean(rel)),
        # A tolerance so that an error of exactly 10% (as written in decimal) counts as within.
        "within_10pct": float(np.mean(rel <= 0.10 + 1e-12)),
        "kendall_tau": tau,
        "n": int(p.size),
    }


# ---- base ------------------------------------------------------------------------------------
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


# ---- MLP -------------------------------------------------------------------------------------
@contextlib.contextmanager
def _torch_threads(limit: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, min(previous, limit)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class _Adam:
    """Adam with L2 weight decay (as ``torch.optim.Adam(weight_decay=...)``) and a cosine
    learning-rate decay to zero over ``total`` steps.

    Written out because constructing any ``torch.optim`` optimizer imports ``torch._dynamo``,
    2.5-4.5 s on the 2-core CI machine: more than the whole fit. A unit test checks it gives
    the same weights as ``torch.optim.Adam`` + ``CosineAnnealingLR``.
    """

    def __init__(self, params: Sequence[torch.Tensor], lr: float, weight_decay: float,
                 total: int, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params = list(params)
        self.lr, self.weight_decay, self.total = lr, weight_decay, total
        self.b1, self.b2 = betas
        self.eps = eps
        self.t = 0
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self) -> None:
        lr = self.lr * 0.5 * (1 + math.cos(math.pi * self.t / self.total))
        self.t += 1
        grads = [p.grad for p in self.params]
        if self.weight_decay:
            grads = torch._foreach_add(grads, self.params, alpha=self.weight_decay)
        torch._foreach_lerp_(self.m, grads, 1 - self.b1)
        torch._foreach_mul_(self.v, self.b2)
        torch._foreach_addcmul_(self.v, grads, grads, value=1 - self.b2)
        denom = torch._foreach_sqrt(self.v)
        torch._foreach_div_(denom, math.sqrt(1 - self.b2 ** self.t))
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(self.params, self.m, denom, value=-lr / (1 - self.b1 ** self.t))


def _mlp(n_in: int, hidden: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = n_in
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


class MLPPredictor(LatencyPredictor):
    """HAT's latency predictor: an MLP on ``space.encode(arch)``.

    ``encoding_size`` inputs, three hidden layers of 400 with ReLU, one output. Features are
    standardised with the training mean and std. The target is **log(latency_ms)**,
    standardised: a ±10% accuracy bar is a multiplicative error, and on a log scale a 10%
    miss costs the same for a 0.1 ms subnet as for a 10 ms one, where plain MSE on ms would
    spend the fit on the slowest subnets. Trained with Adam on MSE over shuffled
    mini-batches, the learning rate decayed along a cosine to zero.

    Defaults were chosen by measurement (synthetic digits_cnn latencies with ±2% noise, ~480
    training archs, 4 data seeds, scored on 2,000 unseen archs): L2 weight decay 1e-3 and lr
    3e-3 raised the share predicted within 10% from 0.91 (plain Adam, lr 1e-3) to 0.97 and
    cut the mean relative error from 4.5% to 3.1%. Mini-batches of 32 for 1,000 steps match
    batches of 128 in accuracy at a quarter of the arithmetic (~3 s on one CPU core for
    1,000 records). Averaging 3 or 5 seeds gained under one point for 3-5x the fit time, so
    there is no ensemble option.

    Fits use at most ``max_threads`` torch threads and leave the caller's torch RNG state
    alone; the same records and seed give the same model.
    """

    kind = "mlp"

    def __init__(self, space: SearchSpace, *, hidden: Sequence[int] = (400, 400, 400),
                 steps: int = 1000, minibatch_size: int = 32, lr: float = 3e-3,
                 weight_decay: float = 1e-3, seed: int = 0, max_threads: int = 2):
        super().__init__(space)
        if not hidden or any(isinstance(h, bool) or not isinstance(h, int) or h < 1
                             for h in hidden):
            raise ConfigError(f"MLPPredictor: hidden must be a list of positive layer widths, "
                              f"got {hidden!r}")
        for name, value in (("steps", steps), ("minibatch_size", minibatch_size),
                            ("max_threads", max_threads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"MLPPredictor: {name} must be an integer >= 1, got {value!r}")
        if not (_is_number(lr) and lr > 0 and _is_number(weight_decay) and weight_decay >= 0):
            raise ConfigError(f"MLPPredictor: need lr > 0 and weight_decay >= 0, got "
                              f"lr={lr!r}, weight_decay={weight_decay!r}")
        self.hidden = [int(h) for h in hidden]
        self.steps = steps
        self.minibatch_size = minibatch_size
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.seed = int(seed)
        self.max_threads = max_threads
        self._net: nn.Sequential | None = None
        self._x_mean = torch.zeros(space.encoding_size)
        self._x_std = torch.ones(space.encoding_size)
        self._y_mean = 0.0
        self._y_std = 1.0

    def _encode(self, archs: Sequence[Arch]) -> torch.Tensor:
        x = torch.tensor([self.space.encode(a) for a in archs], dtype=torch.float32)
        return x.reshape(len(archs), self.space.encoding_size)

    def _fit(self, records: Sequence[Mapping[str, Any]]) -> None:
        raw = self._encode([r["arch"] for r in records])
        self._x_mean = raw.mean(0)
        std = raw.std(0, unbiased=False)
        self._x_std = torch.where(std > 1e-6, std, torch.ones_like(std))  # constant columns
        x = (raw - self._x_mean) / self._x_std
        y_log = torch.tensor([math.log(r["latency_ms"]) for r in records], dtype=torch.float64)
        self._y_mean = float(y_log.mean())
        self._y_std = float(y_log.std(unbiased=False)) or 1.0
        y = ((y_log - self._y_mean) / self._y_std).float().unsqueeze(1)

        n = len(records)
        batch = min(self.minibatch_size, n)
        with _torch_threads(self.max_threads), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            gen = torch.Generator().manual_seed(self.seed)
            net = _mlp(self.space.encoding_size, self.hidden)
            opt = _Adam(list(net.parameters()), self.lr, self.weight_decay, self.steps)
            net.train()
            order, pos = torch.randperm(n, generator=gen), 0
            for _ in range(self.steps):
                if pos + batch > n:  # a new epoch: reshuffle
                    order, pos = torch.randperm(n, generator=gen), 0
                idx = order[pos:pos + batch]
                pos += batch
                loss = nn.functional.mse_loss(net(x[idx]), y[idx])
                net.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        net.eval()
        self._net = net

    def predict_ms(self, archs: Sequence[Mapping[str, Any]]) -> list[float]:
        self._require_fitted()
        assert self._net is not None
        valid = self._validate_archs(archs)
        if not valid:
            return []
        x = (self._encode(valid) - self._x_mean) / self._x_std
        with _torch_threads(self.max_threads), torch.no_grad():
            z = self._net(x).squeeze(1)
        log_ms = z.double() * self._y_std + self._y_mean
        return [float(v) for v in torch.exp(log_ms)]

    def _state(self) -> dict[str, Any]:
        assert self._net is not None
        return {
            "encoding_size": self.space.encoding_size,
            "hidden": list(self.hidden),
            "x_mean": self._x_mean.clone(),
            "x_std": self._x_std.clone(),
            "y_mean": self._y_mean,
            "y_std": self._y_std,
            "net": dict(self._net.state_dict()),
            "options": {"steps": self.steps, "minibatch_size": self.minibatch_size,
                        "lr": self.lr, "weight_decay": self.weight_decay, "seed": self.seed},
        }

    def _load_state(self, state: Mapping[str, Any]) -> None:
        if int(state["encoding_size"]) != self.space.encoding_size:
            raise ValueError(f"encoding size {state['encoding_size']} != "
                             f"{self.space.encoding_size}")
        self.hidden = [int(h) for h in state["hidden"]]
        opts = state.get("options", {})
        for name in ("steps", "minibatch_size", "seed"):
            if name in opts:
                setattr(self, name, int(opts[name]))
        for name in ("lr", "weight_decay"):
            if name in opts:
                setattr(self, name, float(opts[name]))
        self._x_mean = state["x_mean"].float()
        self._x_std = state["x_std"].float()
        self._y_mean = float(state["y_mean"])
        self._y_std = float(state["y_std"])
        net = _mlp(self.space.encoding_size, self.hidden)
        net.load_state_dict(state["net"])
        net.eval()
        self._net = net


# ---- FLOPs -----------------------------------------------------------------------------------
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


KINDS: dict[str, type[LatencyPredictor]] = {"mlp": MLPPredictor, "flops": FlopsLinear}


# ---- fitting ---------------------------------------------------------------------------------
def _is_number(value: Any) -> bool:
    """A real number (numpy scalars from a Parquet table included), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


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
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, foreign pickle: name the file, no traceback
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"latency predictor {str(path)!r} cannot be read: {first}") from None
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
