"""Dropout whose rate the training loop sets per subnet (``train.dropout``).

A family puts a ``SubnetDropout`` where its supernet regularises (every built-in family: on
the features entering the classifier, where Once-for-All and AlphaNet put their
``dropout_rate``); ``set_dropout`` sets the rate of all of them before each subnet's forward
pass. The rate starts at 0 and a module with rate 0 returns its input untouched (it draws no
random numbers), so a job without dropout computes exactly what it did before dropout
existed. Static models (export) have no dropout, and in eval mode it is off anyway.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SubnetDropout(nn.Module):
    """``F.dropout`` at rate ``p`` in training mode; identity in eval mode or at ``p = 0``.
    No parameters or buffers: state dicts (and export) do not see it."""

    def __init__(self) -> None:
        super().__init__()
        self.p = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.p > 0:
            return F.dropout(x, self.p, training=True)
        return x

    def extra_repr(self) -> str:
        return f"p={self.p}"


def set_dropout(net: nn.Module, p: float) -> int:
    """Set the rate of every ``SubnetDropout`` in ``net``; how many there are."""
    n = 0
    for module in net.modules():
        if isinstance(module, SubnetDropout):
            module.p = float(p)
            n += 1
    return n


def dropout_rates(net: nn.Module) -> list[float]:
    """The rate of every ``SubnetDropout`` in ``net`` (in module order)."""
    return [m.p for m in net.modules() if isinstance(m, SubnetDropout)]
