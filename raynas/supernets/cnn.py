"""The ``cnn`` family: a small residual CNN with elastic depth, width and kernel size.

Layout: a fixed 3x3 stem, then ``len(strides)`` stages. Stage ``i`` (1-based) reads three
dimensions of the space: ``s{i}_depth`` (layers kept, first ones first), ``s{i}_width``
(output channels of every layer in the stage) and ``s{i}_kernel`` (one odd kernel size per
layer). The first layer of a stage applies the stage's stride; later layers are residual.
Global average pooling and a linear classifier close the network.

Model settings (``model:`` in the space file): ``in_channels``, ``num_classes``,
``image_size``, ``stem_width``, ``strides``.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from raynas.errors import ConfigError
from raynas.nn import ElasticBatchNorm2d, ElasticConv2d, ElasticLinear, SubnetDropout
from raynas.space import Arch, Choice, IntRange, PerLayer, SearchSpace
from raynas.supernets import Family, Op, register_family

_MODEL_KEYS = ("in_channels", "num_classes", "image_size", "stem_width", "strides")


def _settings(space_name: str, model: dict[str, Any]) -> dict[str, Any]:
    for key in _MODEL_KEYS:
        if key not in model:
            raise ConfigError(f"space {space_name!r}: model.{key} is required by family 'cnn'")
    strides = model["strides"]
    if not isinstance(strides, list) or not strides or not all(s in (1, 2) for s in strides):
        raise ConfigError(f"space {space_name!r}: model.strides = {strides!r}: "
                          "must be a non-empty list of 1s and 2s")
    return model


def _stage_dims(space: SearchSpace, i: int) -> tuple[IntRange | Choice, Choice, PerLayer]:
    names = (f"s{i}_depth", f"s{i}_width", f"s{i}_kernel")
    try:
        depth, width, kernel = (space.dim(n) for n in names)
    except KeyError as exc:
        raise ConfigError(
            f"space {space.name!r}: family 'cnn' needs dimension {exc.args[0]!r} "
            f"(stage {i} of {len(space.model['strides'])} declared by model.strides)"
        ) from None
    if not isinstance(width, Choice) or not all(isinstance(v, int) for v in width.values):
        raise ConfigError(f"space {space.name!r}: {names[1]} must be a choice of integers")
    if not isinstance(kernel, PerLayer) or kernel.depth != names[0] or not all(
        isinstance(k, int) and k % 2 == 1 for k in kernel.values
    ):
        raise ConfigError(f"space {space.name!r}: {names[2]} must be a per_layer choice of "
                          f"odd integers with depth {names[0]}")
    return depth, width, kernel


def _forward(stem: nn.Module, stages: nn.ModuleList, head: nn.Module, drop: nn.Module,
             depths, x):
    x = stem(x)
    for stage, depth in zip(stages, depths):
        for j in range(depth):
            y = stage[j](x)
            x = y if j == 0 else x + y
    return head(drop(x.mean(dim=(2, 3))))


class ConvBNReLU(nn.Module):
    """Static conv (no bias) + BatchNorm + ReLU; padding keeps the spatial size.
    ``affine=False``: BN without scale and shift (resnet20_pool's paper setting)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, affine: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class ElasticConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int):
        super().__init__()
        self.conv = ElasticConv2d(cin, cout, kernel, stride)
        self.bn = ElasticBatchNorm2d(cout)

    def configure(self, cin: int, cout: int, kernel: int) -> None:
        self.conv.configure(cin, cout, kernel)
        self.bn.configure(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class CNNSupernet(nn.Module):
    """All subnets of a ``cnn`` space in one set of weights. Call ``set_arch`` before forward."""

    def __init__(self, space: SearchSpace):
        super().__init__()
        m = _settings(space.name, dict(space.model))
        self.space = space
        self.stem = ConvBNReLU(m["in_channels"], m["stem_width"], 3, 1)
        self.stages = nn.ModuleList()
        cin = m["stem_width"]
        for i, stride in enumerate(m["strides"], start=1):
            depth, width, kernel = _stage_dims(space, i)
            cout, k = max(width.values), max(kernel.values)
            layers = [ElasticConvBNReLU(cin if j == 0 else cout, cout, k, stride if j == 0 else 1)
                      for j in range(depth.largest())]
            self.stages.append(nn.ModuleList(layers))
            cin = cout
        self.head = ElasticLinear(cin, m["num_classes"])
        self.drop = SubnetDropout()  # on the pooled features (train.dropout sets the rate)
        self.set_arch(space.largest())

    def set_arch(self, arch: Arch) -> None:
        """Activate ``arch`` (assumed valid for the space; validate untrusted input first)."""
        cin = self.stem.conv.out_channels
        self.depths = []
        for i, stage in enumerate(self.stages, start=1):
            depth, width = arch[f"s{i}_depth"], arch[f"s{i}_width"]
            for j, kernel in enumerate(arch[f"s{i}_kernel"]):
                stage[j].configure(cin if j == 0 else width, width, kernel)
            self.depths.append(depth)
            cin = width
        self.head.configure(cin, self.head.max_out)
        self.arch = arch

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return _forward(self.stem, self.stages, self.head, self.drop, self.depths, images)


class StaticCNN(nn.Module):
    """One subnet as a plain torch model: built from model settings and an Arch alone."""

    def __init__(self, model: dict[str, Any], arch: Arch):
        super().__init__()
        self.stem = ConvBNReLU(model["in_channels"], model["stem_width"], 3, 1)
        self.stages = nn.ModuleList()
        cin = model["stem_width"]
        for i, stride in enumerate(model["strides"], start=1):
            width = arch[f"s{i}_width"]
            self.stages.append(nn.ModuleList(
                ConvBNReLU(cin if j == 0 else width, width, k, stride if j == 0 else 1)
                for j, k in enumerate(arch[f"s{i}_kernel"])
            ))
            cin = width
        self.head = nn.Linear(cin, model["num_classes"])

    @property
    def depths(self) -> list[int]:
        return [len(stage) for stage in self.stages]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # Same function as _forward, written flat: at batch 1 a deployed subnet's time is
        # mostly Python call overhead, so it skips the per-layer module wrapper and indexing.
        x = self.stem(images)
        for stage in self.stages:
            for j, layer in enumerate(stage):
                y = F.relu(layer.bn(layer.conv(x)))
                x = y if j == 0 else x + y
        return self.head(x.mean(dim=(2, 3)))


class _Residual(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.inner(x)


class PoolLinear(nn.Module):
    """Global average pooling, then a linear classifier (a lookup-table head op)."""

    def __init__(self, cin: int, classes: int):
        super().__init__()
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))


def _conv_op(cin: int, cout: int, k: int, s: int, residual: bool) -> nn.Module:
    layer = ConvBNReLU(cin, cout, k, s)
    return _Residual(layer) if residual else layer


def _ops(model: dict[str, Any], arch: Arch) -> list[Op]:
    """Stem, every conv layer (with its residual add after the first of a stage), pool+head."""
    size = model["image_size"]
    cin = model["stem_width"]
    c0 = model["in_channels"]
    ops = [Op(f"cnn.conv(c{c0}>{cin},k3,s1)@{size}",
              functools.partial(_conv_op, c0, cin, 3, 1, residual=False), (c0, size, size))]
    for i, stride in enumerate(model["strides"], start=1):
        width = arch[f"s{i}_width"]
        for j, k in enumerate(arch[f"s{i}_kernel"]):
            s = stride if j == 0 else 1
            a, b = (cin if j == 0 else width), width
            key = f"cnn.conv(c{a}>{b},k{k},s{s})@{size}" + ("+res" if j else "")
            build = functools.partial(_conv_op, a, b, k, s, residual=j > 0)
            ops.append(Op(key, build, (a, size, size)))
            if j == 0:
                size = (size + 2 * (k // 2) - k) // s + 1
        cin = width
    classes = model["num_classes"]
    ops.append(Op(f"cnn.head(c{cin}>{classes})@{size}",
                  functools.partial(PoolLinear, cin, classes), (cin, size, size)))
    return ops


def _dims(model: dict[str, Any]) -> set[str]:
    return {f"s{i}_{part}" for i in range(1, len(model.get("strides", [])) + 1)
            for part in ("depth", "width", "kernel")}


register_family(Family(
    name="cnn",
    supernet=CNNSupernet,
    static=StaticCNN,
    tasks=("classification",),
    dims=_dims,
    ops=_ops,
))
