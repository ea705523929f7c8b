"""Activation functions by the names model settings use (``activation: gelu``).

Blocks hold the function itself, not a module: a static subnet then calls it directly, with no
module call per activation, and the supernet and the static model call the same function.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "hardswish": F.hardswish,
    "relu": F.relu,
    "silu": F.silu,  # swish: the Conformer's
}
