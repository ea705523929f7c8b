"""Mixture-of-experts feed-forward layer, static and elastic, with expert-load statistics.

A router ``Linear(embed, experts)`` scores every token; the token goes to its ``top_k``
experts by logit, weighted by the softmax over those ``k`` logits (renormalised top-k, as
WeNet's U2++ MoE does), and the output is the weighted sum of their MLPs, expert ``e`` being
``act(x @ w1[e] + b1[e]) @ w2[e] + b2[e]``. No auxiliary loss, no capacity: every token
reaches all of its ``k`` experts.

Computed in blocks, with no Python loop over experts (``moe_experts``, shared by both
layers): the (token, slot) assignments are sorted by expert, each expert's run of rows is
padded up to a multiple of a block's rows (``BLOCK``; fewer for few tokens in an eager
forward, ``block_size``), every block gathers its expert's weights once, one
``baddbmm`` per matmul runs all blocks, and the weighted rows go back to (token, slot) order
and each token's ``k`` rows are summed. The number of blocks is the most any routing can need,
``(tokens * k + experts * (BLOCK - 1)) // BLOCK``, so every shape follows from the input's
shape alone: tracing and ONNX export keep the batch dynamic, and the FLOPs of a forward
(``matmul_flops``, the ``count_flops`` protocol) are known without running it. The blocks
left over after the last expert's run hold zeros and reach no token. At most
``experts * (BLOCK - 1)`` rows are padding (``ideal_flops`` is the unpadded figure).

The elastic layer runs the first ``experts`` experts (their router rows and weights), the
first ``hidden`` units of each and the first ``embed`` features, and routes over the active
experts only: an inactive expert's weights never reach the output. ``active_state()`` is
keyed like the static layer's state dict (``router.weight``, ``router.bias``, ``w1``, ``b1``,
``w2``, ``b2``).

Expert load: each eager forward records the assignments per active expert in ``last_load``
(int64, detached; a plain attribute, not in the state dict) and, while ``track_load`` is on,
adds them to ``load`` (``reset_load`` clears it). Scripted, traced and exported forwards
record nothing (``torch.jit.trace``'s check re-runs the module eagerly: that run records).
``expert_loads`` gathers them by layer name, ``load_entropy`` scores balance.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from raynas.nn.activations import ACTIVATIONS
from raynas.nn.elastic import ElasticLinear, ElasticModule

# Rows per block. Each block copies its expert's w1 and w2, so small blocks spend their time
# gathering weights and large ones on padding rows (up to experts * (BLOCK - 1)). Timed on the
# CPU, one thread, top-2, hidden 4 x embed, 65-6304 tokens, embed 96-192, 4-16 experts: the
# geometric-mean slowdown against the best block per case was, for 16 / 32 / 64 / 128 rows,
# 2.09 / 1.47 / 1.19 / 1.35 (inference) and 2.36 / 1.31 / 1.19 / 1.29 (forward + backward).
BLOCK = 64
# Few tokens (a speech utterance at batch 1: 23 frames, 46 assignments over 8 experts) pad
# each expert's handful of rows to a whole block: 512 rows for 46 at 64 rows a block. An eager
# forward takes the power of two at least the mean assignments per expert, within
# MIN_BLOCK..BLOCK (``block_size``). Timed at one thread, embed 64, hidden 256, 8 experts,
# top-2, against 8 / 16 / 32 / 64-row blocks: 23 tokens 409 / 406 / 538 / 930 us, 100 tokens
# 2138 / 660 / 679 / 912 us, 400 tokens 7693 / 2217 / 1782 / 1653 us. Traced, scripted and
# exported graphs keep BLOCK: their shapes must hold for any number of tokens.
MIN_BLOCK = 16


def _activate(h: torch.Tensor, act: str) -> torch.Tensor:
    # By name, not a callable: TorchScript cannot pass functions. Covers ACTIVATIONS.
    if act == "gelu":
        return F.gelu(h)
    if act == "relu":
        return F.relu(h)
    if act == "hardswish":
        return F.hardswish(h)
    if act == "silu":
        return F.silu(h)
    raise ValueError("unknown activation " + act)


def block_size(tokens: int, experts: int, top_k: int) -> int:
    """Rows per block of an eager forward over ``tokens`` tokens (see ``MIN_BLOCK``)."""
    per_expert = (tokens * top_k + experts - 1) // experts
    block = MIN_BLOCK
    while block < per_expert and block < BLOCK:
        block *= 2
    return block


def padded_rows(tokens: int, experts: int, top_k: int, block: int = BLOCK) -> int:
    """Rows the expert matmuls run on for ``tokens`` tokens: room for ``tokens * top_k``
    assignments with each expert's run padded to a multiple of ``block``, however the tokens
    are routed (the most blocks any routing needs). Works on traced and symbolic sizes too."""
    return (tokens * top_k + experts * (block - 1)) // block * block


def moe_experts(x: torch.Tensor, logits: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor,
                w2: torch.Tensor, b2: torch.Tensor, top_k: int, act: str = "gelu",
                block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """The routed expert MLPs of tokens ``x`` (N, D) with router ``logits`` (N, E); ``w1``
    (E, D, H), ``b1`` (E, H), ``w2`` (E, H, D), ``b2`` (E, D). Returns the output (N, D) and
    the assignments per expert (E,), int64. Sizes come only from arithmetic on ``x.shape``
    (which tracing records and export keeps symbolic), never from tensor values, so traced
    and exported models keep N dynamic."""
    experts = w1.shape[0]
    top, chosen = logits.topk(top_k, dim=-1)  # (N, k)
    gate = top.softmax(dim=-1).flatten()
    expert = chosen.flatten()
    token = torch.arange(x.shape[0], device=x.device).unsqueeze(1).expand_as(chosen).flatten()
    expert, order = expert.sort()  # any order within a run will do
    token, gate = token[order], gate[order]
    # Counted by comparison, not index_add: onnxruntime's ScatterND with reduction "add"
    # (what index_add exports to) lost updates to repeated indices at a few thousand rows.
    counts = (expert.unsqueeze(1) == torch.arange(experts, device=x.device)).sum(0)
    padded = (counts + (block - 1)) // block * block
    pad_end = padded.cumsum(0)
    run_start = counts.cumsum(0) - counts
    # Row of each sorted assignment in the padded buffer: its expert's padded start plus its
    # rank in the expert's run.
    assignments = torch.arange(expert.shape[0], device=x.device)
    dest = (pad_end - padded)[expert] + assignments - run_start[expert]
    rows = padded_rows(x.shape[0], experts, top_k, block)
    xin = x.new_zeros(rows, x.shape[1]).index_copy(0, dest, x.index_select(0, token))
    xin = xin.unflatten(0, (-1, block))  # (blocks, block, D)
    # Block b holds expert e's rows when pad_end[e - 1] <= b * block < pad_end[e]; the blocks
    # after the last run hold zeros (clamped to the last expert, their output unused).
    starts = torch.arange(xin.shape[0], device=x.device) * block
    owner = (pad_end.unsqueeze(0) <= starts.unsqueeze(1)).sum(1).clamp(max=experts - 1)
    # index_select, not w1[owner]: on the CPU it copies large slices faster.
    h = torch.baddbmm(b1.index_select(0, owner).unsqueeze(1), xin, w1.index_select(0, owner))
    y = torch.baddbmm(b2.index_select(0, owner).unsqueeze(1), _activate(h, act),
                      w2.index_select(0, owner)).flatten(0, 1)
    rows_out = y.index_select(0, dest) * gate.unsqueeze(1)
    # Back to (token, slot) order (each index once), then each token's k rows summed: a
    # fixed order of addition, and no scatter with repeated indices (see counts above).
    rows_out = torch.zeros_like(rows_out).index_copy(0, order, rows_out)
    return rows_out.unflatten(0, (-1, top_k)).sum(1), counts


def _expert_param(*shape: int, fan_in: int) -> nn.Parameter:
    # nn.Linear's default init, per expert.
    bound = fan_in ** -0.5
    return nn.Parameter(torch.empty(*shape).uniform_(-bound, bound))


class _LoadRecorder:
    """Expert-load bookkeeping shared by both layers (``last_load``, ``load``). No class
    annotations: TorchScript would read them as the module's attribute types."""

    def _init_load(self) -> None:
        self.track_load, self.last_load, self.load = False, None, None
        self.full_block = BLOCK  # a scripted forward's (TorchScript reads no global int)

    def reset_load(self) -> None:
        """Forget the accumulated ``load``."""
        self.load = None

    @torch.jit.unused
    def _block(self, tokens: int) -> int:
        """``block_size`` in an eager forward; ``BLOCK`` while a graph is captured."""
        if (torch.jit.is_tracing() or torch.compiler.is_compiling()
                or torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()):
            return BLOCK
        return block_size(tokens, self.experts, self.top_k)

    @torch.jit.unused
    def _record(self, counts: torch.Tensor) -> None:
        if (torch.jit.is_tracing() or torch.compiler.is_compiling()
                or torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()):
            return
        counts = counts.detach()
        self.last_load = counts
        if self.track_load:
            if self.load is None:
                self.load = torch.zeros(self.max_experts, dtype=torch.long,
                                        device=counts.device)
            self.load = self.load.to(counts.device)
            self.load[: counts.shape[0]] += counts


