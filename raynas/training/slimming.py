"""Network slimming's pieces for ``supertickets`` (``rho > 0``): channel drops as masks on
the elastic batch norms, and the resource-weighted L1 penalty of each channel (see the
module doc of ``raynas.training.pruning`` for the readings chosen)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from raynas.nn import ElasticBatchNorm2d
from raynas.weights.masks import norm_ops, prunable_ops


@torch.no_grad()
def drop_channels(net: nn.Module, threshold: float) -> int:
    """Mask every elastic BN channel whose ``|gamma| < threshold`` (dropped channels stay
    dropped); a BN keeps at least its largest channel. Returns the channels masked now."""
    dropped = 0
    for _, bn in norm_ops(net):
        mask = bn.weight_provider.weight
        small = (bn.weight.abs() < threshold) & (mask != 0)
        if bool(((mask != 0) & ~small).sum() == 0):  # keep one channel alive
            small[int((bn.weight.abs() * (mask != 0)).argmax())] = False
        dropped += int(small.sum())
        mask[small] = 0.0
        bn.weight_provider.bias.copy_(mask)
    return dropped


def channel_metrics(net: nn.Module) -> dict[str, float]:
    dropped = total = 0
    for _, bn in norm_ops(net):
        mask = bn.weight_provider.weight
        dropped += int((mask == 0).sum())
        total += mask.numel()
    return {"prune.channels_dropped": float(dropped),
            "prune.channel_share_dropped": dropped / max(total, 1)}


def _flops(op: nn.Module, out: torch.Tensor) -> float:
    """FLOPs of one conv / linear call per sample: 2 x outputs x weights per output."""
    per_output = op.active_weight()[0].numel()
    return 2.0 * out[0].numel() * per_output


@torch.no_grad()
def channel_penalties(net: nn.Module, inputs: Sequence[torch.Tensor]
                      ) -> dict[str, torch.Tensor]:
    """Per elastic BN, a ``(C,)`` penalty: each channel's FLOPs (producer's + consumer's,
    per channel) over the mean of that cost over all BN channels (see the module doc), on
    one forward of ``inputs`` with ``net`` as set (the loop sets the largest subnet)."""
    trace: list[tuple[str, int, int, float]] = []  # name, in, out, flops per sample
    names = {m: n for n, m in net.named_modules()}

    def hook(module, args, out):
        x = args[0]
        if isinstance(module, ElasticBatchNorm2d):
            trace.append((names[module], x.shape[1], out.shape[1], 0.0))
        else:  # a linear's features are on the last axis, a conv's channels on axis 1
            axis = -1 if module.weight.dim() == 2 else 1
            trace.append((names[module], x.shape[axis], out.shape[axis], _flops(module, out)))

    ops = [op for _, op in prunable_ops(net)] + [bn for _, bn in norm_ops(net)]
    handles = [op.register_forward_hook(hook) for op in ops]
    was_training = net.training
    net.eval()
    try:
        net(*[x[:1] for x in inputs])
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)
    bns = dict(norm_ops(net))
    cost: dict[str, float] = {}
    for i, (name, _, channels, _) in enumerate(trace):
        if name not in bns:
            continue
        before = next((f for n, _, o, f in reversed(trace[:i]) if n not in bns
                       and o == channels), 0.0)
        after = next((f for n, c, _, f in trace[i + 1:] if n not in bns
                      and c == channels), 0.0)
        cost[name] = (before + after) / channels
    channels_of = {name: bn.max_features for name, bn in bns.items()}
    total = sum(channels_of[n] for n in cost)
    mean = sum(cost[n] * channels_of[n] for n in cost) / max(total, 1)
    return {name: torch.full((channels_of[name],), cost.get(name, 0.0) / mean if mean else 0.0)
            for name in bns}
