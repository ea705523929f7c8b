"""Conformer ops as WeNet's U2++ encoder builds them: the convolutional front end that
subsamples frames by 4, the convolution module, and the masks of dynamic-chunk attention.

Front end (WeNet's ``Conv2dSubsampling4``): two 3x3 convolutions of stride 2 over (time, mel),
each followed by ReLU, then a linear map of the flattened channels to the model width. No
padding, so output frame i reads input frames 4i .. 4i+6 only: ``subsampled_lengths`` gives
the valid output frames, ``((T - 1) // 2 - 1) // 2``, and a padded batch computes at each
valid frame what the unpadded utterance computes.

Convolution module: pointwise linear to twice the width, GLU, a depthwise convolution over
time, layer norm, swish, pointwise linear. Padded frames are zeroed before the depthwise
convolution, so they reach no real frame. ``causal``: the kernel reads the current and the
``k - 1`` previous frames only (U2++'s streaming encoder); otherwise it is centred.

Attention masks (``attention_mask``): a frame attends to the real frames of its own chunk and
of earlier chunks, at most ``left_chunks`` of them (negative: all); chunk 0 means the whole
utterance. Every frame also sees itself, so a padded frame's row is never empty (no NaN).

Elastic twins follow ``raynas.nn.elastic``: full-size weights, ``configure`` picks the slice.
The elastic depthwise kernel keeps the centre taps (causal: the taps nearest the current
frame), as Once-for-All's elastic kernels do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raynas.nn.attention import ElasticFusedLinear, ElasticLayerNorm
from raynas.nn.elastic import ElasticLinear, ElasticModule

MIN_FRAMES = 7  # the shortest input the front end turns into one frame


def subsampled_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """Valid frames after the front end for inputs of ``lengths`` frames."""
    return ((lengths - 1) // 2 - 1) // 2


def frame_width(n_mels: int) -> int:
    """Mel bins left after the front end's two stride-2 convolutions."""
    return ((n_mels - 1) // 2 - 1) // 2


def attention_mask(lengths: torch.Tensor, t: int | torch.Tensor, chunk: int,
                   left_chunks: int) -> torch.Tensor:
    """Bool ``(n, 1, t, t)``, True where query frame i must not attend key frame j."""
    pos = torch.arange(t, device=lengths.device)
    valid = (pos.unsqueeze(0) < lengths.unsqueeze(1)).unsqueeze(1)  # (n, 1, t) keys
    if chunk > 0:
        block = pos // chunk
        allowed = block.unsqueeze(0) <= block.unsqueeze(1)  # (t, t): not a later chunk
        if left_chunks >= 0:
            allowed = allowed & (block.unsqueeze(0) >= block.unsqueeze(1) - left_chunks)
        allowed = allowed.unsqueeze(0) & valid
    else:
        allowed = valid
    allowed = allowed | (pos.unsqueeze(0) == pos.unsqueeze(1)).unsqueeze(0)
    return ~allowed.unsqueeze(1)


def _front(m: Subsampling | ElasticSubsampling, feats: torch.Tensor) -> torch.Tensor:
    x = F.relu(m.conv1(feats.unsqueeze(1)))
    x = F.relu(m.conv2(x))  # (n, channels, t', f')
    return m.out(x.transpose(1, 2).flatten(2))


class Subsampling(nn.Module):
    """The front end: feats (n, T, n_mels) -> (n, T', embed), T' = ``subsampled_lengths``."""

    def __init__(self, n_mels: int, channels: int, embed: int):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, 2)
        self.conv2 = nn.Conv2d(channels, channels, 3, 2)
        self.out = nn.Linear(channels * frame_width(n_mels), embed)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return _front(self, feats)


class ElasticSubsampling(nn.Module):
    """``Subsampling`` with an elastic output width (the convolutions are shared whole)."""

    def __init__(self, n_mels: int, channels: int, max_embed: int):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, 2)
        self.conv2 = nn.Conv2d(channels, channels, 3, 2)
        self.flat = channels * frame_width(n_mels)
        self.out = ElasticLinear(self.flat, max_embed)

    def configure(self, embed: int) -> None:
        self.out.configure(self.flat, embed)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return _front(self, feats)


