"""The ``bert`` family: a BERT-style encoder for masked-LM, with optional MoE feed-forwards.

The space is NAS-BERT's / AutoDistil's (and Mixture-of-Supernets' BERT experiments'): elastic
layer count, hidden size, attention heads and feed-forward size. Layout, input to output:

1. token embedding (``vocab_size`` x ``hidden``) plus a learned position embedding (``max_len``
   positions), layer norm;
2. ``layers`` pre-norm blocks ``x + attn(LN(x))``, ``x + ffn(LN(x))``; attention has ``heads``
   heads of a fixed width ``head_dim`` (its inner width is heads x head_dim, whatever the
   hidden size: AutoDistil's and NAS-BERT's spaces search heads and hidden apart); the
   feed-forward is an MLP ``ffn`` wide, or with ``model.moe`` a mixture of experts (U2++ MoE:
   ``experts`` experts of width ``ffn``, the ``top_k`` best per token by a learned router);
3. final layer norm, then BERT's masked-LM head: dense ``hidden -> hidden`` + GELU + layer
   norm, and a decoder tied to the token embedding (plus a bias per vocabulary entry).

Pre-norm rather than BERT's post-norm: every subnet, shallow or deep, trains stably from the
same shared weights without warm-up tuning (as in the supernets of NAS-BERT and
Mixture-of-Supernets' BERT, which follow the pre-norm Transformer of their codebases).

Task: ``masked_lm`` (``raynas.tasks.mlm``): packed blocks of ``max_len`` token ids in, logits
over the vocabulary per position out.

Dimensions: ``layers`` (int), ``hidden`` (choice), ``heads`` and ``ffn`` (each a choice, one
value for every layer, or a per_layer over ``layers``); with ``model.moe`` also ``experts``
(choice or per_layer: experts per MoE layer, at least ``top_k``; optional, default all).
Model settings: ``vocab_size``, ``max_len``, ``head_dim``; optional ``activation`` (gelu),
``moe`` (``{experts: E, top_k: k}``: every feed-forward is an MoE layer of up to E experts).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from raynas.errors import ConfigError
from raynas.nn import (
    ACTIVATIONS,
    MLP,
    ElasticEmbedding,
    ElasticLayerNorm,
    ElasticLinear,
    ElasticMLP,
    ElasticMoEFeedForward,
    ElasticPositionEmbedding,
    ElasticSelfAttention,
    MoEFeedForward,
    PositionEmbedding,
    SelfAttention,
    SubnetDropout,
)
from raynas.nn.moe import moe_settings
from raynas.space import Arch, Choice, PerLayer, SearchSpace
from raynas.supernets import (
    Family,
    activation_setting,
    check_layer_dims,
    positive_settings,
    register_family,
)

_LAYER_DIMS = ("heads", "ffn")


def _settings(model: Mapping[str, Any], where: str) -> dict[str, Any]:
    positive_settings(model, ("vocab_size", "max_len", "head_dim"), where)
    act = activation_setting(model, "gelu", where)
    moe = moe_settings(model.get("moe"), where)
    return {"vocab_size": model["vocab_size"], "max_len": model["max_len"],
            "head_dim": model["head_dim"], "activation": act, "moe": moe}


def dim_names(model: Mapping[str, Any]) -> set[str]:
    names = {"layers", "hidden", *_LAYER_DIMS}
    return names | {"experts"} if model.get("moe") else names


def _check(space: SearchSpace) -> dict[str, Any]:
    where = f"space {space.name!r}"
    s = _settings(space.model, where)
    check_layer_dims(space, "bert", "layers", ("hidden", *_LAYER_DIMS), s["moe"])
    names = ["hidden", *_LAYER_DIMS] + (["experts"] if "experts" in space.names else [])
    for name in names:
        d = space.dim(name)
        ok = isinstance(d, Choice) or (isinstance(d, PerLayer) and d.depth == "layers")
        if not ok or not all(isinstance(v, int) and v > 0 for v in d.values):
            raise ConfigError(f"{where}: {name} must be a choice (or, except hidden, a "
                              "per_layer over 'layers') of positive integers")
    if isinstance(space.dim("hidden"), PerLayer):
        raise ConfigError(f"{where}: hidden must be a choice (one width for every layer)")
    return s


def _per_layer(arch: Arch, name: str, default: int | None = None) -> list[int]:
    value = arch.get(name, default)
    return list(value) if isinstance(value, (list, tuple)) else [value] * arch["layers"]


class TiedDecoder(nn.Module):
    """Logits ``x @ embed.weightᵀ + bias``: the decoder shares the token embedding (BERT's
    tied output layer); ``weight`` is handed in by the caller at each forward."""

    def __init__(self, vocab: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(vocab))

    def forward(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight, self.bias)

    def matmul_flops(self, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
        return 2 * output.numel() * inputs[0].shape[-1]


class Block(nn.Module):
    """One static pre-norm encoder block (MLP or MoE feed-forward)."""

    def __init__(self, s: dict[str, Any], hidden: int, heads: int, ffn: int,
                 experts: int | None):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.attn = SelfAttention(hidden, heads, s["head_dim"])
        self.ffn = (MLP(hidden, ffn, s["activation"]) if experts is None else
                    MoEFeedForward(hidden, experts, ffn, s["moe"]["top_k"], s["activation"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class ElasticBlock(nn.Module):
    def __init__(self, s: dict[str, Any], hidden: int, heads: int, ffn: int,
                 experts: int | None):
        super().__init__()
        self.norm1, self.norm2 = ElasticLayerNorm(hidden), ElasticLayerNorm(hidden)
        self.attn = ElasticSelfAttention(hidden, heads, s["head_dim"])
        self.ffn = (ElasticMLP(hidden, ffn, s["activation"]) if experts is None else
                    ElasticMoEFeedForward(hidden, experts, ffn, s["moe"]["top_k"],
                                          s["activation"]))
        self.moe = experts is not None

    def configure(self, hidden: int, heads: int, ffn: int, experts: int | None) -> None:
        self.norm1.configure(hidden)
        self.norm2.configure(hidden)
        self.attn.configure(hidden, heads)
        if self.moe:
            self.ffn.configure(hidden, experts, ffn)
        else:
            self.ffn.configure(hidden, ffn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class MLMHead(nn.Module):
    def __init__(self, s: dict[str, Any], hidden: int):
        super().__init__()
        self.dense, self.norm = nn.Linear(hidden, hidden), nn.LayerNorm(hidden)
        self.act = ACTIVATIONS["gelu"]
        self.decoder = TiedDecoder(s["vocab_size"])


class ElasticMLMHead(nn.Module):
    def __init__(self, s: dict[str, Any], hidden: int):
        super().__init__()
        self.dense, self.norm = ElasticLinear(hidden, hidden), ElasticLayerNorm(hidden)
        self.act = ACTIVATIONS["gelu"]
        self.decoder = TiedDecoder(s["vocab_size"])

    def configure(self, hidden: int) -> None:
        self.dense.configure(hidden, hidden)
        self.norm.configure(hidden)


def _run(m: nn.Module, tokens: torch.Tensor, embed_weight: torch.Tensor, depth: int,
         drop: nn.Module | None = None) -> torch.Tensor:
    x = m.embed_norm(m.pos(m.embed(tokens)))
    for j in range(depth):
        x = m.blocks[j](x)
    x = m.norm(x)
    if drop is not None:
        x = drop(x)
    h = m.head
    return h.decoder(h.norm(h.act(h.dense(x))), embed_weight)


def _layer_values(s: dict[str, Any], arch: Arch) -> list[tuple[int, int, int | None]]:
    heads, ffn = _per_layer(arch, "heads"), _per_layer(arch, "ffn")
    if s["moe"] is None:
        return [(h, f, None) for h, f in zip(heads, ffn)]
    experts = _per_layer(arch, "experts", s["moe"]["experts"])
    return list(zip(heads, ffn, experts))


class BertSupernet(nn.Module):
    """Every subnet of a ``bert`` space in one set of weights; ``set_arch`` first."""

    def __init__(self, space: SearchSpace):
        super().__init__()
        s = self.settings = _check(space)
        hidden = max(space.dim("hidden").values)
        heads, ffn = (max(space.dim(n).values) for n in _LAYER_DIMS)
        experts = None if s["moe"] is None else s["moe"]["experts"]
        self.embed = ElasticEmbedding(s["vocab_size"], hidden)
        # BERT's initialisation: the tied decoder's logits start near 0 (a unit-variance
        # embedding would start them at sqrt(hidden) and the loss far above log(vocab)).
        nn.init.trunc_normal_(self.embed.weight, std=0.02)
        self.pos = ElasticPositionEmbedding(s["max_len"], hidden)
        self.embed_norm = ElasticLayerNorm(hidden)
        self.blocks = nn.ModuleList(ElasticBlock(s, hidden, heads, ffn, experts)
                                    for _ in range(space.dim("layers").largest()))
        self.norm = ElasticLayerNorm(hidden)
        self.head = ElasticMLMHead(s, hidden)
        self.drop = SubnetDropout()  # on the features entering the head (train.dropout)
        self.set_arch(space.largest())

    def set_arch(self, arch: Arch) -> None:
        hidden = arch["hidden"]
        for m in (self.embed, self.pos, self.embed_norm, self.norm, self.head):
            m.configure(hidden)
        for block, (heads, ffn, experts) in zip(self.blocks,
                                                _layer_values(self.settings, arch)):
            block.configure(hidden, heads, ffn, experts)
        self.depth, self.arch = arch["layers"], arch

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return _run(self, tokens, self.embed.active_weight(), self.depth, self.drop)


class StaticBert(nn.Module):
    """One subnet as a plain torch model, from model settings and an Arch alone."""

    def __init__(self, model: dict[str, Any], arch: Arch):
        super().__init__()
        s = _settings(model, "family 'bert'")
        hidden = arch["hidden"]
        self.embed = nn.Embedding(s["vocab_size"], hidden)
        self.pos = PositionEmbedding(s["max_len"], hidden)
        self.embed_norm = nn.LayerNorm(hidden)
        self.blocks = nn.ModuleList(Block(s, hidden, heads, ffn, experts)
                                    for heads, ffn, experts in _layer_values(s, arch))
        self.norm = nn.LayerNorm(hidden)
        self.head = MLMHead(s, hidden)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return _run(self, tokens, self.embed.weight, len(self.blocks))


register_family(Family(
    name="bert",
    supernet=BertSupernet,
    static=StaticBert,
    tasks=("masked_lm",),
    dims=dim_names,
))
