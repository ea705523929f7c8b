"""The ``resnet20_pool`` family: a ResNet-20 whose architecture is where (and how) it
downsamples, the search space of Balanced Mixture of SuperNets (Javan et al., 2023).

Layout: ``len(model.channels)`` layers: a 3x3 conv stem (``channels[0]``), then residual
basic blocks (conv3x3-BN-ReLU-conv3x3-BN plus a shortcut, then ReLU) of ``channels[1:]``.
A block whose channels differ from its input's has a 1x1 conv + BN projection shortcut. The
channels belong to the layer, not to a resolution, so where the network downsamples changes
its compute and its receptive field, never its parameters: every subnet holds all weights.

Dimensions:

- ``layout`` (choice of strings): layers per resolution in the paper's notation, ``"4-3-3"``
  for the default ResNet-20: the stem and 3 blocks at full resolution, then 3 blocks at half,
  3 at a quarter. The parts are >= 1 and add up to the number of layers; every value of a
  space has the same number of parts. List the values from least to most compute (the space's
  smallest and largest subnet are the first and last).
- ``down1``, ``down2``, ... (optional choices of ``pool`` / ``stride``): how the j-th
  downsampling is done: a 2x2 max-pool before the block (as in the paper) or a stride-2 first
  conv (and shortcut). Without the dimension, ``model.downsample`` (default ``pool``).

Model settings: ``in_channels``, ``num_classes``, ``image_size``, ``channels``;
optional ``downsample`` (``pool``), ``bn_affine`` (true; the paper's BN has no affine
parameters). The paper normalises with batch statistics at evaluation too; here BN keeps
running statistics, which the evaluator recalibrates per subnet, so a deployed subnet does not
depend on its batch.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from raynas.errors import ConfigError
from raynas.nn import ElasticConv2d, ElasticLinear, SubnetDropout
from raynas.space import Arch, Choice, SearchSpace
from raynas.supernets import Family, Op, register_family
from raynas.supernets.cnn import ConvBNReLU, PoolLinear

MODES = ("pool", "stride")
_MODEL_KEYS = ("in_channels", "num_classes", "image_size", "channels")


def parse_layout(layout: str) -> tuple[int, ...]:
    """``"4-3-3"`` -> ``(4, 3, 3)``."""
    return tuple(int(p) for p in layout.split("-"))


def downsample_at(layout: str) -> tuple[int, ...]:
    """Indices of the layers that start a new resolution (the stem is layer 0)."""
    parts = parse_layout(layout)
    return tuple(sum(parts[:j]) for j in range(1, len(parts)))


def _settings(space: SearchSpace) -> dict[str, Any]:
    m = dict(space.model)
    for key in _MODEL_KEYS:
        if key not in m:
            raise ConfigError(f"space {space.name!r}: model.{key} is required by family "
                              "'resnet20_pool'")
    ch = m["channels"]
    if not isinstance(ch, list) or len(ch) < 2 or not all(
            isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in ch):
        raise ConfigError(f"space {space.name!r}: model.channels = {ch!r}: must list >= 2 "
                          "positive integers (the stem's, then one per residual block)")
    if m.get("downsample", "pool") not in MODES:
        raise ConfigError(f"space {space.name!r}: model.downsample = {m['downsample']!r}: "
                          f"allowed: {', '.join(MODES)}")
    if "layout" not in space.names:
        raise ConfigError(f"space {space.name!r}: family 'resnet20_pool' needs dimension "
                          "'layout' (a choice of layers per resolution, e.g. '4-3-3')")
    layout = space.dim("layout")
    parts = set()
    for value in layout.values if isinstance(layout, Choice) else [None]:
        try:
            p = parse_layout(value)
        except (AttributeError, ValueError):
            p = ()
        if not p or min(p) < 1 or sum(p) != len(ch):
            raise ConfigError(
                f"space {space.name!r}: layout value {value!r}: must be a string of layer "
                f"counts per resolution, each >= 1, adding up to {len(ch)} "
                f"(len(model.channels)), e.g. {'-'.join(['1'] * (len(ch) - 2) + ['2'])!r}")
        parts.add(len(p))
    if len(parts) != 1:
        raise ConfigError(f"space {space.name!r}: layout values have {sorted(parts)} parts; "
                          "all must have the same number of resolutions")
    downs = parts.pop() - 1
    for name in space.names:
        if name.startswith("down") and name != "downsample":
            j = name[4:]
            if not j.isdigit() or not 1 <= int(j) <= downs:
                raise ConfigError(f"space {space.name!r}: dimension {name!r}: layouts "
                                  f"downsample {downs} times, so down1..down{downs} exist")
            d = space.dim(name)
            if not isinstance(d, Choice) or not set(d.values) <= set(MODES):
                raise ConfigError(f"space {space.name!r}: {name} must be a choice of "
                                  f"{', '.join(MODES)}")
    return m


def plan(model: dict[str, Any], arch: Arch) -> tuple[str | None, ...]:
    """Per layer: ``None`` or how that layer downsamples its input (``pool``/``stride``)."""
    steps: list[str | None] = [None] * len(model["channels"])
    default = model.get("downsample", "pool")
    for j, layer in enumerate(downsample_at(arch["layout"]), start=1):
        steps[layer] = arch.get(f"down{j}", default)
    return tuple(steps)


def _bn(channels: int, affine: bool) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, affine=affine)


def _conv(cin: int, cout: int, kernel: int, elastic: bool) -> nn.Module:
    """A bias-free conv (padding keeps the size). The supernet's is an ``ElasticConv2d``
    that never slices (a layout keeps every weight) so weight schemes reach it; it starts from
    torch's default init, like the static model's."""
    conv = nn.Conv2d(cin, cout, kernel, 1, kernel // 2, bias=False)
    if not elastic:
        return conv
    op = ElasticConv2d(cin, cout, kernel)
    with torch.no_grad():
        op.weight.copy_(conv.weight)
    return op


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut, ReLU; after ``set_stride(2)`` the first conv
    and the shortcut downsample."""

    def __init__(self, cin: int, cout: int, affine: bool, elastic: bool = False):
        super().__init__()
        self.conv1 = _conv(cin, cout, 3, elastic)
        self.bn1 = _bn(cout, affine)
        self.conv2 = _conv(cout, cout, 3, elastic)
        self.bn2 = _bn(cout, affine)
        self.proj = None
        if cin != cout:
            self.proj = nn.Sequential(_conv(cin, cout, 1, elastic), _bn(cout, affine))
        self.stride = 1

    def set_stride(self, stride: int) -> None:
        self.stride = stride
        for conv in (self.conv1, self.proj[0] if self.proj is not None else None):
            if isinstance(conv, nn.Conv2d):
                conv.stride = (stride, stride)
            elif conv is not None:
                conv.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if self.proj is not None:
            short = self.proj(x)
        else:
            short = x if self.stride == 1 else x[:, :, ::2, ::2]
        return F.relu(out + short)


