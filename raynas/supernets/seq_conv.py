"""The ``seq_conv`` family: a token tagger of 1-d convolutions over a sequence with lengths.

Layout: a token embedding (elastic width ``embed_dim``), then ``depth`` conv layers (elastic
``width`` shared by the layers, an elastic odd ``kernel`` per layer; layers after the first
are residual), ReLU, and a per-token linear head. Positions past a sequence's length are
zeroed after every layer, so padding never leaks into real tokens and a model's output for a
sequence does not depend on how far the batch is padded.

Task: ``tagging``. Dimensions: ``embed_dim`` (choice), ``depth`` (int), ``width`` (choice),
``kernel`` (per_layer over ``depth``, odd). Model settings: ``vocab_size``, ``num_classes``,
``max_len``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from raynas.errors import ConfigError
from raynas.nn import ElasticConv1d, ElasticEmbedding, ElasticLinear, SubnetDropout
from raynas.space import Arch, Choice, PerLayer, SearchSpace
from raynas.supernets import Family, register_family

DIMS = ("embed_dim", "depth", "width", "kernel")


def _mask(lengths: torch.Tensor, t: int) -> torch.Tensor:
    """``(n, 1, t)``: 1.0 at real tokens, 0.0 at padding."""
    steps = torch.arange(t, device=lengths.device)
    return (steps.unsqueeze(0) < lengths.unsqueeze(1)).unsqueeze(1).to(torch.float32)


def _run(embed: nn.Module, layers, head: nn.Module, depth: int, tokens, lengths,
         drop: nn.Module | None = None):
    mask = _mask(lengths, tokens.shape[1])
    x = embed(tokens).transpose(1, 2) * mask  # (n, channels, t)
    for j in range(depth):
        y = F.relu(layers[j](x)) * mask
        x = y if j == 0 else x + y
    x = x.transpose(1, 2)
    return head(drop(x) if drop is not None else x)  # (n, t, classes)


def _check(space: SearchSpace) -> None:
    for key in ("vocab_size", "num_classes", "max_len"):
        if key not in space.model:
            raise ConfigError(f"space {space.name!r}: model.{key} is required by family "
                              "'seq_conv'")
    for name in DIMS:
        if name not in space.names:
            raise ConfigError(f"space {space.name!r}: family 'seq_conv' needs dimension "
                              f"{name!r}")
    for name in ("embed_dim", "width"):
        d = space.dim(name)
        if not isinstance(d, Choice) or not all(isinstance(v, int) for v in d.values):
            raise ConfigError(f"space {space.name!r}: {name} must be a choice of integers")
    kernel = space.dim("kernel")
    if not isinstance(kernel, PerLayer) or kernel.depth != "depth" or not all(
            isinstance(k, int) and k % 2 == 1 for k in kernel.values):
        raise ConfigError(f"space {space.name!r}: kernel must be a per_layer choice of odd "
                          "integers with depth 'depth'")


class SeqConvSupernet(nn.Module):
    """Every subnet of a ``seq_conv`` space in one set of weights; ``set_arch`` first."""

    def __init__(self, space: SearchSpace):
        super().__init__()
        _check(space)
        m = space.model
        embed, width = max(space.dim("embed_dim").values), max(space.dim("width").values)
        kmax = max(space.dim("kernel").values)
        self.embed = ElasticEmbedding(m["vocab_size"], embed)
        self.layers = nn.ModuleList(
            ElasticConv1d(embed if j == 0 else width, width, kmax)
            for j in range(space.dim("depth").largest()))
        self.head = ElasticLinear(width, m["num_classes"])
        self.drop = SubnetDropout()  # on each token's features (train.dropout sets the rate)
        self.set_arch(space.largest())

    def set_arch(self, arch: Arch) -> None:
        self.embed.configure(arch["embed_dim"])
        cin = arch["embed_dim"]
        for j, k in enumerate(arch["kernel"]):
            self.layers[j].configure(cin, arch["width"], k)
            cin = arch["width"]
        self.head.configure(arch["width"], self.head.max_out)
        self.depth = arch["depth"]
        self.arch = arch

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return _run(self.embed, self.layers, self.head, self.depth, tokens, lengths,
                    self.drop)


class StaticSeqConv(nn.Module):
    """One subnet as a plain torch model, from model settings and an Arch alone."""

    def __init__(self, model: dict[str, Any], arch: Arch):
        super().__init__()
        self.embed = nn.Embedding(model["vocab_size"], arch["embed_dim"])
        w = arch["width"]
        self.layers = nn.ModuleList(
            nn.Conv1d(arch["embed_dim"] if j == 0 else w, w, k, padding=k // 2)
            for j, k in enumerate(arch["kernel"]))
        self.head = nn.Linear(w, model["num_classes"])

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return _run(self.embed, self.layers, self.head, len(self.layers), tokens, lengths)


register_family(Family(
    name="seq_conv",
    supernet=SeqConvSupernet,
    static=StaticSeqConv,
    tasks=("tagging",),
    dims=lambda model: set(DIMS),
))
