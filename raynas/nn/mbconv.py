"""Inverted residual (MBConv) blocks, static and elastic, as MobileNetV2/V3 and ElasticViT use them.

One block, input ``cin`` channels, output ``cout``, inner width ``cin * expand``:

1. ``pw``: 1x1 conv to the inner width + BN + activation (absent when ``expand`` is 1);
2. ``dw``: depthwise ``kernel`` x ``kernel`` conv with the block's stride + BN + activation;
3. ``se`` (optional): squeeze-excite, a per-channel gate from the mean over the map
   (linear to ``inner // 4``, ReLU, linear back, hard sigmoid);
4. ``pwl``: 1x1 conv to ``cout`` + BN, no activation (a linear bottleneck);
5. plus the shortcut: the input itself when the stride is 1 and ``cin == cout``; otherwise the
   input average-pooled 2x2 (stride 2; on an odd-sized map padded by one pixel, as ElasticViT
   does, so the pool and the strided conv give the same size), then a 1x1 ``shortcut`` conv
   where ``cin != cout``.

The elastic block slices input, inner and output channels from the front and crops kernels at
the centre (``raynas.nn.elastic``); stride and squeeze-excite are fixed per block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raynas.nn.activations import ACTIVATIONS
from raynas.nn.elastic import (
    ElasticBatchNorm2d,
    ElasticConv2d,
    ElasticDepthwiseConv2d,
    ElasticLinear,
)


def _se(m: SqueezeExcite | ElasticSqueezeExcite, x: torch.Tensor) -> torch.Tensor:
    s = F.hardsigmoid(m.fc2(F.relu(m.fc1(x.mean(dim=(2, 3))))))
    return x * s.unsqueeze(-1).unsqueeze(-1)


def se_width(channels: int) -> int:
    """The squeeze width of a squeeze-excite over ``channels``."""
    return max(1, channels // 4)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.fc1 = nn.Linear(channels, se_width(channels))
        self.fc2 = nn.Linear(se_width(channels), channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _se(self, x)


class ElasticSqueezeExcite(nn.Module):
    def __init__(self, max_channels: int):
        super().__init__()
        self.fc1 = ElasticLinear(max_channels, se_width(max_channels))
        self.fc2 = ElasticLinear(se_width(max_channels), max_channels)

    def configure(self, channels: int) -> None:
        self.fc1.configure(channels, se_width(channels))
        self.fc2.configure(se_width(channels), channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _se(self, x)


def _mbconv(m: MBConv | ElasticMBConv, x: torch.Tensor) -> torch.Tensor:
    y = x
    if m.use_pw:
        y = m.act(m.pw_bn(m.pw(y)))
    y = m.act(m.dw_bn(m.dw(y)))
    if m.se is not None:
        y = m.se(y)
    y = m.pwl_bn(m.pwl(y))
    if m.identity:
        return y + x
    if m.stride > 1:
        x = F.avg_pool2d(x, 2, padding=m.pool_pad)
    if m.use_shortcut:
        x = m.shortcut(x)
    return y + x


def _pool_pad(stride: int, in_size: int) -> int:
    if stride not in (1, 2):
        raise ValueError(f"MBConv strides are 1 or 2, got {stride}")
    return in_size % 2 if stride == 2 else 0


class MBConv(nn.Module):
    """One inverted residual block (see the module docstring). ``in_size``: the side of the
    input map (an odd size pads the strided shortcut's pool); ``act``: an activation name."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int, se: bool,
                 act: str, in_size: int):
        super().__init__()
        inner = cin * expand
        self.stride, self.pool_pad = stride, _pool_pad(stride, in_size)
        self.act = ACTIVATIONS[act]
        self.use_pw = expand > 1
        self.identity = stride == 1 and cin == cout
        self.use_shortcut = cin != cout
        if self.use_pw:
            self.pw = nn.Conv2d(cin, inner, 1, bias=False)
            self.pw_bn = nn.BatchNorm2d(inner)
        self.dw = nn.Conv2d(inner, inner, kernel, stride, kernel // 2, groups=inner, bias=False)
        self.dw_bn = nn.BatchNorm2d(inner)
        self.se = SqueezeExcite(inner) if se else None
        self.pwl = nn.Conv2d(inner, cout, 1, bias=False)
        self.pwl_bn = nn.BatchNorm2d(cout)
        if self.use_shortcut:
            self.shortcut = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _mbconv(self, x)


class ElasticMBConv(nn.Module):
    """``MBConv`` with elastic input/output channels, expand ratio and kernel size.

    ``shortcut``: hold a shortcut conv (needed when the active ``cin`` may differ from
    ``cout``: the first block of a stage). The ``pw`` conv exists when ``max_expand > 1`` and
    is skipped while the active ratio is 1.
    """

    def __init__(self, max_cin: int, max_cout: int, max_expand: int, max_kernel: int,
                 stride: int, se: bool, act: str, in_size: int, shortcut: bool = True):
        super().__init__()
        inner = max_cin * max_expand
        self.max_expand = max_expand
        self.stride, self.pool_pad = stride, _pool_pad(stride, in_size)
        self.act = ACTIVATIONS[act]
        if max_expand > 1:
            self.pw = ElasticConv2d(max_cin, inner, 1)
            self.pw_bn = ElasticBatchNorm2d(inner)
        self.dw = ElasticDepthwiseConv2d(inner, max_kernel, stride)
        self.dw_bn = ElasticBatchNorm2d(inner)
        self.se = ElasticSqueezeExcite(inner) if se else None
        self.pwl = ElasticConv2d(inner, max_cout, 1)
        self.pwl_bn = ElasticBatchNorm2d(max_cout)
        self.shortcut = ElasticConv2d(max_cin, max_cout, 1) if shortcut else None
        self.configure(max_cin, max_cout, max_expand, max_kernel)

    def configure(self, cin: int, cout: int, expand: int, kernel: int) -> None:
        if cin != cout and self.shortcut is None:
            raise ValueError(f"this block has no shortcut conv: cin ({cin}) must equal cout "
                             f"({cout})")
        if expand > self.max_expand:
            raise ValueError(f"expand ratio {expand} exceeds the maximum {self.max_expand}")
        inner = cin * expand
        self.use_pw = expand > 1
        self.identity = self.stride == 1 and cin == cout
        self.use_shortcut = cin != cout
        if self.use_pw:
            self.pw.configure(cin, inner, 1)
            self.pw_bn.configure(inner)
        self.dw.configure(inner, kernel)
        self.dw_bn.configure(inner)
        if self.se is not None:
            self.se.configure(inner)
        self.pwl.configure(inner, cout, 1)
        self.pwl_bn.configure(cout)
        if self.shortcut is not None:
            self.shortcut.configure(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _mbconv(self, x)
