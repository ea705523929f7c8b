"""The ``transformer_mt`` family: HAT's SuperTransformer, an encoder-decoder for translation.

The space is HAT's (Wang et al. 2020, ``configs/wmt14.en-de/supertransformer/space0.yml``):
elastic encoder and decoder embedding widths, per-layer FFN widths and head counts (q/k/v stay
``qkv_dim`` wide; heads re-partition them), encoder and decoder depth, and arbitrary
encoder-decoder attention: each decoder layer attends to the outputs of the last ``ende``
encoder layers, concatenated along the source length (HAT's -1 / 1 / 2 are ``ende`` 1 / 2 / 3;
an encoder of fewer layers than ``ende`` gives all of them).

Layout, input to output:
1. one token embedding shared by source, target and output (HAT's ``share-all-embeddings``):
   the encoder reads its first ``enc_embed`` columns, the decoder and the output projection
   the first ``dec_embed``; scaled by sqrt(width), plus sinusoidal positions;
2. ``enc_layers`` blocks ``x + attn(LN(x))``, ``x + ffn(LN(x))``; source padding is masked;
3. ``dec_layers`` blocks: causal self-attention, attention over the chosen encoder outputs
   (each passed through the encoder's final layer norm), FFN; a final layer norm; logits
   ``x @ embedᵀ`` over the shared vocabulary.

Pre-norm rather than HAT's post-norm, as the ``bert`` family: every subnet trains stably from
the shared weights without HAT's 10k-update warm-up; the layer count per block is HAT's, plus
one final norm per stack.

Decoding: ``begin(src)`` runs the encoder once and projects each decoder layer's keys and
values of the encoder outputs; ``step(state, tokens)`` runs the decoder on one new position
against its cached self-attention keys and values; ``reorder(state, rows)`` follows beam
search's choice of hypotheses. ``timed_forward`` is what latency measures (HAT's way): the
encoder once, then the decoder step by step over the target's length with its cache.
``forward`` (teacher forcing) is what training, FLOPs and export use; exported TorchScript and
ONNX graphs hold that forward only, not the decoding loop (``raynas.tasks.decoding`` drives
the loop in Python).

Dimensions: ``enc_embed``, ``dec_embed`` (choice); ``enc_layers``, ``dec_layers`` (int);
``enc_ffn``, ``enc_heads`` (choice or per_layer over enc_layers); ``dec_ffn``, ``dec_heads``,
``ende`` and optionally ``dec_cross_heads`` (default: ``dec_heads``) (choice or per_layer over
dec_layers). Model settings: ``vocab_size``, ``max_len``, ``qkv_dim``; optional ``activation``
(relu, HAT's), ``latency_src_len`` and ``latency_tgt_len`` (the lengths latency is timed at,
default ``max_len``; part of the latency key), ``moe`` (``{experts: E, top_k: k}``: every
feed-forward, encoder and decoder, is a mixture of up to E experts ``enc_ffn`` / ``dec_ffn``
wide, as the ``bert`` family's; then also ``enc_experts`` and ``dec_experts``, choice or
per_layer, default all E).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from raynas.errors import ConfigError
from raynas.nn import (
    MLP,
    ElasticEmbedding,
    ElasticLayerNorm,
    ElasticMLP,
    ElasticMoEFeedForward,
    MoEFeedForward,
    SubnetDropout,
)
from raynas.nn.moe import moe_settings
from raynas.nn.seq2seq import Attention, ElasticAttention, TiedOutput, attend, sinusoid
from raynas.space import Arch, Choice, IntRange, PerLayer, SearchSpace
from raynas.supernets import Family, activation_setting, positive_settings, register_family

PAD = 0  # raynas.tasks.text's [PAD]
_ENC, _DEC = ("enc_ffn", "enc_heads"), ("dec_ffn", "dec_heads", "ende")
_REQUIRED = ("enc_embed", "dec_embed", "enc_layers", "dec_layers", *_ENC, *_DEC)


def settings(model: Mapping[str, Any], where: str = "family 'transformer_mt'"
             ) -> dict[str, Any]:
    positive_settings(model, ("vocab_size", "max_len", "qkv_dim"), where)
    act = activation_setting(model, "relu", where)
    from raynas.tasks.translation import latency_lengths

    lengths = latency_lengths(model, where)
    return {"vocab_size": model["vocab_size"], "max_len": model["max_len"],
            "qkv_dim": model["qkv_dim"], "activation": act, **lengths,
            "moe": moe_settings(model.get("moe"), where)}


def dim_names(model: Mapping[str, Any]) -> set[str]:
    experts = {"enc_experts", "dec_experts"} if model.get("moe") else set()
    return {*_REQUIRED, "dec_cross_heads", *experts}


def _check(space: SearchSpace) -> dict[str, Any]:
    where = f"space {space.name!r}"
    s = settings(space.model, where)
    for name in _REQUIRED:
        if name not in space.names:
            raise ConfigError(f"{where}: family 'transformer_mt' needs dimension {name!r}")
    for name in ("enc_layers", "dec_layers"):
        if not isinstance(space.dim(name), IntRange) or space.dim(name).low < 1:
            raise ConfigError(f"{where}: {name} must be an int dimension with low >= 1")
    depth_of = ({n: "enc_layers" for n in (*_ENC, "enc_experts")}
                | {n: "dec_layers" for n in (*_DEC, "dec_cross_heads", "dec_experts")})
    for name in [n for n in space.names if n not in ("enc_layers", "dec_layers")]:
        d = space.dim(name)
        ok = isinstance(d, Choice) or (isinstance(d, PerLayer) and d.depth == depth_of.get(name))
        if not ok or not all(isinstance(v, int) and v > 0 for v in d.values):
            over = f", or a per_layer over {depth_of[name]!r}," if name in depth_of else ""
            raise ConfigError(f"{where}: {name} must be a choice{over} of positive integers")
    for name in ("enc_heads", "dec_heads", "dec_cross_heads"):
        bad = [h for h in (space.dim(name).values if name in space.names else ())
               if s["qkv_dim"] % h]
        if bad:
            raise ConfigError(f"{where}: {name} value {bad[0]} does not divide model.qkv_dim "
                              f"= {s['qkv_dim']} (heads re-partition the fixed q/k/v width)")
    for name in ("enc_experts", "dec_experts"):
        values = space.dim(name).values if name in space.names else ()
        if values and not s["moe"]["top_k"] <= min(values) <= max(values) <= \
                s["moe"]["experts"]:
            raise ConfigError(f"{where}: {name} values {list(values)} must lie in model.moe's "
                              "top_k..experts")
    high = space.dim("enc_layers").high
    if max(space.dim("ende").values) > high:
        raise ConfigError(f"{where}: ende values {list(space.dim('ende').values)} exceed the "
                          f"most encoder layers ({high}): a decoder layer attends to the "
                          "last ende encoder layers")
    return s


def _per_layer(arch: Arch, name: str, depth: str, default: str | None = None) -> list[int]:
    value = arch.get(name, arch.get(default) if default else None)
    return list(value) if isinstance(value, (list, tuple)) else [value] * arch[depth]


def _layout(arch: Arch, s: dict[str, Any]) -> dict[str, Any]:
    """The per-layer values of ``arch``, as both models read them (experts: None for an MLP
    feed-forward)."""
    def experts(name: str, depth: str) -> list[int | None]:
        if s["moe"] is None:
            return [None] * arch[depth]
        value = arch.get(name, s["moe"]["experts"])
        return list(value) if isinstance(value, (list, tuple)) else [value] * arch[depth]

    return {"enc_experts": experts("enc_experts", "enc_layers"),
            "dec_experts": experts("dec_experts", "dec_layers"),
            "enc_embed": arch["enc_embed"], "dec_embed": arch["dec_embed"],
            "enc_ffn": _per_layer(arch, "enc_ffn", "enc_layers"),
            "enc_heads": _per_layer(arch, "enc_heads", "enc_layers"),
            "dec_ffn": _per_layer(arch, "dec_ffn", "dec_layers"),
            "dec_heads": _per_layer(arch, "dec_heads", "dec_layers"),
            "cross_heads": _per_layer(arch, "dec_cross_heads", "dec_layers", "dec_heads"),
            # An encoder shallower than ende: all of its layers.
            "ende": [min(k, arch["enc_layers"]) for k in _per_layer(arch, "ende", "dec_layers")]}


# ---- layers ----------------------------------------------------------------------------
def _ffn(embed: int, ffn: int, experts: int | None, s: dict[str, Any], elastic: bool
         ) -> nn.Module:
    """An MLP, or with ``model.moe`` a mixture of ``experts`` experts ``ffn`` wide."""
    if experts is None:
        return (ElasticMLP if elastic else MLP)(embed, ffn, s["activation"])
    moe = ElasticMoEFeedForward if elastic else MoEFeedForward
    return moe(embed, experts, ffn, s["moe"]["top_k"], s["activation"])


def _configure_ffn(m: nn.Module, embed: int, ffn: int, experts: int | None) -> None:
    if experts is None:
        m.configure(embed, ffn)
    else:
        m.configure(embed, experts, ffn)


class EncoderLayer(nn.Module):
    def __init__(self, embed: int, ffn: int, heads: int, experts: int | None,
                 s: dict[str, Any], elastic: bool):
        super().__init__()
        norm = ElasticLayerNorm if elastic else nn.LayerNorm
        self.norm1, self.norm2 = norm(embed), norm(embed)
        self.attn = (ElasticAttention if elastic else Attention)(embed, embed, s["qkv_dim"],
                                                                 heads)
        self.ffn = _ffn(embed, ffn, experts, s, elastic)

    def configure(self, embed: int, ffn: int, heads: int, experts: int | None) -> None:
        self.norm1.configure(embed)
        self.norm2.configure(embed)
        self.attn.configure(embed, embed, heads)
        _configure_ffn(self.ffn, embed, ffn, experts)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, mask)
        return x + self.ffn(self.norm2(x))


class DecoderLayer(nn.Module):
    def __init__(self, embed: int, enc_embed: int, ffn: int, heads: int, cross_heads: int,
                 experts: int | None, s: dict[str, Any], elastic: bool):
        super().__init__()
        norm = ElasticLayerNorm if elastic else nn.LayerNorm
        attn = ElasticAttention if elastic else Attention
        self.norm1, self.norm2, self.norm3 = norm(embed), norm(embed), norm(embed)
        self.self_attn = attn(embed, embed, s["qkv_dim"], heads)
        self.cross_attn = attn(embed, enc_embed, s["qkv_dim"], cross_heads)
        self.ffn = _ffn(embed, ffn, experts, s, elastic)

    def configure(self, embed: int, enc_embed: int, ffn: int, heads: int, cross_heads: int,
                  experts: int | None) -> None:
        for norm in (self.norm1, self.norm2, self.norm3):
            norm.configure(embed)
        self.self_attn.configure(embed, embed, heads)
        self.cross_attn.configure(embed, enc_embed, cross_heads)
        _configure_ffn(self.ffn, embed, ffn, experts)

    def forward(self, x: torch.Tensor, causal: torch.Tensor, memory: torch.Tensor,
                memory_mask: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.self_attn(h, h, causal)
        x = x + self.cross_attn(self.norm2(x), memory, memory_mask)
        return x + self.ffn(self.norm3(x))


class Stack(nn.Module):
    def __init__(self, layers: list[nn.Module], norm: nn.Module):
        super().__init__()
        self.layers, self.norm = nn.ModuleList(layers), norm


# ---- the computation both models share -------------------------------------------------
class _Seq2Seq(nn.Module):
    """Forward, decoding and timing over ``self.plan`` (``_layout`` of the active arch)."""

    plan: dict[str, Any]
    drop: nn.Module | None = None

    def _table(self) -> torch.Tensor:
        embed = self.embed
        return embed.active_weight() if hasattr(embed, "active_weight") else embed.weight

    def _embed(self, tokens: torch.Tensor, positions: torch.Tensor, dim: int) -> torch.Tensor:
        x = F.embedding(tokens, self._table()[:, :dim]) * math.sqrt(dim)
        return x + sinusoid(positions, dim).to(x.dtype)

    def _encode(self, src: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Each decoder layer's memory (the last ``ende`` encoder outputs, normed and joined
        along the source) and its padding mask (n, 1, 1, Tk)."""
        pad = src == PAD
        positions = torch.arange(src.shape[1], device=src.device)
        x = self._embed(src, positions, self.plan["enc_embed"])
        mask = pad[:, None, None, :]
        outs = []
        for layer in self.encoder.layers[: len(self.plan["enc_ffn"])]:
            x = layer(x, mask)
            outs.append(x)
        ende = self.plan["ende"]
        normed = [self.encoder.norm(o) for o in outs[-max(ende):]]
        memories = [torch.cat(normed[-k:], dim=1) if k > 1 else normed[-1] for k in ende]
        masks = [pad.repeat(1, k)[:, None, None, :] for k in ende]
        return memories, masks

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        x = self.decoder.norm(x)
        if self.drop is not None:
            x = self.drop(x)
        return self.output(x, self._table())

    def forward(self, src_tokens: torch.Tensor, prev_tokens: torch.Tensor) -> torch.Tensor:
        memories, masks = self._encode(src_tokens)
        t = prev_tokens.shape[1]
        positions = torch.arange(t, device=prev_tokens.device)
        causal = torch.ones(t, t, dtype=torch.bool, device=prev_tokens.device).triu(1)
        x = self._embed(prev_tokens, positions, self.plan["dec_embed"])
        for layer, memory, mask in zip(self.decoder.layers, memories, masks):
            x = layer(x, causal, memory, mask)
        return self._logits(x)

    # ---- incremental decoding ----------------------------------------------------------
    def begin(self, src_tokens: torch.Tensor) -> dict[str, Any]:
        """The decoder's state before its first step: per layer, the encoder-decoder
        attention's keys and values (projected once) with their mask, and empty caches."""
        memories, masks = self._encode(src_tokens)
        cross = [(layer.cross_attn.k(m), layer.cross_attn.v(m), mask)
                 for layer, m, mask in zip(self.decoder.layers, memories, masks)]
        return {"cross": cross, "keys": [None] * len(cross), "values": [None] * len(cross),
                "step": 0}

    def step(self, state: dict[str, Any], tokens: torch.Tensor) -> torch.Tensor:
        """Logits (n, vocab) of the next position after ``tokens`` (n,), the tokens at
        position ``state["step"]``; updates ``state``'s caches."""
        positions = torch.full((1,), state["step"], device=tokens.device)
        x = self._embed(tokens[:, None], positions, self.plan["dec_embed"])
        for j, layer in enumerate(self.decoder.layers[: len(state["cross"])]):
            a, h = layer.self_attn, layer.norm1(x)
            k, v = a.k(h), a.v(h)
            if state["keys"][j] is not None:
                k = torch.cat([state["keys"][j], k], dim=1)
                v = torch.cat([state["values"][j], v], dim=1)
            state["keys"][j], state["values"][j] = k, v
            x = x + a.out(attend(a.q(h), k, v, a.heads, None))
            c = layer.cross_attn
            ck, cv, mask = state["cross"][j]
            x = x + c.out(attend(c.q(layer.norm2(x)), ck, cv, c.heads, mask))
            x = x + layer.ffn(layer.norm3(x))
        state["step"] += 1
        return self._logits(x)[:, 0]

    @staticmethod
    def reorder(state: dict[str, Any], rows: torch.Tensor) -> dict[str, Any]:
        """``state`` keeping batch rows ``rows`` (in that order): beam search's survivors."""
        pick = lambda t: None if t is None else t.index_select(0, rows)  # noqa: E731
        return {"cross": [tuple(pick(t) for t in c) for c in state["cross"]],
                "keys": [pick(t) for t in state["keys"]],
                "values": [pick(t) for t in state["values"]], "step": state["step"]}

    @torch.no_grad()
    def timed_forward(self, src_tokens: torch.Tensor, prev_tokens: torch.Tensor) -> None:
        """What latency times (HAT's measure): the encoder once at the source's length, then
        the decoder step by step with its cache, one step per position of ``prev_tokens``
        (fed, not chosen: every subnet does the same amount of work)."""
        state = self.begin(src_tokens)
        for t in range(prev_tokens.shape[1]):
            self.step(state, prev_tokens[:, t])