def _tokens(x: torch.Tensor, embed: int) -> int:
    return x.numel() // embed


class MoEFeedForward(_LoadRecorder, nn.Module):
    """Mixture-of-experts MLP on tokens (..., embed): ``experts`` experts ``hidden`` wide,
    ``top_k`` per token (``act``: a ``raynas.nn.ACTIVATIONS`` name)."""

    def __init__(self, embed: int, experts: int, hidden: int, top_k: int, act: str = "gelu"):
        super().__init__()
        _check(embed, experts, hidden, top_k, (embed, experts, hidden), act)
        self.embed, self.experts, self.hidden, self.top_k, self.act = (
            embed, experts, hidden, top_k, act)
        self.max_experts = experts
        self.router = nn.Linear(embed, experts)
        self.w1 = _expert_param(experts, embed, hidden, fan_in=embed)
        self.b1 = _expert_param(experts, hidden, fan_in=embed)
        self.w2 = _expert_param(experts, hidden, embed, fan_in=hidden)
        self.b2 = _expert_param(experts, embed, fan_in=hidden)
        self._init_load()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(-1, x.shape[-1])  # the router rejects a wrong width
        block = self.full_block
        if not torch.jit.is_scripting():
            block = self._block(tokens.shape[0])
        out, counts = moe_experts(tokens, self.router(tokens), self.w1, self.b1, self.w2,
                                  self.b2, self.top_k, self.act, block)
        if not torch.jit.is_scripting():
            self._record(counts)
        return out.view_as(x)

    def matmul_flops(self, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
        """FLOPs of the expert matmuls an eager forward runs, padding rows included
        (``count_flops`` protocol; the router is a Linear, counted as one)."""
        tokens = _tokens(inputs[0], self.embed)
        rows = padded_rows(tokens, self.experts, self.top_k,
                           block_size(tokens, self.experts, self.top_k))
        return 4 * rows * self.embed * self.hidden

    def ideal_flops(self, tokens: int) -> int:
        """FLOPs of ``top_k`` expert MLPs per token, without padding (2 per MAC)."""
        return 2 * tokens * self.top_k * 2 * self.embed * self.hidden

    def extra_repr(self) -> str:
        return (f"embed={self.embed}, experts={self.experts}, hidden={self.hidden}, "
                f"top_k={self.top_k}, act={self.act!r}")


def _check(embed: int, experts: int, hidden: int, top_k: int, maxima: tuple[int, int, int],
           act: str | None = None) -> None:
    if act is not None and act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; known: {sorted(ACTIVATIONS)}")
    sizes = (embed, experts, hidden)
    if not (0 < top_k <= experts and all(0 < s <= m for s, m in zip(sizes, maxima))):
        raise ValueError(f"MoE slice (embed={embed}, experts={experts}, hidden={hidden}, "
                         f"top_k={top_k}) needs 0 < top_k <= experts and each size in "
                         f"1..its maximum {maxima}")


class ElasticMoEFeedForward(_LoadRecorder, ElasticModule):
    """``MoEFeedForward`` with elastic embedding width, experts and hidden width (up to the
    maxima given here; ``top_k`` is fixed). ``configure(embed, experts, hidden)`` selects the
    first ``experts`` experts, the first ``hidden`` units of each, the first ``embed``
    features."""

    def __init__(self, max_embed: int, max_experts: int, max_hidden: int, top_k: int,
                 act: str = "gelu"):
        super().__init__()
        _check(max_embed, max_experts, max_hidden, top_k, (max_embed, max_experts, max_hidden),
               act)
        self.max_embed, self.max_experts, self.max_hidden = max_embed, max_experts, max_hidden
        self.top_k, self.act = top_k, act
        self.router = ElasticLinear(max_embed, max_experts)
        self.w1 = _expert_param(max_experts, max_embed, max_hidden, fan_in=max_embed)
        self.b1 = _expert_param(max_experts, max_hidden, fan_in=max_embed)
        self.w2 = _expert_param(max_experts, max_hidden, max_embed, fan_in=max_hidden)
        self.b2 = _expert_param(max_experts, max_embed, fan_in=max_hidden)
        self._init_load()
        self.configure(max_embed, max_experts, max_hidden)

    def configure(self, embed: int, experts: int, hidden: int) -> None:
        _check(embed, experts, hidden, self.top_k,
               (self.max_embed, self.max_experts, self.max_hidden))
        self.embed, self.experts, self.hidden = embed, experts, hidden
        self.router.configure(embed, experts)

    def _experts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        e, d, h = self.experts, self.embed, self.hidden
        return (self.param("w1")[:e, :d, :h], self.param("b1")[:e, :h],
                self.param("w2")[:e, :h, :d], self.param("b2")[:e, :d])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(-1, x.shape[-1])  # the router rejects a wrong width
        out, counts = moe_experts(tokens, self.router(tokens), *self._experts(), self.top_k,
                                  self.act, self._block(tokens.shape[0]))
        self._record(counts)
        return out.view_as(x)

    def matmul_flops(self, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
        tokens = _tokens(inputs[0], self.embed)
        rows = padded_rows(tokens, self.experts, self.top_k,
                           block_size(tokens, self.experts, self.top_k))
        return 4 * rows * self.embed * self.hidden

    def ideal_flops(self, tokens: int) -> int:
        return 2 * tokens * self.top_k * 2 * self.embed * self.hidden

    def active_state(self) -> dict[str, torch.Tensor]:
        w1, b1, w2, b2 = self._experts()
        state = {f"router.{k}": v for k, v in self.router.active_state().items()}
        state.update(w1=w1, b1=b1, w2=w2, b2=b2)
        return state

    def extra_repr(self) -> str:
        return (f"max_embed={self.max_embed}, max_experts={self.max_experts}, "
                f"max_hidden={self.max_hidden}, top_k={self.top_k}, act={self.act!r}")


MOE_LAYERS = (MoEFeedForward, ElasticMoEFeedForward)


def moe_settings(moe: Any, where: str) -> dict[str, int] | None:
    """A family's ``model.moe`` setting checked: None, or ``{experts: E, top_k: k}`` (k
    defaults to 2) with 1 <= k <= E; a ``ConfigError`` starting with ``where`` otherwise."""
    from raynas.errors import ConfigError

    if moe is None:
        return None
    if not isinstance(moe, Mapping) or set(moe) - {"experts", "top_k"}:
        raise ConfigError(f"{where}: model.moe must be {{experts: E, top_k: k}}, got {moe!r}")
    e, k = moe.get("experts"), moe.get("top_k", 2)
    if not (isinstance(e, int) and isinstance(k, int) and 1 <= k <= e):
        raise ConfigError(f"{where}: model.moe needs integers 1 <= top_k <= experts, got "
                          f"experts={e!r}, top_k={k!r}")
    return {"experts": e, "top_k": k}


def expert_loads(model: nn.Module, accumulated: bool = False) -> dict[str, torch.Tensor]:
    """Assignments per expert of every MoE layer in ``model``, by module name: of the last
    forward (``last_load``), or summed while ``track_load`` was on (``accumulated``). Layers
    with nothing recorded are left out."""
    loads = {}
    for name, m in model.named_modules():
        if isinstance(m, MOE_LAYERS):
            load = m.load if accumulated else m.last_load
            if load is not None:
                loads[name] = load
    return loads


def load_entropy(counts: torch.Tensor) -> float:
    """Entropy in nats of the load distribution ``counts`` (assignments per expert):
    ``log(E)`` when uniform over E experts, 0 when one expert takes everything."""
    counts = counts.detach().double().flatten()
    total = float(counts.sum())
    if not total > 0:
        raise ValueError("load_entropy: no assignments recorded")
    p = counts[counts > 0] / total
    return max(0.0, -float((p * p.log()).sum()))

