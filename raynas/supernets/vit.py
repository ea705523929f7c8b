"""The ``vit`` family: a hybrid vision transformer in ElasticViT's layout (Tang et al., ICCV 2023).

Layout, input to output (``model:`` settings in brackets):

1. stem: 3x3 conv (stride ``stem_stride``) + BN + activation, ``stem_width`` channels; with
   ``stem_blocks: true`` then ``stem_depth`` MBConv blocks of expand ratio 1 (ElasticViT's);
2. conv stages ``c1..cN``, one per entry of ``conv_strides`` (none by default): MBConv blocks
   (``raynas.nn.mbconv``), the first with the stage's stride, squeeze-excite where ``conv_se``
   says;
3. transformer stages ``t1..tM``, one per entry of ``transformer_strides``: an entry op with
   the stage's stride turns the feature map into a grid of tokens (``entry``: ``conv``, a 3x3
   conv + BN; or ``mbconv``, ElasticViT's MBConv with expand ``entry_expand`` and squeeze-excite
   ``entry_se``), then ``t{i}_depth`` pre-norm blocks ``x + attn(LN(x))``, ``x + mlp(LN(x))``;
4. head (``head``): ``linear``: LN, mean over tokens, linear classifier; or ``mbv3``,
   ElasticViT's MobileNetV3-style head: per-token linear to ``head_expand`` x width + BN +
   activation, mean over tokens, linear to ``head_hidden`` + activation, linear classifier.

Attention (``attention``): ``vit``: a learned position embedding per stage (added after the
entry, sliced to the active width), attention with qkv biases; ``elasticvit``: no position
embedding; instead a learned per-head relative-position bias on the logits and a depthwise 3x3
conv over the token grid on the values, no qkv bias, activation before the output projection.
Heads have a fixed width ``head_dim``: attention's inner width is heads x head_dim, whatever
the embedding width; by default heads = embed // head_dim (ElasticViT's rule).

Dimensions (bounds inclusive). A dimension marked (L) is a ``choice`` (one value for the whole
stage, as ElasticViT samples it) or a ``per_layer`` over the stage's depth (one per block):

- ``stem_width`` (choice); with stem blocks ``stem_depth`` (int) and ``stem_kernel`` (L, odd);
- conv stage i: ``c{i}_depth`` (int), ``c{i}_width`` (choice), ``c{i}_expand`` (L, inner width
  = expand x the block's input width), ``c{i}_kernel`` (L, odd);
- transformer stage i: ``t{i}_depth`` (int), ``t{i}_embed`` (choice), ``t{i}_mlp_ratio`` (L,
  MLP width = int(ratio x embed)); optional ``t{i}_heads`` (L, default embed // head_dim) and
  ``t{i}_v_scale`` (L, value width per head = v_scale x head_dim, default 1).

Model settings: ``in_channels``, ``num_classes``, ``image_size`` (the task's),
``transformer_strides``, ``head_dim``; optional (default): ``activation`` (gelu; or hardswish,
relu), ``stem_stride`` (1), ``stem_blocks`` (false), ``conv_strides`` ([]), ``conv_se`` (all
false), ``entry`` (conv), ``entry_expand`` (6), ``entry_se`` (true), ``attention`` (vit),
``head`` (linear), ``head_expand`` (6), ``head_hidden`` (1984). Settings are checked in
``raynas.supernets._vit_plan``, which also turns an arch into the concrete layers both the
supernet and the static model are built from.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from raynas.nn import (
    ACTIVATIONS,
    ElasticBatchNorm2d,
    ElasticConv2d,
    ElasticLayerNorm,
    ElasticLinear,
    ElasticMBConv,
    ElasticPositionEmbedding,
    ElasticTransformerBlock,
    MBConv,
    PositionEmbedding,
    SubnetDropout,
    TransformerBlock,
)
from raynas.space import Arch, SearchSpace
from raynas.supernets import Family, Op, register_family
from raynas.supernets._vit_plan import (
    Plan,
    Settings,
    TStage,
    check_dims,
    dim_names,
    largest_values,
    parse_settings,
    plan,
)


# ---- blocks ------------------------------------------------------------------------------------
class ConvBN(nn.Module):
    """3x3 conv (no bias) + BatchNorm, padding 1."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class ElasticConvBN(nn.Module):
    def __init__(self, max_cin: int, max_cout: int, stride: int):
        super().__init__()
        self.conv = ElasticConv2d(max_cin, max_cout, 3, stride)
        self.bn = ElasticBatchNorm2d(max_cout)

    def configure(self, cin: int, cout: int) -> None:
        self.conv.configure(cin, cout, 3)
        self.bn.configure(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


def _attention_options(s: Settings, grid: int) -> dict[str, Any]:
    if s.attention == "vit":
        return {"qkv_bias": True}
    return {"qkv_bias": False, "grid": grid, "relative_bias": True, "value_conv": True,
            "proj_act": s.activation}


def stage_entry(s: Settings, t: TStage) -> tuple[nn.Module, nn.Module | None]:
    """A static transformer stage's entry op (map -> map, the stage's stride) and its
    position embedding (None with ElasticViT attention)."""
    entry = (ConvBN(t.cin, t.embed, t.stride) if s.entry == "conv" else
             MBConv(t.cin, t.embed, s.entry_expand, 3, t.stride, s.entry_se, s.activation,
                    t.in_size))
    return entry, PositionEmbedding(t.grid ** 2, t.embed) if s.attention == "vit" else None


class TransformerStage(nn.Module):
    """Entry op (map -> map, the stage's stride), optional position embedding, blocks."""

    def __init__(self, s: Settings, t: TStage):
        super().__init__()
        self.in_size = t.in_size
        self.entry, self.pos = stage_entry(s, t)
        options = _attention_options(s, t.grid)
        self.blocks = nn.ModuleList(
            TransformerBlock(t.embed, heads, s.head_dim, hidden, s.activation, v_scale=vs,
                             **options)
            for heads, hidden, vs in zip(t.heads, t.hidden, t.v_scale))


class ElasticTransformerStage(nn.Module):
    def __init__(self, s: Settings, t: TStage):
        super().__init__()
        self.in_size = t.in_size
        self.conv_entry = s.entry == "conv"
        self.entry = (ElasticConvBN(t.cin, t.embed, t.stride) if self.conv_entry else
                      ElasticMBConv(t.cin, t.embed, s.entry_expand, 3, t.stride, s.entry_se,
                                    s.activation, t.in_size))
        self.pos = (ElasticPositionEmbedding(t.grid ** 2, t.embed) if s.attention == "vit"
                    else None)
        options = _attention_options(s, t.grid)
        self.blocks = nn.ModuleList(
            ElasticTransformerBlock(t.embed, heads, s.head_dim, hidden, s.activation,
                                    max_v_scale=vs, **options)
            for heads, hidden, vs in zip(t.heads, t.hidden, t.v_scale))

    def configure(self, s: Settings, t: TStage) -> None:
        if self.conv_entry:
            self.entry.configure(t.cin, t.embed)
        else:
            self.entry.configure(t.cin, t.embed, s.entry_expand, 3)
        if self.pos is not None:
            self.pos.configure(t.embed)
        for block, heads, hidden, vs in zip(self.blocks, t.heads, t.hidden, t.v_scale):
            block.configure(t.embed, heads, hidden, vs)


def _stage(stage, x: torch.Tensor, depth: int, tokens_in: bool) -> torch.Tensor:
    if tokens_in:  # (n, T, c) -> (n, c, h, w): the entry op works on the map
        x = x.transpose(1, 2).unflatten(2, (stage.in_size, stage.in_size))
    x = stage.entry(x).flatten(2).transpose(1, 2)
    if stage.pos is not None:
        x = stage.pos(x)
    for j in range(depth):
        x = stage.blocks[j](x)
    return x


class LinearHead(nn.Module):
    def __init__(self, width: int, classes: int):
        super().__init__()
        self.norm, self.fc = nn.LayerNorm(width), nn.Linear(width, classes)


class ElasticLinearHead(nn.Module):
    def __init__(self, max_width: int, classes: int):
        super().__init__()
        self.norm, self.fc = ElasticLayerNorm(max_width), ElasticLinear(max_width, classes)

    def configure(self, s: Settings, width: int) -> None:
        self.norm.configure(width)
        self.fc.configure(width, self.fc.max_out)


class MBv3Head(nn.Module):
    def __init__(self, s: Settings, width: int):
        super().__init__()
        wide = width * s.head_expand
        self.fc1, self.bn = nn.Linear(width, wide), nn.BatchNorm1d(wide)
        self.fc2 = nn.Linear(wide, s.head_hidden)
        self.classifier = nn.Linear(s.head_hidden, s.num_classes)


class ElasticMBv3Head(nn.Module):
    def __init__(self, s: Settings, max_width: int):
        super().__init__()
        wide = max_width * s.head_expand
        # ElasticBatchNorm2d normalises (n, c, tokens) as well: F.batch_norm takes any rank.
        self.fc1, self.bn = ElasticLinear(max_width, wide), ElasticBatchNorm2d(wide)
        self.fc2 = ElasticLinear(wide, s.head_hidden)
        self.classifier = ElasticLinear(s.head_hidden, s.num_classes)

    def configure(self, s: Settings, width: int) -> None:
        wide = width * s.head_expand
        self.fc1.configure(width, wide)
        self.bn.configure(wide)
        self.fc2.configure(wide, s.head_hidden)


def _head(head, x: torch.Tensor, act, drop: nn.Module | None = None) -> torch.Tensor:
    """The head; ``drop`` (the supernet's ``SubnetDropout``) acts on the classifier's input."""
    if isinstance(head, (LinearHead, ElasticLinearHead)):
        x = head.norm(x).mean(dim=1)
        return head.fc(drop(x) if drop is not None else x)
    y = act(head.bn(head.fc1(x).transpose(1, 2))).mean(dim=2)
    y = act(head.fc2(y))
    return head.classifier(drop(y) if drop is not None else y)


# ---- the family ----------------------------------------------------------------------------------
class ViTSupernet(nn.Module):
    """All subnets of a ``vit`` space in one set of weights. Call ``set_arch`` before forward."""

    def __init__(self, space: SearchSpace):
        super().__init__()
        s = parse_settings(space.model, f"space {space.name!r}")
        check_dims(space, s)
        top = plan(s, largest_values(space))
        self.settings, self.space, self.act = s, space, ACTIVATIONS[s.activation]
        self.stem = ElasticConvBN(s.in_channels, top.stem_width, s.stem_stride)
        self.stem_blocks = nn.ModuleList(
            ElasticMBConv(c.cin, c.cout, 1, c.kernel, 1, False, s.activation, c.in_size,
                          shortcut=False) for c in top.stem_blocks)
        self.conv_stages = nn.ModuleList(
            nn.ModuleList(ElasticMBConv(c.cin, c.cout, c.expand, c.kernel, c.stride, c.se,
                                        s.activation, c.in_size, shortcut=j == 0)
                          for j, c in enumerate(stage))
            for stage in top.conv_stages)
        self.t_stages = nn.ModuleList(ElasticTransformerStage(s, t) for t in top.t_stages)
        self.head = (ElasticLinearHead(top.last, s.num_classes) if s.head == "linear"
                     else ElasticMBv3Head(s, top.last))
        self.drop = SubnetDropout()  # on the classifier's input (train.dropout sets the rate)
        self.set_arch(space.largest())

    def set_arch(self, arch: Arch) -> None:
        """Activate ``arch`` (assumed valid for the space; validate untrusted input first)."""
        s, p = self.settings, plan(self.settings, arch)
        self.stem.configure(s.in_channels, p.stem_width)
        for block, c in zip(self.stem_blocks, p.stem_blocks):
            block.configure(c.cin, c.cout, 1, c.kernel)
        for stage, layers in zip(self.conv_stages, p.conv_stages):
            for block, c in zip(stage, layers):
                block.configure(c.cin, c.cout, c.expand, c.kernel)
        for stage, t in zip(self.t_stages, p.t_stages):
            stage.configure(s, t)
        self.head.configure(s, p.last)
        self.depths = _depths(p)
        self.arch = arch

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return _forward(self, images, self.depths)


class StaticViT(nn.Module):
    """One subnet as a plain torch model: built from model settings and an Arch alone."""

    def __init__(self, model: dict[str, Any], arch: Arch):
        super().__init__()
        s = parse_settings(model, "family 'vit'")
        p: Plan = plan(s, arch)
        self.act = ACTIVATIONS[s.activation]
        self.stem = ConvBN(s.in_channels, p.stem_width, s.stem_stride)
        self.stem_blocks = nn.ModuleList(
            MBConv(c.cin, c.cout, 1, c.kernel, 1, False, s.activation, c.in_size)
            for c in p.stem_blocks)
        self.conv_stages = nn.ModuleList(
            nn.ModuleList(MBConv(c.cin, c.cout, c.expand, c.kernel, c.stride, c.se,
                                 s.activation, c.in_size) for c in stage)
            for stage in p.conv_stages)
        self.t_stages = nn.ModuleList(TransformerStage(s, t) for t in p.t_stages)
        self.head = (LinearHead(p.last, s.num_classes) if s.head == "linear"
                     else MBv3Head(s, p.last))
        # The forward's modules in order, as plain tuples of module references (not registered
        # twice: the attributes above own them). forward() then reaches each leaf without
        # nn.Module attribute lookups: at batch 1 a deployed subnet's time is mostly Python.
        self._stem = (self.stem.conv, self.stem.bn)
        self._convs = [*self.stem_blocks, *(block for stage in self.conv_stages
                                            for block in stage)]
        self._stages = [
            (stage.in_size,
             (stage.entry.conv, stage.entry.bn) if s.entry == "conv" else (stage.entry,),
             stage.pos,
             [(b.norm1, b.attn, b.norm2, b.mlp.fc1, b.mlp.fc2) for b in stage.blocks])
            for stage in self.t_stages]
        self._linear_head = (self.head.norm, self.head.fc) if s.head == "linear" else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # The supernet's forward written flat. Attention stays a module call: count_flops
        # hooks it to count its matmuls.
        act = self.act
        conv, bn = self._stem
        x = act(bn(conv(images)))
        for block in self._convs:
            x = block(x)
        for i, (in_size, entry, pos, blocks) in enumerate(self._stages):
            if i:  # tokens (n, T, c) back to a map (n, c, h, w) for the entry op
                x = x.transpose(1, 2).unflatten(2, (in_size, in_size))
            for op in entry:
                x = op(x)
            x = x.flatten(2).transpose(1, 2)
            if pos is not None:
                x = x + pos.weight
            for norm1, attn, norm2, fc1, fc2 in blocks:
                x = x + attn(norm1(x))
                x = x + fc2(act(fc1(norm2(x))))
        if self._linear_head is not None:
            norm, fc = self._linear_head
            return fc(norm(x).mean(dim=1))
        return _head(self.head, x, act)


def _depths(p: Plan) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    return (len(p.stem_blocks), tuple(len(c) for c in p.conv_stages),
            tuple(len(t.heads) for t in p.t_stages))


def _forward(m: ViTSupernet, images: torch.Tensor, depths) -> torch.Tensor:
    stem_depth, conv_depths, t_depths = depths
    x = m.act(m.stem(images))
    for j in range(stem_depth):
        x = m.stem_blocks[j](x)
    for stage, depth in zip(m.conv_stages, conv_depths):
        for j in range(depth):
            x = stage[j](x)
    for i, (stage, depth) in enumerate(zip(m.t_stages, t_depths)):
        x = _stage(stage, x, depth, tokens_in=i > 0)
    return _head(m.head, x, m.act, m.drop)


def _ops(model: dict[str, Any], arch: Arch) -> list[Op]:
    from raynas.supernets._vit_ops import ops  # it builds its ops from this module's blocks

    return ops(model, arch)


register_family(Family(
    name="vit",
    supernet=ViTSupernet,
    static=StaticViT,
    tasks=("classification",),
    dims=dim_names,
    ops=_ops,
))
