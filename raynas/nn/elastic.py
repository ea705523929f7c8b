"""Elastic ops: hold full-size parameters, run the active slice, hand the slice to export.

Each op has an *active configuration* set by its supernet's ``set_arch`` (``active_in``,
``active_out``, ``active_kernel``). ``forward`` computes with the active weights and
``active_state()`` returns those same tensors keyed like the state dict of the equivalent
plain torch op, which is how ``export.extract`` builds a static subnet. Weight schemes other
than front-slicing act through the op's *weight provider*: every op reads its full-size
tensors with ``self.param(name)``, which is the op's own parameter unless a scheme installed a
provider (``raynas.weights``) that generates the tensor from the active arch. Forward and
``active_state()`` both read through it, so forward and export agree by construction.

Slicing follows Once-for-All: the first ``n`` output/input channels, and the centre
``k x k`` crop of the largest kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ElasticModule(nn.Module):
    """Base class: a module whose ``active_state()`` describes its current slice.

    ``param(name)`` is the one way an op reads its full-size tensors (the weight seam): the
    op's own parameter, or what the provider installed as ``self.weight_provider`` (a module,
    so its tensors live in the state dict) returns for it, given the arch the scheme saw.
    Slicing is applied after, so a scheme never needs to know how an op slices.
    """

    def param(self, name: str) -> torch.Tensor | None:
        provider = self._modules.get("weight_provider")
        if provider is None:
            return getattr(self, name)
        return provider(self, name)

    def active_state(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def _centre_crop(weight: torch.Tensor, k: int) -> torch.Tensor:
    full = weight.shape[-1]
    if k == full:
        return weight
    start = (full - k) // 2
    return weight[..., start : start + k, start : start + k]


class ElasticConv2d(ElasticModule):
    """Conv2d with elastic input channels, output channels and (odd, square) kernel size.

    Padding is ``k // 2`` so every kernel size keeps the spatial shape. No bias: these convs
    are always followed by a norm.
    """

    def __init__(self, max_in: int, max_out: int, max_kernel: int, stride: int = 1):
        super().__init__()
        if max_kernel % 2 != 1:
            raise ValueError(f"kernel sizes must be odd, got {max_kernel}")
        self.max_in, self.max_out, self.max_kernel, self.stride = (
            max_in, max_out, max_kernel, stride
        )
        self.weight = nn.Parameter(torch.empty(max_out, max_in, max_kernel, max_kernel))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        self.active_in, self.active_out, self.active_kernel = max_in, max_out, max_kernel

    def configure(self, in_channels: int, out_channels: int, kernel: int) -> None:
        self.active_in, self.active_out, self.active_kernel = in_channels, out_channels, kernel

    def active_weight(self) -> torch.Tensor:
        w = self.param("weight")
        if self.active_out != self.max_out or self.active_in != self.max_in:
            w = w[: self.active_out, : self.active_in]
        return _centre_crop(w, self.active_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.active_weight(), None, self.stride, self.active_kernel // 2)

    def active_state(self) -> dict[str, torch.Tensor]:
        return {"weight": self.active_weight()}

    def extra_repr(self) -> str:
        return (f"max_in={self.max_in}, max_out={self.max_out}, "
                f"max_kernel={self.max_kernel}, stride={self.stride}")


class ElasticDepthwiseConv2d(ElasticModule):
    """Depthwise Conv2d (one filter per channel) with elastic channels and (odd) kernel size.

    Static counterpart: ``nn.Conv2d(c, c, k, stride, k // 2, groups=c, bias=False)``.
    """

    def __init__(self, max_channels: int, max_kernel: int, stride: int = 1):
        super().__init__()
        if max_kernel % 2 != 1:
            raise ValueError(f"kernel sizes must be odd, got {max_kernel}")
        self.max_channels, self.max_kernel, self.stride = max_channels, max_kernel, stride
        self.weight = nn.Parameter(torch.empty(max_channels, 1, max_kernel, max_kernel))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        self.active_channels, self.active_kernel = max_channels, max_kernel

    def configure(self, channels: int, kernel: int) -> None:
        self.active_channels, self.active_kernel = channels, kernel

    def active_weight(self) -> torch.Tensor:
        w = self.param("weight")
        if self.active_channels != self.max_channels:
            w = w[: self.active_channels]
        return _centre_crop(w, self.active_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.active_weight(), None, self.stride, self.active_kernel // 2, 1,
                        self.active_channels)

    def active_state(self) -> dict[str, torch.Tensor]:
        return {"weight": self.active_weight()}


class ElasticConv1d(ElasticModule):
    """Conv1d over time with elastic input and output channels and (odd) kernel size, and a
    bias. Padding is ``k // 2`` so every kernel size keeps the sequence length."""

    def __init__(self, max_in: int, max_out: int, max_kernel: int):
        super().__init__()
        if max_kernel % 2 != 1:
            raise ValueError(f"kernel sizes must be odd, got {max_kernel}")
        self.max_in, self.max_out, self.max_kernel = max_in, max_out, max_kernel
        ref = nn.Conv1d(max_in, max_out, max_kernel)  # borrow torch's default init
        self.weight = nn.Parameter(ref.weight.detach().clone())
        self.bias = nn.Parameter(ref.bias.detach().clone())
        self.active_in, self.active_out, self.active_kernel = max_in, max_out, max_kernel

    def configure(self, in_channels: int, out_channels: int, kernel: int) -> None:
        self.active_in, self.active_out, self.active_kernel = in_channels, out_channels, kernel

    def active_weight(self) -> torch.Tensor:
        w = self.param("weight")[: self.active_out, : self.active_in]
        start = (self.max_kernel - self.active_kernel) // 2
        return w[..., start : start + self.active_kernel]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.active_weight(), self.active_bias(), 1, self.active_kernel // 2)

    def active_bias(self) -> torch.Tensor:
        return self.param("bias")[: self.active_out]

    def active_state(self) -> dict[str, torch.Tensor]:
        return {"weight": self.active_weight(), "bias": self.active_bias()}


class ElasticEmbedding(ElasticModule):
    """Token embedding whose vectors keep their first ``active_dim`` components."""

    def __init__(self, num_embeddings: int, max_dim: int):
        super().__init__()
        self.num_embeddings, self.max_dim = num_embeddings, max_dim
        self.weight = nn.Parameter(torch.randn(num_embeddings, max_dim))
        self.active_dim = max_dim

    def configure(self, dim: int) -> None:
        self.active_dim = dim

    def active_weight(self) -> torch.Tensor:
        return self.param("weight")[:, : self.active_dim]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.embedding(tokens, self.active_weight())

    def active_state(self) -> dict[str, torch.Tensor]:
        return {"weight": self.active_weight()}


class ElasticLinear(ElasticModule):
    """Linear layer with elastic input and output features."""

    def __init__(self, max_in: int, max_out: int, bias: bool = True):
        super().__init__()
        self.max_in, self.max_out = max_in, max_out
        ref = nn.Linear(max_in, max_out, bias=bias)  # borrow torch's default init
        self.weight = nn.Parameter(ref.weight.detach().clone())
        self.bias = nn.Parameter(ref.bias.detach().clone()) if bias else None
        self.active_in, self.active_out = max_in, max_out

    def configure(self, in_features: int, out_features: int) -> None:
        self.active_in, self.active_out = in_features, out_features

    def active_weight(self) -> torch.Tensor:
        w = self.param("weight")
        if self.active_out == self.max_out and self.active_in == self.max_in:
            return w
        return w[: self.active_out, : self.active_in]

    def active_bias(self) -> torch.Tensor | None:
        b = self.param("bias")
        if b is None or self.active_out == self.max_out:
            return b
        return b[: self.active_out]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.active_weight(), self.active_bias())

    def active_state(self) -> dict[str, torch.Tensor]:
        state = {"weight": self.active_weight()}
        if self.bias is not None:
            state["bias"] = self.active_bias()
        return state


