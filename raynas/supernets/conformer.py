"""The ``conformer`` family: a Conformer encoder with a CTC head, streaming by dynamic chunks
(U2++), with optional mixture-of-experts feed-forwards (U2++ MoE).

Layout, input to output (WeNet's ``ConformerEncoder`` with ``normalize_before``):

1. front end (``raynas.nn.conformer.Subsampling``): log-mel frames (n, T, ``n_mels``) to
   (n, T', ``d_model``) with T' about T / 4, scaled by sqrt(d_model) plus sinusoidal positions;
2. ``blocks`` Conformer blocks, each: half a feed-forward (macaron), multi-head self-attention,
   the convolution module, the other half feed-forward, layer norm. Every sub-layer is
   pre-norm and residual; the feed-forwards add half their output. A feed-forward is an MLP
   ``ffn`` wide with swish, or with ``model.moe`` a mixture of ``experts`` experts of that
   width, each frame computed by its ``top_k`` best (U2++ MoE puts one in both halves);
3. layer norm and a linear CTC head over ``vocab_size`` outputs (0 is the blank).

Attention projects q, k and v to ``model.attention_dim`` whatever ``d_model`` is, and ``heads``
re-partition that width (HAT's layout, ``raynas.nn.seq2seq``); positions are absolute
(WeNet's ``abs_pos``; its default ``rel_pos`` is not built).

Streaming (U2++ dynamic chunks): the ``chunk`` dimension is the decoding chunk in encoder
frames (0: the whole utterance) and ``left_chunks`` the earlier chunks a frame still sees
(-1: all). Attention is masked to them and, with ``model.causal`` (default true), the
convolution module reads past frames only, so a frame's output never depends on a later
chunk: a chunked model streams. Both are architecture dimensions: training samples them per
subnet like any width (one model learns every chunk size, as U2++'s dynamic chunk training
does), they are part of every arch key and so of every latency key, and a search trades
chunk size against WER. Optional: without them every subnet uses the whole utterance.
A subnet's latency (``timed_forward``) is its final latency, the compute left when the
speaker stops: the whole forward without chunks, the last chunk with the caches of all
earlier ones with them (``raynas.supernets.conformer_stream``). FLOPs count the whole
forward either way.

Task: ``speech_recognition`` (``raynas.tasks.speech``): frames and their lengths in, CTC
logits per encoder frame out.

Dimensions: ``blocks`` (int), ``d_model`` (choice); ``ffn``, ``heads`` and ``kernel`` (each a
choice or a per_layer over ``blocks``; kernels odd unless causal); with ``model.moe``
``experts`` (optional, default all); optional ``chunk`` and ``left_chunks`` (choices).
Model settings: ``n_mels``, ``vocab_size``, ``max_frames``, ``attention_dim``,
``subsample_channels``; optional ``causal`` (true), ``activation`` (silu), ``moe``
(``{experts: E, top_k: k}``), ``latency_frames`` (input frames timed, default max_frames).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from raynas.errors import ConfigError
from raynas.nn import MLP, ElasticLayerNorm, ElasticLinear, ElasticMLP, SubnetDropout
from raynas.nn.conformer import (
    MIN_FRAMES,
    ConvModule,
    ElasticConvModule,
    ElasticSubsampling,
    Subsampling,
    attention_mask,
    frame_width,
    subsampled_lengths,
)
from raynas.nn.moe import ElasticMoEFeedForward, MoEFeedForward, moe_settings
from raynas.nn.seq2seq import Attention, ElasticAttention, sinusoid
from raynas.space import Arch, Choice, PerLayer, SearchSpace
from raynas.supernets import (
    Family,
    activation_setting,
    check_layer_dims,
    positive_settings,
    register_family,
)

_LAYER_DIMS = ("ffn", "heads", "kernel")
_STREAM_DIMS = ("chunk", "left_chunks")


def settings(model: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The family's model settings, checked (``ConfigError`` starting with ``where``)."""
    keys = ("n_mels", "vocab_size", "max_frames", "attention_dim", "subsample_channels")
    positive_settings(model, keys, where)
    if frame_width(model["n_mels"]) < 1:
        raise ConfigError(f"{where}: model.n_mels = {model['n_mels']}; the front end needs at "
                          f"least {MIN_FRAMES} mel bins")
    if model["max_frames"] < MIN_FRAMES:
        raise ConfigError(f"{where}: model.max_frames = {model['max_frames']}; at least "
                          f"{MIN_FRAMES} (the front end's shortest input)")
    causal = model.get("causal", True)
    if not isinstance(causal, bool):
        raise ConfigError(f"{where}: model.causal = {causal!r}; true or false")
    frames = model.get("latency_frames", model["max_frames"])
    if isinstance(frames, bool) or not (isinstance(frames, int)
                                        and MIN_FRAMES <= frames <= model["max_frames"]):
        raise ConfigError(f"{where}: model.latency_frames = {frames!r}; a whole number from "
                          f"{MIN_FRAMES} to model.max_frames = {model['max_frames']}")
    return {**{k: model[k] for k in keys}, "causal": causal, "latency_frames": frames,
            "activation": activation_setting(model, "silu", where),
            "moe": moe_settings(model.get("moe"), where)}


