"""The ``vit`` family's subnets as ops, for per-op latency lookup tables (``latency.model:
lut``): the stem, every MBConv block, each transformer stage's entry (with the move between
tokens and map, and the position embedding), every transformer block, and the head. Each op
is built from the same plan and the same modules as ``StaticViT``, so the ops' FLOPs add up to
the subnet's, and a key names one computation on one input shape.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from raynas.nn import ACTIVATIONS, MBConv, TransformerBlock
from raynas.space import Arch
from raynas.supernets import Op
from raynas.supernets._vit_plan import ConvLayer, Settings, TStage, parse_settings, plan
from raynas.supernets.vit import (
    ConvBN,
    LinearHead,
    MBv3Head,
    _attention_options,
    _head,
    stage_entry,
)


class _Stem(nn.Module):
    def __init__(self, s: Settings, width: int):
        super().__init__()
        self.conv, self.act = ConvBN(s.in_channels, width, s.stem_stride), ACTIVATIONS[s.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


def _mbconv(s: Settings, c: ConvLayer) -> nn.Module:
    return MBConv(c.cin, c.cout, c.expand, c.kernel, c.stride, c.se, s.activation, c.in_size)


class _Entry(nn.Module):
    """A transformer stage's entry: tokens back to a map (after the first stage), the entry
    op, the map as tokens, plus the position embedding."""

    def __init__(self, s: Settings, t: TStage, tokens_in: bool):
        super().__init__()
        self.entry, self.pos = stage_entry(s, t)
        self.in_size, self.tokens_in = t.in_size, tokens_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tokens_in:
            x = x.transpose(1, 2).unflatten(2, (self.in_size, self.in_size))
        x = self.entry(x).flatten(2).transpose(1, 2)
        return x if self.pos is None else self.pos(x)


def _block(s: Settings, t: TStage, j: int) -> nn.Module:
    return TransformerBlock(t.embed, t.heads[j], s.head_dim, t.hidden[j], s.activation,
                            v_scale=t.v_scale[j], **_attention_options(s, t.grid))


class _Head(nn.Module):
    def __init__(self, s: Settings, width: int):
        super().__init__()
        self.head = (LinearHead(width, s.num_classes) if s.head == "linear"
                     else MBv3Head(s, width))
        self.act = ACTIVATIONS[s.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _head(self.head, x, self.act)


def ops(model: dict[str, Any], arch: Arch) -> list[Op]:
    s = parse_settings(model, "family 'vit'")
    p = plan(s, arch)
    act = s.activation
    size = s.image_size
    out = [Op(f"vit.stem(c{s.in_channels}>{p.stem_width},s{s.stem_stride},{act})@{size}",
              functools.partial(_Stem, s, p.stem_width), (s.in_channels, size, size))]
    for c in (*p.stem_blocks, *(c for stage in p.conv_stages for c in stage)):
        out.append(Op(f"vit.mbconv(c{c.cin}>{c.cout},e{c.expand},k{c.kernel},s{c.stride},"
                      f"se{int(c.se)},{act})@{c.in_size}", functools.partial(_mbconv, s, c),
                      (c.cin, c.in_size, c.in_size)))
    attention = f"{s.attention},{act}"
    for i, t in enumerate(p.t_stages):
        shape = (t.in_size ** 2, t.cin) if i else (t.cin, t.in_size, t.in_size)
        entry = s.entry if s.entry == "conv" else f"mbconv-e{s.entry_expand}-se{int(s.entry_se)}"
        out.append(Op(f"vit.entry({entry},c{t.cin}>{t.embed},s{t.stride},{attention},"
                      f"{'tokens' if i else 'map'})@{t.in_size}",
                      functools.partial(_Entry, s, t, i > 0), shape))
        for j in range(len(t.heads)):
            out.append(Op(f"vit.block(d{t.embed},h{t.heads[j]}x{s.head_dim},"
                          f"v{t.v_scale[j]},mlp{t.hidden[j]},{attention})@{t.grid}",
                          functools.partial(_block, s, t, j), (t.grid ** 2, t.embed)))
    last = p.t_stages[-1]
    extra = "" if s.head == "linear" else f",e{s.head_expand},h{s.head_hidden}"
    out.append(Op(f"vit.head({s.head},c{p.last}>{s.num_classes}{extra},{act})@{last.grid}",
                  functools.partial(_Head, s, p.last), (last.grid ** 2, p.last)))
    return out
