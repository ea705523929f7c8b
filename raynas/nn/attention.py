"""Elastic transformer ops: layer norm, multi-head self-attention, MLP and the pre-norm block.

Same conventions as ``raynas.nn.elastic``: an elastic op holds full-size parameters, runs the
slice that ``configure`` selects, and ``active_state()`` returns that slice keyed like its
static counterpart's state dict (for containers, ``export.extract.active_state_dict`` gathers
their children's). Every elastic op here has a plain static twin in this module, used by the
static subnets that ``export.extract`` builds.

Attention has ``heads`` heads of a fixed width ``head_dim``: its inner width is
``heads * head_dim``, independent of the embedding width (ElasticViT ties them by default,
``heads = embed // head_dim``; a family may search heads on their own). Head ``h`` owns rows
``h * head_dim ...`` of q, k and v, so the first ``n`` heads are the first ``n * head_dim``
rows: slicing heads is front-slicing like every other width, and a dropped head's weights
never reach the output. Values may be wider than queries and keys (``v_scale``, ElasticViT:
``v_scale * head_dim`` per head).

Three parts of ElasticViT's attention are options: a learned per-head bias on the logits for
each relative offset between two tokens of the grid (``relative_bias``), a depthwise 3x3 conv
over the token grid on the values (``value_conv``), and an activation before the output
projection (``proj_act``). Without them this is plain ViT attention.

Attention is computed with explicit matmuls (``softmax(q k^T / sqrt(d) + bias) v``), not
``F.scaled_dot_product_attention``: on the CPU, torch's ``FlopCounterMode`` counts the latter
as 0 FLOPs (it runs a fused kernel that has no FLOP formula) while the matmuls count as
``bmm``, and at these sizes the explicit form is as fast for inference. Attention modules
define ``matmul_flops``, which ``raynas.latency.count_flops`` adds to its conv/linear count.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from raynas.nn.activations import ACTIVATIONS
from raynas.nn.elastic import ElasticDepthwiseConv2d, ElasticLinear, ElasticModule


def _trunc_normal(*shape: int) -> nn.Parameter:
    p = nn.Parameter(torch.zeros(*shape))
    nn.init.trunc_normal_(p, std=0.02)
    return p


# ---- norm, position ---------------------------------------------------------------------------
class ElasticLayerNorm(ElasticModule):
    """LayerNorm over the first ``active_dim`` features. Static counterpart: ``nn.LayerNorm``."""

    def __init__(self, max_dim: int, eps: float = 1e-5):
        super().__init__()
        self.max_dim, self.eps, self.active_dim = max_dim, eps, max_dim
        self.weight = nn.Parameter(torch.ones(max_dim))
        self.bias = nn.Parameter(torch.zeros(max_dim))

    def configure(self, dim: int) -> None:
        self.active_dim = dim

    def _affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.active_dim
        weight, bias = self.param("weight"), self.param("bias")
        if d == self.max_dim:
            return weight, bias
        return weight[:d], bias[:d]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self._affine()
        return F.layer_norm(x, (self.active_dim,), weight, bias, self.eps)

    def active_state(self) -> dict[str, torch.Tensor]:
        weight, bias = self._affine()
        return {"weight": weight, "bias": bias}


class PositionEmbedding(nn.Module):
    """A learned vector per token position, added to the tokens (``weight``: (1, T, dim))."""

    def __init__(self, tokens: int, dim: int):
        super().__init__()
        self.weight = _trunc_normal(1, tokens, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.weight


class ElasticPositionEmbedding(ElasticModule):
    """``PositionEmbedding`` whose vectors keep their first ``active_dim`` components."""

    def __init__(self, tokens: int, max_dim: int):
        super().__init__()
        self.max_dim, self.active_dim = max_dim, max_dim
        self.weight = _trunc_normal(1, tokens, max_dim)

    def configure(self, dim: int) -> None:
        self.active_dim = dim

    def active_weight(self) -> torch.Tensor:
        w = self.param("weight")
        if self.active_dim == self.max_dim:
            return w
        return w[..., : self.active_dim]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.active_weight()

    def active_state(self) -> dict[str, torch.Tensor]:
        return {"weight": self.active_weight()}


def relative_index(grid: int) -> torch.Tensor:
    """(T, T) with T = grid^2: for tokens i, j of a grid x grid map (row-major), the index of
    their offset (dy, dx) in a table of all (2 grid - 1)^2 offsets."""
    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + grid - 1
    dx = xs[:, None] - xs[None, :] + grid - 1
    return dy * (2 * grid - 1) + dx


class RelativePositionBias(nn.Module):
    """A learned attention-logit bias per head and relative offset (Swin, LeViT, ElasticViT).

    ``table``: ((2 grid - 1)^2, heads). ``forward()`` returns the (heads, T, T) bias. The
    index is a non-persistent buffer: it follows from ``grid`` and is not in the state dict.
    """

    def __init__(self, grid: int, heads: int):
        super().__init__()
        self.table = _trunc_normal((2 * grid - 1) ** 2, heads)
        self.register_buffer("index", relative_index(grid), persistent=False)

    def forward(self) -> torch.Tensor:
        return self.table[self.index].permute(2, 0, 1)


class ElasticRelativePositionBias(ElasticModule):
    """``RelativePositionBias`` for the first ``active_heads`` heads."""

    def __init__(self, grid: int, max_heads: int):
        super().__init__()
        self.max_heads, self.active_heads = max_heads, max_heads
        self.table = _trunc_normal((2 * grid - 1) ** 2, max_heads)
        self.register_buffer("index", relative_index(grid), persistent=False)

    def configure(self, heads: int) -> None:
        self.active_heads = heads

    def active_table(self) -> torch.Tensor:
        table = self.param("table")
        if self.active_heads == self.max_heads:
            return table
        return table[:, : self.active_heads]

    def forward(self) -> torch.Tensor:
        return self.active_table()[self.index].permute(2, 0, 1)

    def active_state(self) -> dict[str, torch.Tensor]:
        return {"table": self.active_table()}


# ---- attention ---------------------------------------------------------------------------------
class ElasticFusedLinear(ElasticLinear):
    """Several linear maps of one input in one matrix (q, k and v): segment ``i`` holds rows
    ``offsets[i] : offsets[i] + max_outs[i]``, and its active part is the first ``outs[i]`` of
    them. Static counterpart: ``nn.Linear(in, sum(outs))`` holding the active parts in order.
    Only the slicing differs from ``ElasticLinear`` (``active_weight``, ``active_bias``)."""

    def __init__(self, max_in: int, max_outs: Sequence[int], bias: bool = True):
        super().__init__(max_in, sum(max_outs), bias)
        self.max_outs = tuple(max_outs)
        self.offsets = tuple(sum(self.max_outs[:i]) for i in range(len(self.max_outs)))
        self.active_outs = self.max_outs

    def configure(self, in_features: int, outs: Sequence[int]) -> None:
        self.active_in, self.active_outs = in_features, tuple(outs)
        self.active_out = sum(self.active_outs)

    def _rows(self, t: torch.Tensor) -> torch.Tensor:
        if self.active_outs == self.max_outs:
            return t
        return torch.cat([t[o : o + n] for o, n in zip(self.offsets, self.active_outs)])

    def active_weight(self) -> torch.Tensor:
        w = self.param("weight")
        return self._rows(w if self.active_in == self.max_in else w[:, : self.active_in])

    def active_bias(self) -> torch.Tensor | None:
        b = self.param("bias")
        return None if b is None else self._rows(b)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
           bias: torch.Tensor | None = None) -> torch.Tensor:
    """``softmax(q k^T * scale + bias) v`` per head. q, k: (n, heads, T, d); v: (n, heads, T,
    dv); bias: (heads, T, T) or None. Returns (n, T, heads * dv)."""
    logits = (q * scale) @ k.transpose(-2, -1)
    if bias is not None:
        logits = logits + bias
    return (logits.softmax(dim=-1) @ v).transpose(1, 2).flatten(2)


def _conv_tokens(conv: nn.Module, x: torch.Tensor, grid: int) -> torch.Tensor:
    """Apply a 2-d conv to tokens (n, grid^2, c) laid out row-major on a grid x grid map."""
    # contiguous(): on a strided slice (v of the fused qkv), the conv's memory-format check
    # would pin the batch size during ONNX export.
    y = conv(x.transpose(1, 2).contiguous().unflatten(2, (grid, grid)))
    return y.flatten(2).transpose(1, 2)


def _heads(m: SelfAttention | ElasticSelfAttention, x: torch.Tensor):
    """q, k and v of tokens ``x``, each (n, heads, T, width). Shapes are never read as numbers,
    so tracing and ONNX export keep the batch dynamic."""
    y = m.qkv(x)
    if m.v_conv is None and m.v_dim == m.head_dim:  # one reshape serves all three
        return y.unflatten(-1, (3, m.heads, m.head_dim)).permute(2, 0, 3, 1, 4).unbind(0)
    q, k, v = y.split(m.sizes, dim=-1)
    if m.v_conv is not None:
        v = _conv_tokens(m.v_conv, v, m.grid)
    return tuple(t.unflatten(-1, (m.heads, -1)).transpose(1, 2) for t in (q, k, v))


def _attention(m: SelfAttention | ElasticSelfAttention, x: torch.Tensor) -> torch.Tensor:
    q, k, v = _heads(m, x)
    out = attend(q, k, v, m.scale, m.rel_bias() if m.rel_bias is not None else None)
    if m.act is not None:
        out = m.act(out)
    return m.proj(out)


def _matmul_flops(x: torch.Tensor, heads: int, head_dim: int, v_dim: int) -> int:
    # q k^T: heads x (T x d) @ (d x T); attn v: heads x (T x T) @ (T x dv); 2 FLOPs per MAC.
    n, t = x.shape[0], x.shape[1]
    return 2 * n * heads * t * t * (head_dim + v_dim)


def _check_grid(grid: int | None, relative_bias: bool, value_conv: bool) -> None:
    if (relative_bias or value_conv) and not grid:
        raise ValueError("relative_bias and value_conv need the token grid's side (grid)")


class SelfAttention(nn.Module):
    """Multi-head self-attention on tokens (n, T, embed): ``heads`` heads of ``head_dim``
    (values ``v_scale * head_dim``), a fused ``qkv`` projection and an output ``proj``.

    ``grid``: the side of the square token map (T = grid^2), needed by ``relative_bias`` and
    ``value_conv``; ``proj_act``: an activation name (``raynas.nn.ACTIVATIONS``) applied
    before ``proj``, or None.
    """

    def __init__(self, embed: int, heads: int, head_dim: int, v_scale: int = 1,
                 qkv_bias: bool = True, grid: int | None = None, relative_bias: bool = False,
                 value_conv: bool = False, proj_act: str | None = None):
        super().__init__()
        _check_grid(grid, relative_bias, value_conv)
        inner, v_inner = heads * head_dim, heads * head_dim * v_scale
        self.heads, self.head_dim, self.v_dim = heads, head_dim, head_dim * v_scale
        self.scale, self.grid = head_dim ** -0.5, grid
        self.sizes = [inner, inner, v_inner]
        self.qkv = nn.Linear(embed, 2 * inner + v_inner, bias=qkv_bias)
        self.v_conv = (nn.Conv2d(v_inner, v_inner, 3, 1, 1, groups=v_inner, bias=False)
                       if value_conv else None)
        self.rel_bias = RelativePositionBias(grid, heads) if relative_bias else None
        self.act = ACTIVATIONS[proj_act] if proj_act else None
        self.proj = nn.Linear(v_inner, embed)
        self.plain = v_scale == 1 and not (relative_bias or value_conv or proj_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.plain:
            # _attention's plain case, written out: at batch 1 a deployed subnet's time is
            # mostly Python call overhead, so this path calls nothing but torch.
            qkv = self.qkv(x).unflatten(-1, (3, self.heads, self.head_dim))
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            return self.proj((attn @ v).transpose(1, 2).flatten(2))
        return _attention(self, x)

    def matmul_flops(self, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
        """FLOPs of the two activation-by-activation matmuls (``count_flops`` protocol)."""
        return _matmul_flops(inputs[0], self.heads, self.head_dim, self.v_dim)


class ElasticSelfAttention(nn.Module):
    """``SelfAttention`` with elastic embedding width, heads and value scale (up to the maxima
    given here; ``head_dim`` is fixed). ``configure(embed, heads, v_scale)`` selects the slice:
    the first ``heads`` heads of q, k, v (and of ``proj``'s inputs), the first ``embed``
    input features of ``qkv`` and outputs of ``proj``."""

    def __init__(self, max_embed: int, max_heads: int, head_dim: int, max_v_scale: int = 1,
                 qkv_bias: bool = True, grid: int | None = None, relative_bias: bool = False,
                 value_conv: bool = False, proj_act: str | None = None):
        super().__init__()
        _check_grid(grid, relative_bias, value_conv)
        inner, v_inner = max_heads * head_dim, max_heads * head_dim * max_v_scale
        self.max_embed, self.max_heads, self.max_v_scale = max_embed, max_heads, max_v_scale
        self.head_dim, self.scale, self.grid = head_dim, head_dim ** -0.5, grid
        self.qkv = ElasticFusedLinear(max_embed, (inner, inner, v_inner), bias=qkv_bias)
        self.v_conv = ElasticDepthwiseConv2d(v_inner, 3) if value_conv else None
        self.rel_bias = ElasticRelativePositionBias(grid, max_heads) if relative_bias else None
        self.act = ACTIVATIONS[proj_act] if proj_act else None
        self.proj = ElasticLinear(v_inner, max_embed)
        self.configure(max_embed, max_heads, max_v_scale)

    def configure(self, embed: int, heads: int, v_scale: int = 1) -> None:
        if not (0 < embed <= self.max_embed and 0 < heads <= self.max_heads
                and 0 < v_scale <= self.max_v_scale):
            raise ValueError(f"attention slice (embed={embed}, heads={heads}, v_scale={v_scale})"
                             f" exceeds the maxima ({self.max_embed}, {self.max_heads}, "
                             f"{self.max_v_scale})")
        inner, v_inner = heads * self.head_dim, heads * self.head_dim * v_scale
        self.heads, self.v_dim = heads, self.head_dim * v_scale
        self.sizes = [inner, inner, v_inner]
        self.qkv.configure(embed, self.sizes)
        if self.v_conv is not None:
            self.v_conv.configure(v_inner, 3)
        if self.rel_bias is not None:
            self.rel_bias.configure(heads)
        self.proj.configure(v_inner, embed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _attention(self, x)

    def matmul_flops(self, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
        return _matmul_flops(inputs[0], self.heads, self.head_dim, self.v_dim)


# ---- MLP and the block -------------------------------------------------------------------------
class MLP(nn.Module):
    """Linear -> activation -> Linear, ``hidden`` wide (``act``: a ``raynas.nn.ACTIVATIONS``
    name)."""

    def __init__(self, embed: int, hidden: int, act: str = "gelu"):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(embed, hidden), nn.Linear(hidden, embed)
        self.act = ACTIVATIONS[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ElasticMLP(nn.Module):
    """``MLP`` with elastic embedding and hidden widths."""

    def __init__(self, max_embed: int, max_hidden: int, act: str = "gelu"):
        super().__init__()
        self.fc1 = ElasticLinear(max_embed, max_hidden)
        self.fc2 = ElasticLinear(max_hidden, max_embed)
        self.act = ACTIVATIONS[act]

    def configure(self, embed: int, hidden: int) -> None:
        self.fc1.configure(embed, hidden)
        self.fc2.configure(hidden, embed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _block(m: TransformerBlock | ElasticTransformerBlock, x: torch.Tensor) -> torch.Tensor:
    x = x + m.attn(m.norm1(x))
    return x + m.mlp(m.norm2(x))


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``. ``attention``:
    ``SelfAttention``'s options (``v_scale``, ``qkv_bias``, ``grid``, ...)."""

    def __init__(self, embed: int, heads: int, head_dim: int, hidden: int, act: str = "gelu",
                 **attention):
        super().__init__()
        self.norm1 = nn.LayerNorm(embed)
        self.attn = SelfAttention(embed, heads, head_dim, **attention)
        self.norm2 = nn.LayerNorm(embed)
        self.mlp = MLP(embed, hidden, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _block(self, x)


class ElasticTransformerBlock(nn.Module):
    """``TransformerBlock`` with elastic embedding width, heads, MLP width and value scale.
    ``attention``: ``ElasticSelfAttention``'s options (``max_v_scale``, ``qkv_bias``, ...)."""

    def __init__(self, max_embed: int, max_heads: int, head_dim: int, max_hidden: int,
                 act: str = "gelu", **attention):
        super().__init__()
        self.norm1 = ElasticLayerNorm(max_embed)
        self.attn = ElasticSelfAttention(max_embed, max_heads, head_dim, **attention)
        self.norm2 = ElasticLayerNorm(max_embed)
        self.mlp = ElasticMLP(max_embed, max_hidden, act)

    def configure(self, embed: int, heads: int, hidden: int, v_scale: int = 1) -> None:
        self.norm1.configure(embed)
        self.attn.configure(embed, heads, v_scale)
        self.norm2.configure(embed)
        self.mlp.configure(embed, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _block(self, x)
