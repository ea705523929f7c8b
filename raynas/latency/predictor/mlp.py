"""HAT's latency predictor: an MLP on the arch encoding, fitted on log latency."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from raynas.errors import ConfigError
from raynas.latency.predictor.base import LatencyPredictor, _is_number
from raynas.space import Arch, SearchSpace


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