class ElasticDepthwiseConv1d(ElasticModule):
    """Depthwise 1-d convolution (no padding of its own) over the first ``channels`` channels
    with a ``kernel``-tap slice of the full kernel. Static counterpart: ``nn.Conv1d(c, c, k,
    groups=c)``."""

    def __init__(self, max_channels: int, max_kernel: int, causal: bool):
        super().__init__()
        self.max_channels, self.max_kernel, self.causal = max_channels, max_kernel, causal
        conv = nn.Conv1d(max_channels, max_channels, max_kernel, groups=max_channels)
        self.weight, self.bias = conv.weight, conv.bias
        self.configure(max_channels, max_kernel)

    def configure(self, channels: int, kernel: int) -> None:
        if not (0 < channels <= self.max_channels and 0 < kernel <= self.max_kernel
                and (self.causal or kernel % 2 == 1)):
            raise ValueError(f"depthwise slice (channels={channels}, kernel={kernel}) exceeds "
                             f"({self.max_channels}, {self.max_kernel}) or is even (centred)")
        self.channels, self.kernel = channels, kernel

    def _taps(self) -> torch.Tensor:
        w, k = self.param("weight")[: self.channels], self.kernel
        start = self.max_kernel - k if self.causal else (self.max_kernel - k) // 2
        return w[:, :, start:start + k]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self._taps(), self.param("bias")[: self.channels],
                        groups=self.channels)

    def active_state(self) -> dict[str, torch.Tensor]:
        return {"weight": self._taps(), "bias": self.param("bias")[: self.channels]}


def _conv_module(m: ConvModule | ElasticConvModule, x: torch.Tensor,
                 frames: torch.Tensor) -> torch.Tensor:
    """x (n, t, d); frames (n, t, 1): 1.0 at real frames."""
    x = F.glu(m.pointwise1(x), dim=-1) * frames
    k = m.kernel
    pad = (k - 1, 0) if m.causal else (k // 2, k // 2)
    x = m.depthwise(F.pad(x.transpose(1, 2), pad)).transpose(1, 2)
    return m.pointwise2(F.silu(m.norm(x)))


class ConvModule(nn.Module):
    def __init__(self, embed: int, kernel: int, causal: bool):
        super().__init__()
        self.kernel, self.causal = kernel, causal
        self.pointwise1 = nn.Linear(embed, 2 * embed)
        self.depthwise = nn.Conv1d(embed, embed, kernel, groups=embed)
        self.norm = nn.LayerNorm(embed)
        self.pointwise2 = nn.Linear(embed, embed)

    def forward(self, x: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        return _conv_module(self, x, frames)


class ElasticConvModule(nn.Module):
    """``ConvModule`` with elastic width and kernel. The first pointwise layer's output holds
    GLU's two halves, so its rows are sliced per half: rows ``:d`` and ``D:D+d``."""

    def __init__(self, max_embed: int, max_kernel: int, causal: bool):
        super().__init__()
        self.causal, self.max_embed = causal, max_embed
        self.pointwise1 = ElasticFusedLinear(max_embed, (max_embed, max_embed))
        self.depthwise = ElasticDepthwiseConv1d(max_embed, max_kernel, causal)
        self.norm = ElasticLayerNorm(max_embed)
        self.pointwise2 = ElasticLinear(max_embed, max_embed)
        self.configure(max_embed, max_kernel)

    def configure(self, embed: int, kernel: int) -> None:
        self.kernel = kernel
        self.pointwise1.configure(embed, (embed, embed))
        self.depthwise.configure(embed, kernel)
        self.norm.configure(embed)
        self.pointwise2.configure(embed, embed)

    def forward(self, x: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        return _conv_module(self, x, frames)
