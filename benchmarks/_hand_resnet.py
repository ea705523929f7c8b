"""A ResNet of the ``resnet20_pool`` family written out by hand, for the overhead benchmark.

Plain ``nn.Conv2d`` / ``nn.BatchNorm2d`` / ``nn.Linear`` with the layout baked in at build
time: max-pool flags and conv strides are fixed, the forward is one flat loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class HandResNetPool(nn.Module):
    def __init__(self, static: nn.Module):
        """Copy of ``static`` (a ``StaticResNetPool``): same tensors, plain modules."""
        super().__init__()
        stem = static.layers[0]
        self.stem_conv, self.stem_bn = _conv(stem.conv), _bn(stem.bn)
        self.convs1, self.bns1, self.convs2, self.bns2 = (nn.ModuleList() for _ in range(4))
        self.projs, self.proj_bns = nn.ModuleList(), nn.ModuleList()
        self.strided: list[bool] = []
        for block in static.layers[1:]:
            self.convs1.append(_conv(block.conv1))
            self.bns1.append(_bn(block.bn1))
            self.convs2.append(_conv(block.conv2))
            self.bns2.append(_bn(block.bn2))
            has = block.proj is not None
            self.projs.append(_conv(block.proj[0]) if has else nn.Identity())
            self.proj_bns.append(_bn(block.proj[1]) if has else nn.Identity())
            self.strided.append(block.stride == 2)
        self.pools = list(static.pools)
        self.fc = nn.Linear(static.fc.in_features, static.fc.out_features)
        self.fc.load_state_dict(static.fc.state_dict())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem_bn(self.stem_conv(x)))
        for i in range(len(self.convs1)):
            if self.pools[i + 1]:
                x = F.max_pool2d(x, 2, ceil_mode=True)
            out = self.bns2[i](self.convs2[i](F.relu(self.bns1[i](self.convs1[i](x)))))
            if isinstance(self.projs[i], nn.Conv2d):
                short = self.proj_bns[i](self.projs[i](x))
            else:
                short = x[:, :, ::2, ::2] if self.strided[i] else x
            x = F.relu(out + short)
        return self.fc(x.mean(dim=(2, 3)))


def _conv(src: nn.Conv2d) -> nn.Conv2d:
    dst = nn.Conv2d(src.in_channels, src.out_channels, src.kernel_size, src.stride,
                    src.padding, bias=False)
    dst.load_state_dict(src.state_dict())
    return dst


def _bn(src: nn.BatchNorm2d) -> nn.BatchNorm2d:
    dst = nn.BatchNorm2d(src.num_features, affine=src.affine)
    dst.load_state_dict(src.state_dict())
    return dst