def dim_names(model: Mapping[str, Any]) -> set[str]:
    names = {"blocks", "d_model", *_LAYER_DIMS, *_STREAM_DIMS}
    return names | {"experts"} if model.get("moe") else names


def _ints(d: Any, name: str, where: str, low: int) -> None:
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= low for v in d.values):
        raise ConfigError(f"{where}: {name} values {list(d.values)} must be whole numbers "
                          f">= {low}")


def _check(space: SearchSpace) -> dict[str, Any]:
    where = f"space {space.name!r}"
    s = settings(space.model, where)
    check_layer_dims(space, "conformer", "blocks", ("d_model", *_LAYER_DIMS), s["moe"])
    if not isinstance(space.dim("d_model"), Choice):
        raise ConfigError(f"{where}: d_model must be a choice (one width for every block)")
    for name in ("d_model", *_LAYER_DIMS, "experts"):
        if name not in space.names:
            continue
        d = space.dim(name)
        if not (isinstance(d, Choice) or (isinstance(d, PerLayer) and d.depth == "blocks")):
            raise ConfigError(f"{where}: {name} must be a choice or a per_layer over 'blocks'")
        _ints(d, name, where, 1)
    bad = [h for h in space.dim("heads").values if s["attention_dim"] % h]
    if bad:
        raise ConfigError(f"{where}: heads {bad[0]} does not divide model.attention_dim = "
                          f"{s['attention_dim']}")
    if not s["causal"] and any(k % 2 == 0 for k in space.dim("kernel").values):
        raise ConfigError(f"{where}: kernel values {list(space.dim('kernel').values)} must be "
                          "odd with model.causal = false (a centred kernel)")
    for name, low in zip(_STREAM_DIMS, (0, -1)):
        if name in space.names:
            if not isinstance(space.dim(name), Choice):
                raise ConfigError(f"{where}: {name} must be a choice")
            _ints(space.dim(name), name, where, low)
    if "left_chunks" in space.names and "chunk" not in space.names:
        raise ConfigError(f"{where}: left_chunks needs a chunk dimension")
    return s


def layer_values(s: dict[str, Any], arch: Arch) -> list[tuple[int, int, int, int | None]]:
    """Per block: (ffn, heads, kernel, experts or None)."""
    def per(name: str, default: Any = None) -> list[Any]:
        v = arch.get(name, default)
        return list(v) if isinstance(v, (list, tuple)) else [v] * arch["blocks"]

    experts = per("experts", s["moe"]["experts"]) if s["moe"] else [None] * arch["blocks"]
    return list(zip(per("ffn"), per("heads"), per("kernel"), experts))


def _feed_forward(s: dict[str, Any], d: int, ffn: int, experts: int | None,
                  elastic: bool) -> nn.Module:
    act = s["activation"]
    if experts is None:
        return ElasticMLP(d, ffn, act) if elastic else MLP(d, ffn, act)
    top_k = s["moe"]["top_k"]
    return (ElasticMoEFeedForward(d, experts, ffn, top_k, act) if elastic
            else MoEFeedForward(d, experts, ffn, top_k, act))


def _block(m: nn.Module, x: torch.Tensor, mask: torch.Tensor, frames: torch.Tensor):
    def drop(y: torch.Tensor) -> torch.Tensor:
        return m.drop(y) if m.drop is not None else y

    x = x + 0.5 * drop(m.ff1(m.norm_ff1(x)))
    y = m.norm_att(x)
    x = x + drop(m.attn(y, y, mask))
    x = x + drop(m.conv(m.norm_conv(x), frames))
    x = x + 0.5 * drop(m.ff2(m.norm_ff2(x)))
    return m.norm_out(x)


class Block(nn.Module):
    """One static Conformer block."""

    def __init__(self, s: dict[str, Any], d: int, ffn: int, heads: int, kernel: int,
                 experts: int | None):
        super().__init__()
        self.norm_ff1, self.norm_att, self.norm_conv, self.norm_ff2, self.norm_out = (
            nn.LayerNorm(d) for _ in range(5))
        self.ff1 = _feed_forward(s, d, ffn, experts, elastic=False)
        self.attn = Attention(d, d, s["attention_dim"], heads)
        self.conv = ConvModule(d, kernel, s["causal"])
        self.ff2 = _feed_forward(s, d, ffn, experts, elastic=False)
        self.drop = None

    def forward(self, x, mask, frames):
        return _block(self, x, mask, frames)


