"""The vit family's subnet written out by hand in plain torch, for benchmarks/elastic_overhead.py.

Covers the layout of search_spaces/vit_tiny.yaml: conv-BN-GELU stem; MBConv conv stages
(1x1 expand conv + BN + GELU, depthwise conv + BN + GELU, 1x1 conv + BN, plus the identity or
a 2x2-average-pooled, 1x1-projected shortcut; no squeeze-excite); per transformer stage a
3x3 conv + BN entry (the stage's stride), a learned position embedding, then pre-norm blocks
(x + proj(attention(qkv(LN(x)))), x + fc2(GELU(fc1(LN(x))))); LN, mean over tokens, linear
classifier. Attention is the textbook one: one fused qkv matrix (rows: all q heads, all k
heads, all v heads), softmax(q k^T / sqrt(d)) v with explicit matmuls.

``HandViT.from_static(static)`` builds one with the shapes of an extracted static subnet
(``raynas.export.extract``) and copies its weights, reading only torch modules and tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class HandBlock(nn.Module):
    def __init__(self, embed: int, heads: int, head_dim: int, hidden: int):
        super().__init__()
        self.heads, self.head_dim, self.scale = heads, head_dim, head_dim ** -0.5
        self.ln1 = nn.LayerNorm(embed)
        self.qkv = nn.Linear(embed, 3 * heads * head_dim)
        self.proj = nn.Linear(heads * head_dim, embed)
        self.ln2 = nn.LayerNorm(embed)
        self.fc1, self.fc2 = nn.Linear(embed, hidden), nn.Linear(hidden, embed)


class HandMBConv(nn.Module):
    def __init__(self, cin: int, cout: int, inner: int, kernel: int, stride: int,
                 pool_pad: int):
        super().__init__()
        self.stride, self.pool_pad = stride, pool_pad
        self.expand = inner != cin
        if self.expand:
            self.pw, self.pw_bn = nn.Conv2d(cin, inner, 1, bias=False), nn.BatchNorm2d(inner)
        self.dw = nn.Conv2d(inner, inner, kernel, stride, kernel // 2, groups=inner, bias=False)
        self.dw_bn = nn.BatchNorm2d(inner)
        self.pwl, self.pwl_bn = nn.Conv2d(inner, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.identity = stride == 1 and cin == cout
        self.project = cin != cout
        if self.project:
            self.shortcut = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.pw_bn(self.pw(x))) if self.expand else x
        y = self.pwl_bn(self.pwl(F.gelu(self.dw_bn(self.dw(y)))))
        if self.identity:
            return y + x
        if self.stride > 1:
            x = F.avg_pool2d(x, 2, padding=self.pool_pad)
        return y + (self.shortcut(x) if self.project else x)


class HandStage(nn.Module):
    def __init__(self, cin: int, embed: int, stride: int, in_size: int, tokens: int, blocks):
        super().__init__()
        self.in_size = in_size
        self.conv = nn.Conv2d(cin, embed, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(embed)
        self.pos = nn.Parameter(torch.zeros(1, tokens, embed))
        self.blocks = nn.ModuleList(blocks)


class HandViT(nn.Module):
    def __init__(self, in_channels: int, stem_width: int, stem_stride: int, convs, stages,
                 num_classes: int):
        """``convs``: ``HandMBConv`` blocks in order; ``stages``: ``HandStage`` modules."""
        super().__init__()
        self.stem_conv = nn.Conv2d(in_channels, stem_width, 3, stem_stride, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(stem_width)
        self.convs = nn.ModuleList(convs)
        self.stages = nn.ModuleList(stages)
        width = self.stages[-1].conv.out_channels
        self.norm, self.fc = nn.LayerNorm(width), nn.Linear(width, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.stem_bn(self.stem_conv(images)))
        for block in self.convs:
            x = block(x)
        for i, stage in enumerate(self.stages):
            if i:  # tokens back to a map for the next entry conv
                x = x.transpose(1, 2).unflatten(2, (stage.in_size, stage.in_size))
            x = stage.bn(stage.conv(x)).flatten(2).transpose(1, 2) + stage.pos
            for b in stage.blocks:
                qkv = b.qkv(b.ln1(x)).unflatten(-1, (3, b.heads, b.head_dim))
                q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (n, heads, T, d)
                attn = ((q * b.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
                x = x + b.proj((attn @ v).transpose(1, 2).flatten(2))
                x = x + b.fc2(F.gelu(b.fc1(b.ln2(x))))
        return self.fc(self.norm(x).mean(dim=1))

    @classmethod
    def from_static(cls, static: nn.Module) -> HandViT:
        """A HandViT with the shapes and weights of ``static`` (a vit_tiny-style StaticViT)."""
        if len(static.stem_blocks) or not hasattr(static.head, "norm"):
            raise ValueError("HandViT covers a conv stem, MBConv conv stages, conv-entry "
                             "transformer stages and the LN + linear head "
                             "(search_spaces/vit_tiny.yaml's layout)")
        mbconvs = [b for stage in static.conv_stages for b in stage]
        if any(b.se is not None for b in mbconvs):
            raise ValueError("HandViT covers MBConv blocks without squeeze-excite")
        convs = [HandMBConv(b.dw.in_channels if not b.use_pw else b.pw.in_channels,
                            b.pwl.out_channels, b.dw.in_channels, b.dw.kernel_size[0],
                            b.stride, b.pool_pad) for b in mbconvs]
        stages = []
        for st in static.t_stages:
            if st.pos is None or not isinstance(getattr(st.entry, "conv", None), nn.Conv2d):
                raise ValueError("HandViT needs 'vit' attention and 'conv' stage entries")
            conv = st.entry.conv
            blocks = []
            for blk in st.blocks:
                a = blk.attn
                if a.v_dim != a.head_dim or a.rel_bias is not None or a.v_conv is not None:
                    raise ValueError("HandViT covers plain ViT attention only")
                blocks.append(HandBlock(conv.out_channels, a.heads, a.head_dim,
                                        blk.mlp.fc1.out_features))
            stages.append(HandStage(conv.in_channels, conv.out_channels, conv.stride[0],
                                    st.in_size, st.pos.weight.shape[1], blocks))
        hand = cls(static.stem.conv.in_channels, static.stem.conv.out_channels,
                   static.stem.conv.stride[0], convs, stages, static.head.fc.out_features)
        with torch.no_grad():
            _copy(hand.stem_conv, static.stem.conv)
            _copy(hand.stem_bn, static.stem.bn)
            for mine, theirs in zip(hand.convs, mbconvs):
                names = ["dw", "dw_bn", "pwl", "pwl_bn"] + ["pw", "pw_bn"] * mine.expand \
                    + ["shortcut"] * mine.project
                for name in names:
                    _copy(getattr(mine, name), getattr(theirs, name))
            for hs, st in zip(hand.stages, static.t_stages):
                _copy(hs.conv, st.entry.conv)
                _copy(hs.bn, st.entry.bn)
                hs.pos.copy_(st.pos.weight)
                for hb, blk in zip(hs.blocks, st.blocks):
                    for mine, theirs in ((hb.ln1, blk.norm1), (hb.qkv, blk.attn.qkv),
                                         (hb.proj, blk.attn.proj), (hb.ln2, blk.norm2),
                                         (hb.fc1, blk.mlp.fc1), (hb.fc2, blk.mlp.fc2)):
                        _copy(mine, theirs)
            _copy(hand.norm, static.head.norm)
            _copy(hand.fc, static.head.fc)
        return hand.train(static.training)


def _copy(mine: nn.Module, theirs: nn.Module) -> None:
    mine.load_state_dict(theirs.state_dict())