class TransformerMTSupernet(_Seq2Seq):
    """Every SubTransformer of a ``transformer_mt`` space in one set of weights."""

    def __init__(self, space: SearchSpace):
        super().__init__()
        s = self.settings = _check(space)
        big = lambda name: max(space.dim(name).values)  # noqa: E731
        enc, dec = big("enc_embed"), big("dec_embed")
        self.embed = ElasticEmbedding(s["vocab_size"], max(enc, dec))
        nn.init.normal_(self.embed.weight, std=max(enc, dec) ** -0.5)  # fairseq's
        cross = big("dec_cross_heads") if "dec_cross_heads" in space.names else big("dec_heads")
        experts = None if s["moe"] is None else s["moe"]["experts"]
        self.encoder = Stack([EncoderLayer(enc, big("enc_ffn"), big("enc_heads"), experts, s,
                                           True)
                              for _ in range(space.dim("enc_layers").largest())],
                             ElasticLayerNorm(enc))
        self.decoder = Stack([DecoderLayer(dec, enc, big("dec_ffn"), big("dec_heads"), cross,
                                           experts, s, True)
                              for _ in range(space.dim("dec_layers").largest())],
                             ElasticLayerNorm(dec))
        self.output = TiedOutput()
        self.drop = SubnetDropout()  # on the decoder's features entering the output
        self.set_arch(space.largest())

    def set_arch(self, arch: Arch) -> None:
        p = self.plan = _layout(arch, self.settings)
        enc, dec = p["enc_embed"], p["dec_embed"]
        self.embed.configure(max(enc, dec))
        self.encoder.norm.configure(enc)
        self.decoder.norm.configure(dec)
        for layer, *values in zip(self.encoder.layers, p["enc_ffn"], p["enc_heads"],
                                  p["enc_experts"]):
            layer.configure(enc, *values)
        for layer, *values in zip(self.decoder.layers, p["dec_ffn"], p["dec_heads"],
                                  p["cross_heads"], p["dec_experts"]):
            layer.configure(dec, enc, *values)
        self.arch = arch


class StaticTransformerMT(_Seq2Seq):
    """One SubTransformer as a plain torch model, from model settings and an Arch alone."""

    def __init__(self, model: dict[str, Any], arch: Arch):
        super().__init__()
        s = settings(model)
        p = self.plan = _layout(arch, s)
        enc, dec = p["enc_embed"], p["dec_embed"]
        self.embed = nn.Embedding(s["vocab_size"], max(enc, dec))
        self.encoder = Stack([EncoderLayer(enc, *values, s, False) for values in
                              zip(p["enc_ffn"], p["enc_heads"], p["enc_experts"])],
                             nn.LayerNorm(enc))
        self.decoder = Stack([DecoderLayer(dec, enc, *values, s, False) for values in
                              zip(p["dec_ffn"], p["dec_heads"], p["cross_heads"],
                                  p["dec_experts"])], nn.LayerNorm(dec))
        self.output = TiedOutput()


register_family(Family(
    name="transformer_mt",
    supernet=TransformerMTSupernet,
    static=StaticTransformerMT,
    tasks=("translation",),
    dims=dim_names,
))
