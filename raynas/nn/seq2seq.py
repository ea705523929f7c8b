"""Encoder-decoder ops as HAT's SuperTransformer has them: attention with a fixed q/k/v width,
sinusoidal positions, and the output projection tied to the token embedding.

HAT's attention (``multihead_attention_super.py``): queries come from a ``q_embed``-wide input,
keys and values from a ``kv_embed``-wide one (the decoder's encoder-decoder attention reads the
encoder's width), and all three are projected to ``qkv_dim`` whatever the embedding widths.
Heads re-partition that fixed width (``head_dim = qkv_dim // heads``), so the head count
changes no weight: an elastic attention slices only the projections' embedding sides.

``attend`` takes projected q, k and v, so the incremental decoder (one new query against cached
keys and values) and the full forward run the same arithmetic. Masks are boolean, ``True``
where a key must not be attended (padding, a later position); a row always keeps one key
(every source ends with ``[EOS]``; a position always sees itself).

The elastic ops follow ``raynas.nn.elastic``'s conventions: full-size parameters, ``configure``
selects the slice, and the static twin's submodules carry the same names, so
``export.extract`` fills it from the supernet's active slices.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from raynas.nn.elastic import ElasticLinear


def sinusoid(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal position encodings (fairseq's layout: ``dim // 2`` sines then as many
    cosines, a zero column when ``dim`` is odd) of integer ``positions``: shape
    ``(*positions.shape, dim)``. No parameters, so every embedding width has its own."""
    half = dim // 2
    rate = math.log(10000.0) / max(half - 1, 1)
    freq = torch.exp(torch.arange(half, device=positions.device, dtype=torch.float32) * -rate)
    angle = positions.unsqueeze(-1).float() * freq
    out = torch.cat([angle.sin(), angle.cos()], dim=-1)
    return F.pad(out, (0, 1)) if dim % 2 else out


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
           mask: torch.Tensor | None) -> torch.Tensor:
    """``softmax(q kᵀ / sqrt(d) masked) v`` over ``heads`` heads of projected q (n, Tq, D) and
    k, v (n, Tk, D); ``mask`` (bool, broadcast to (n, heads, Tq, Tk)) or None. Returns
    (n, Tq, D)."""
    def split(t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (heads, -1)).transpose(1, 2)

    qh, kh, vh = split(q), split(k), split(v)
    logits = (qh * (qh.shape[-1] ** -0.5)) @ kh.transpose(-2, -1)
    if mask is not None:
        logits = logits.masked_fill(mask, float("-inf"))
    return (logits.softmax(dim=-1) @ vh).transpose(1, 2).flatten(2)


def _attention_flops(m: Attention | ElasticAttention, inputs: tuple[torch.Tensor, ...]) -> int:
    # q kᵀ and attn v: each n x Tq x Tk x qkv_dim multiply-adds (heads split qkv_dim).
    x, memory = inputs[0], inputs[1]
    return 4 * x.shape[0] * x.shape[1] * memory.shape[1] * m.qkv_dim


def _forward(m: Attention | ElasticAttention, x: torch.Tensor, memory: torch.Tensor,
             mask: torch.Tensor | None) -> torch.Tensor:
    return m.out(attend(m.q(x), m.k(memory), m.v(memory), m.heads, mask))


class Attention(nn.Module):
    """Multi-head attention of ``x`` (n, Tq, q_embed) over ``memory`` (n, Tk, kv_embed) (self-
    attention: ``memory`` is ``x``), q/k/v ``qkv_dim`` wide in ``heads`` heads."""

    def __init__(self, q_embed: int, kv_embed: int, qkv_dim: int, heads: int):
        super().__init__()
        self.qkv_dim, self.heads = qkv_dim, heads
        self.q = nn.Linear(q_embed, qkv_dim)
        self.k, self.v = nn.Linear(kv_embed, qkv_dim), nn.Linear(kv_embed, qkv_dim)
        self.out = nn.Linear(qkv_dim, q_embed)

    def forward(self, x: torch.Tensor, memory: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        return _forward(self, x, memory, mask)

    def matmul_flops(self, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
        return _attention_flops(self, inputs)


class ElasticAttention(nn.Module):
    """``Attention`` with elastic query and key/value embedding widths and head count (the
    q/k/v width stays ``qkv_dim``)."""

    def __init__(self, max_q_embed: int, max_kv_embed: int, qkv_dim: int, max_heads: int):
        super().__init__()
        self.qkv_dim, self.max_heads, self.heads = qkv_dim, max_heads, max_heads
        self.q = ElasticLinear(max_q_embed, qkv_dim)
        self.k, self.v = ElasticLinear(max_kv_embed, qkv_dim), ElasticLinear(max_kv_embed,
                                                                             qkv_dim)
        self.out = ElasticLinear(qkv_dim, max_q_embed)

    def configure(self, q_embed: int, kv_embed: int, heads: int) -> None:
        if not 0 < heads <= self.max_heads or self.qkv_dim % heads:
            raise ValueError(f"heads = {heads}: must divide qkv_dim {self.qkv_dim} and be at "
                             f"most {self.max_heads}")
        self.q.configure(q_embed, self.qkv_dim)
        self.k.configure(kv_embed, self.qkv_dim)
        self.v.configure(kv_embed, self.qkv_dim)
        self.out.configure(self.qkv_dim, q_embed)
        self.heads = heads

    def forward(self, x: torch.Tensor, memory: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        return _forward(self, x, memory, mask)

    def matmul_flops(self, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
        return _attention_flops(self, inputs)


class TiedOutput(nn.Module):
    """Logits ``x @ table[:, :width]ᵀ`` for features ``x`` ``width`` wide, ``table`` being the
    token embedding handed in at each call (HAT's shared input/output embedding); no
    parameters of its own."""

    def forward(self, x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return F.linear(x, table[:, : x.shape[-1]])

    def matmul_flops(self, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
        return 2 * output.numel() * inputs[0].shape[-1]