class ElasticBlock(nn.Module):
    def __init__(self, s: dict[str, Any], d: int, ffn: int, heads: int, kernel: int,
                 experts: int | None):
        super().__init__()
        self.norm_ff1, self.norm_att, self.norm_conv, self.norm_ff2, self.norm_out = (
            ElasticLayerNorm(d) for _ in range(5))
        self.ff1 = _feed_forward(s, d, ffn, experts, elastic=True)
        self.attn = ElasticAttention(d, d, s["attention_dim"], heads)
        self.conv = ElasticConvModule(d, kernel, s["causal"])
        self.ff2 = _feed_forward(s, d, ffn, experts, elastic=True)
        self.drop = SubnetDropout()  # on every residual branch (train.dropout)
        self.moe = experts is not None

    def configure(self, d: int, ffn: int, heads: int, kernel: int, experts: int | None):
        for norm in (self.norm_ff1, self.norm_att, self.norm_conv, self.norm_ff2,
                     self.norm_out):
            norm.configure(d)
        for ff in (self.ff1, self.ff2):
            if self.moe:
                ff.configure(d, experts, ffn)
            else:
                ff.configure(d, ffn)
        self.attn.configure(d, d, heads)
        self.conv.configure(d, kernel)

    def forward(self, x, mask, frames):
        return _block(self, x, mask, frames)


def _encode(m: nn.Module, feats: torch.Tensor, feat_lengths: torch.Tensor) -> torch.Tensor:
    x = m.subsample(feats)
    positions = torch.arange(x.shape[1], device=x.device)
    x = x * math.sqrt(m.d) + sinusoid(positions, m.d).to(x.dtype)
    lengths = subsampled_lengths(feat_lengths)
    mask = attention_mask(lengths, x.shape[1], m.chunk, m.left_chunks)
    frames = (positions.unsqueeze(0) < lengths.unsqueeze(1)).unsqueeze(-1).to(x.dtype)
    for j in range(m.depth):
        x = m.blocks[j](x, mask, frames)
    x = m.norm(x)
    if m.drop is not None:
        x = m.drop(x)
    return m.head(x)


def _stream(arch: Arch) -> tuple[int, int]:
    return int(arch.get("chunk", 0)), int(arch.get("left_chunks", -1))


class ConformerSupernet(nn.Module):
    """Every subnet of a ``conformer`` space in one set of weights; ``set_arch`` first."""

    def __init__(self, space: SearchSpace):
        super().__init__()
        s = self.settings = _check(space)
        d = max(space.dim("d_model").values)
        ffn, heads, kernel = (max(space.dim(n).values) for n in _LAYER_DIMS)
        experts = s["moe"]["experts"] if s["moe"] else None
        self.subsample = ElasticSubsampling(s["n_mels"], s["subsample_channels"], d)
        self.blocks = nn.ModuleList(ElasticBlock(s, d, ffn, heads, kernel, experts)
                                    for _ in range(space.dim("blocks").largest()))
        self.norm = ElasticLayerNorm(d)
        self.head = ElasticLinear(d, s["vocab_size"])
        self.drop = SubnetDropout()  # on the features entering the CTC head
        self.set_arch(space.largest())

    def set_arch(self, arch: Arch) -> None:
        d = self.d = arch["d_model"]
        self.subsample.configure(d)
        self.norm.configure(d)
        self.head.configure(d, self.head.max_out)
        for block, values in zip(self.blocks, layer_values(self.settings, arch)):
            block.configure(d, *values)
        self.depth, self.arch = arch["blocks"], arch
        self.chunk, self.left_chunks = _stream(arch)

    def forward(self, feats: torch.Tensor, feat_lengths: torch.Tensor) -> torch.Tensor:
        return _encode(self, feats, feat_lengths)


class StaticConformer(nn.Module):
    """One subnet as a plain torch model, from model settings and an Arch alone; its chunk
    and left context are fixed (an exported streaming subnet decodes as it was searched)."""

    def __init__(self, model: dict[str, Any], arch: Arch):
        super().__init__()
        s = settings(model, "family 'conformer'")
        d = self.d = arch["d_model"]
        self.subsample = Subsampling(s["n_mels"], s["subsample_channels"], d)
        self.blocks = nn.ModuleList(Block(s, d, *values) for values in layer_values(s, arch))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, s["vocab_size"])
        self.depth, self.drop = len(self.blocks), None
        self.chunk, self.left_chunks = _stream(arch)

    def forward(self, feats: torch.Tensor, feat_lengths: torch.Tensor) -> torch.Tensor:
        return _encode(self, feats, feat_lengths)

    @torch.jit.unused
    def timed_forward(self, feats: torch.Tensor, feat_lengths: torch.Tensor):
        """What latency timing runs: the final latency, from the end of the audio to the
        final logits. Whole-utterance subnets: the forward. Chunked subnets: the last chunk
        of each utterance with the caches of every chunk before it (prepared once per input,
        not timed), as a streaming recogniser computes it when the speaker stops."""
        if self.chunk <= 0:
            return self(feats, feat_lengths)
        from raynas.supernets.conformer_stream import final_chunk, prepare_final_chunk

        prepared = self.__dict__.setdefault("_final_chunks", {})
        key = (feats.data_ptr(), tuple(feats.shape), tuple(feat_lengths.tolist()))
        if key not in prepared:
            prepared.clear()
            prepared[key] = [prepare_final_chunk(self, feats[i:i + 1, :n])
                             for i, n in enumerate(feat_lengths.tolist())]
        return [final_chunk(self, state, last) for state, last in prepared[key]]


register_family(Family(
    name="conformer",
    supernet=ConformerSupernet,
    static=StaticConformer,
    tasks=("speech_recognition",),
    dims=dim_names,
))
