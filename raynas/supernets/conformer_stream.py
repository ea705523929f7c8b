"""Streaming decoding of a chunked ``conformer`` subnet: audio in chunk by chunk, CTC logits
out as each chunk completes, with caches instead of recomputation.

``stream(model, feats)`` runs a ``StaticConformer`` (``model.chunk > 0``, ``model.causal``
convolutions) over one utterance as a streaming recogniser would: for each chunk of ``c``
encoder frames it feeds the front end the ``4c + 3`` input frames those frames read (the last
3 overlap the next chunk's), runs every block on the chunk alone with

- an attention cache per block: the keys and values of earlier frames, the last
  ``left_chunks * c`` of them (all with ``left_chunks < 0``);
- a convolution cache per block: the last ``kernel - 1`` inputs of the causal depthwise
  convolution;

and emits the chunk's logits. The result equals the model's masked whole-utterance forward
(tested), so the masked forward that training, search and export use is what a deployed
streaming recogniser computes; ``stream`` is what its real-time factor is timed on.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from raynas.nn.conformer import subsampled_lengths
from raynas.nn.seq2seq import attend, sinusoid


class StreamState:
    """Per-block caches of one utterance."""

    def __init__(self, depth: int):
        self.keys: list[torch.Tensor | None] = [None] * depth
        self.values: list[torch.Tensor | None] = [None] * depth
        self.conv: list[torch.Tensor | None] = [None] * depth
        self.offset = 0  # encoder frames emitted so far


def _append(cache: torch.Tensor | None, new: torch.Tensor, keep: int | None) -> torch.Tensor:
    out = new if cache is None else torch.cat([cache, new], dim=1)
    return out if keep is None else out[:, max(out.shape[1] - keep, 0):]


def _block(block, x: torch.Tensor, state: StreamState, j: int, keep: int | None):
    x = x + 0.5 * block.ff1(block.norm_ff1(x))
    y = block.norm_att(x)
    attn = block.attn
    k_new, v_new = attn.k(y), attn.v(y)
    past_k, past_v = state.keys[j], state.values[j]
    k = k_new if past_k is None else torch.cat([past_k, k_new], dim=1)
    v = v_new if past_v is None else torch.cat([past_v, v_new], dim=1)
    x = x + attn.out(attend(attn.q(y), k, v, attn.heads, None))
    state.keys[j], state.values[j] = _append(past_k, k_new, keep), _append(past_v, v_new, keep)
    conv = block.conv
    g = F.glu(conv.pointwise1(block.norm_conv(x)), dim=-1)
    past = state.conv[j]
    if past is None:
        past = g.new_zeros(g.shape[0], conv.kernel - 1, g.shape[2])
    ext = torch.cat([past, g], dim=1)
    state.conv[j] = ext[:, ext.shape[1] - (conv.kernel - 1):]
    h = conv.depthwise(ext.transpose(1, 2)).transpose(1, 2)
    x = x + conv.pointwise2(F.silu(conv.norm(h)))
    x = x + 0.5 * block.ff2(block.norm_ff2(x))
    return block.norm_out(x)


@torch.no_grad()
def stream_chunk(model, feats: torch.Tensor, state: StreamState) -> torch.Tensor:
    """Logits (1, c', vocab) of the next chunk, from the input frames it reads (``feats``:
    (1, up to 4c + 3, n_mels), starting at frame 4 x ``state.offset``)."""
    x = model.subsample(feats)
    n = x.shape[1]
    positions = torch.arange(state.offset, state.offset + n)
    x = x * math.sqrt(model.d) + sinusoid(positions, model.d).to(x.dtype)
    keep = model.left_chunks * model.chunk if model.left_chunks >= 0 else None
    for j, block in enumerate(model.blocks):
        x = _block(block, x, state, j, keep)
    state.offset += n
    return model.head(model.norm(x))


@torch.no_grad()
def stream(model, feats: torch.Tensor) -> torch.Tensor:
    """``model``'s logits for one utterance ``feats`` (1, T, n_mels), computed chunk by chunk
    as they would stream in: (1, T', vocab), T' as the whole-utterance forward's."""
    if model.chunk <= 0:
        raise ValueError("stream: the subnet decodes the whole utterance (chunk 0)")
    if any(not b.conv.causal for b in model.blocks):
        raise ValueError("stream: the subnet's convolutions are not causal (model.causal)")
    state, c, out = StreamState(len(model.blocks)), model.chunk, []
    total = subsampled_lengths(feats.shape[1])
    while state.offset < total:
        start = 4 * state.offset
        out.append(stream_chunk(model, feats[:, start:start + 4 * c + 3], state))
    return torch.cat(out, dim=1)


@torch.no_grad()
def prepare_final_chunk(model, feats: torch.Tensor) -> tuple[StreamState, torch.Tensor]:
    """The stream state after every chunk of utterance ``feats`` (1, T, n_mels) but the last,
    and the input frames the last one reads: what is left to compute once the speaker
    stops."""
    state, c = StreamState(len(model.blocks)), model.chunk
    total = subsampled_lengths(feats.shape[1])
    while state.offset + c < total:
        start = 4 * state.offset
        stream_chunk(model, feats[:, start:start + 4 * c + 3], state)
    return state, feats[:, 4 * state.offset:]


def final_chunk(model, state: StreamState, last: torch.Tensor) -> torch.Tensor:
    """The last chunk's logits from a prepared state (``prepare_final_chunk``), leaving the
    state as it was: the final latency of a streaming recogniser, timed again and again."""
    copy = StreamState(0)
    copy.keys, copy.values, copy.conv = list(state.keys), list(state.values), list(state.conv)
    copy.offset = state.offset
    return stream_chunk(model, last, copy)