class ElasticBatchNorm2d(ElasticModule):
    """BatchNorm2d over the first ``active_features`` channels.

    Running statistics are sliced too; training updates only the active slice in place.
    ``momentum=None`` gives a cumulative average (used for BN recalibration).
    """

    def __init__(self, max_features: int, eps: float = 1e-5, momentum: float | None = 0.1):
        super().__init__()
        self.max_features, self.eps, self.momentum = max_features, eps, momentum
        self.weight = nn.Parameter(torch.ones(max_features))
        self.bias = nn.Parameter(torch.zeros(max_features))
        self.register_buffer("running_mean", torch.zeros(max_features))
        self.register_buffer("running_var", torch.ones(max_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        self.active_features = max_features

    def configure(self, features: int) -> None:
        self.active_features = features

    def reset_running_stats(self) -> None:
        self.running_mean.zero_()
        self.running_var.fill_(1.0)
        self.num_batches_tracked.zero_()

    def _slices(self):
        c = self.active_features
        weight, bias = self.param("weight"), self.param("bias")
        if c == self.max_features:
            return weight, bias, self.running_mean, self.running_var
        return weight[:c], bias[:c], self.running_mean[:c], self.running_var[:c]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias, mean, var = self._slices()
        factor = 0.0
        if self.training:
            self.num_batches_tracked.add_(1)
            factor = (1.0 / float(self.num_batches_tracked)) if self.momentum is None \
                else self.momentum
        # Slices of the buffers are views, so F.batch_norm updates the active part in place.
        return F.batch_norm(x, mean, var, weight, bias, self.training, factor, self.eps)

    def active_state(self) -> dict[str, torch.Tensor]:
        weight, bias, mean, var = self._slices()
        return {"weight": weight, "bias": bias, "running_mean": mean, "running_var": var,
                "num_batches_tracked": self.num_batches_tracked}


def recalibrate_batchnorm(model: nn.Module, batches, forward) -> None:
    """Reset every BN's running statistics and re-estimate them as a cumulative average.

    ``forward(model, batch)`` runs one batch; ``batches`` yields the calibration batches.
    Used before evaluating a subnet: running statistics gathered while training the whole
    supernet do not belong to any single subnet.
    """
    norms = [m for m in model.modules()
             if isinstance(m, (ElasticBatchNorm2d, nn.modules.batchnorm._BatchNorm))]
    saved = [(m, m.momentum) for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for batch in batches:
            forward(model, batch)
    for m, momentum in saved:
        m.momentum = momentum
    model.train(was_training)