def _layers(model: dict[str, Any], elastic: bool = False) -> nn.ModuleList:
    ch, affine = model["channels"], bool(model.get("bn_affine", True))
    return nn.ModuleList([ConvBNReLU(model["in_channels"], ch[0], 3, 1, affine)]
                         + [BasicBlock(ch[i - 1], ch[i], affine, elastic)
                            for i in range(1, len(ch))])


def _run(layers: nn.ModuleList, fc: nn.Module, pools: tuple[bool, ...],
         x: torch.Tensor, drop: nn.Module | None = None) -> torch.Tensor:
    for layer, pool in zip(layers, pools):
        x = layer(F.max_pool2d(x, 2, ceil_mode=True) if pool else x)
    x = x.mean(dim=(2, 3))
    return fc(drop(x) if drop is not None else x)


def _apply(layers: nn.ModuleList, steps) -> tuple[bool, ...]:
    """Set each block's stride for ``steps`` (see ``plan``); the layers preceded by a pool."""
    for layer, step in zip(layers[1:], steps[1:]):
        layer.set_stride(2 if step == "stride" else 1)
    return tuple(step == "pool" for step in steps)


class ResNetPoolSupernet(nn.Module):
    """Every downsampling layout of one ResNet in one set of weights; ``set_arch`` first."""

    def __init__(self, space: SearchSpace):
        super().__init__()
        self.model = _settings(space)
        self.layers = _layers(self.model, elastic=True)
        self.fc = ElasticLinear(self.model["channels"][-1], self.model["num_classes"])
        self.drop = SubnetDropout()  # on the pooled features (train.dropout sets the rate)
        self.set_arch(space.largest())

    def set_arch(self, arch: Arch) -> None:
        self.pools = _apply(self.layers, plan(self.model, arch))
        self.arch = arch

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return _run(self.layers, self.fc, self.pools, images, self.drop)


class StaticResNetPool(nn.Module):
    """One layout as a plain torch model, from model settings and an Arch alone."""

    def __init__(self, model: dict[str, Any], arch: Arch):
        super().__init__()
        self.layers = _layers(model)
        self.fc = nn.Linear(model["channels"][-1], model["num_classes"])
        self.pools = _apply(self.layers, plan(model, arch))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return _run(self.layers, self.fc, self.pools, images)


class _LayerOp(nn.Module):
    """One layer with the downsampling before or in it (a lookup-table op)."""

    def __init__(self, cin: int, cout: int, stem: bool, step: str | None, affine: bool):
        super().__init__()
        self.layer = (ConvBNReLU(cin, cout, 3, 1, affine) if stem
                      else BasicBlock(cin, cout, affine))
        self.pool = step == "pool"
        if step == "stride":
            self.layer.set_stride(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(F.max_pool2d(x, 2, ceil_mode=True) if self.pool else x)


def _ops(model: dict[str, Any], arch: Arch) -> list[Op]:
    """Every layer (with how it downsamples) and the pooled head, keyed by shape."""
    size, cin = model["image_size"], model["in_channels"]
    affine = bool(model.get("bn_affine", True))
    bn = "" if affine else ",bn-noaffine"
    ops = []
    for i, (cout, step) in enumerate(zip(model["channels"], plan(model, arch))):
        kind = "stem" if i == 0 else "block"
        ops.append(Op(f"resnet20_pool.{kind}(c{cin}>{cout},{step or 'keep'}{bn})@{size}",
                      functools.partial(_LayerOp, cin, cout, i == 0, step, affine),
                      (cin, size, size)))
        size = (size + 1) // 2 if step else size
        cin = cout
    classes = model["num_classes"]
    ops.append(Op(f"resnet20_pool.head(c{cin}>{classes})@{size}",
                  functools.partial(PoolLinear, cin, classes), (cin, size, size)))
    return ops


def _dims(model: dict[str, Any]) -> set[str]:
    layers = len(model.get("channels", []))
    return {"layout"} | {f"down{j}" for j in range(1, max(layers, 1))}


register_family(Family(
    name="resnet20_pool",
    supernet=ResNetPoolSupernet,
    static=StaticResNetPool,
    tasks=("classification",),
    dims=_dims,
    ops=_ops,
))
