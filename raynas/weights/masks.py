"""Pruning masks on the weight seam: fixed 0/1 masks that every subnet's forward and export see.

A ``Masks`` provider installed as an elastic op's ``weight_provider`` returns the op's own
full-size tensor times a mask (the op slices after, so a subnet sees the slice of the mask
that belongs to its slice of the weight). Two kinds of op carry masks:

- conv and linear ops (``PRUNABLE``): their ``weight``, one mask entry per weight (global
  magnitude pruning; biases and norms are never pruned);
- elastic batch norms (``ElasticBatchNorm2d``): ``weight`` and ``bias`` share one mask entry
  per channel (a dropped channel outputs 0: network slimming's channel drop as a mask, the
  model keeps its shape).

Masks are non-persistent buffers: the supernet's state dict stays what the family's module
has, and the masks travel beside it (``mask_state`` / ``install_masks``) in checkpoints and
tickets as boolean tensors keyed by op name. Works under the ``shared`` weight scheme, where
no other provider sits on the ops.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import nn

from raynas.errors import ConfigError
from raynas.nn import (
    ElasticBatchNorm2d,
    ElasticConv1d,
    ElasticConv2d,
    ElasticDepthwiseConv2d,
    ElasticLinear,
    ElasticModule,
)

# Conv and linear ops whose ``weight`` is pruned (ElasticFusedLinear is an ElasticLinear).
PRUNABLE = (ElasticConv2d, ElasticDepthwiseConv2d, ElasticConv1d, ElasticLinear)


class Masks(nn.Module):
    """The weight provider of one op: its own tensors, each ``name`` in ``shapes`` times a
    0/1 mask of that shape (broadcast over the tensor: a BN's ``(C,)`` masks match)."""

    def __init__(self, op: ElasticModule, names: tuple[str, ...]):
        super().__init__()
        for name in names:
            ref = op._parameters[name]
            self.register_buffer(name, torch.ones(ref.shape, dtype=ref.dtype,
                                                  device=ref.device), persistent=False)

    def forward(self, op: ElasticModule, name: str) -> torch.Tensor | None:
        tensor = op._parameters[name]
        mask = self._buffers.get(name)
        return tensor if mask is None or tensor is None else tensor * mask


def prunable_ops(net: nn.Module) -> Iterator[tuple[str, ElasticModule]]:
    """``(name, op)`` of every conv / linear elastic op, in module order (what global
    magnitude pruning ranks; the order is the tie-break, the same on every worker)."""
    for name, module in net.named_modules():
        if isinstance(module, PRUNABLE):
            yield name, module


def norm_ops(net: nn.Module) -> Iterator[tuple[str, ElasticBatchNorm2d]]:
    """``(name, bn)`` of every elastic batch norm (its affine scale is what slimming reads)."""
    for name, module in net.named_modules():
        if isinstance(module, ElasticBatchNorm2d):
            yield name, module


def _install(op: ElasticModule, names: tuple[str, ...]) -> Masks:
    current = op._modules.get("weight_provider")
    if isinstance(current, Masks):
        return current
    if current is not None:
        raise ConfigError("pruning masks need weights = 'shared': this op already has a "
                          f"weight provider ({type(current).__name__})")
    op.weight_provider = Masks(op, names)
    return op.weight_provider


def install_masks(net: nn.Module, weights: Mapping[str, torch.Tensor] | None = None,
                  channels: Mapping[str, torch.Tensor] | None = None,
                  with_norms: bool = False) -> None:
    """Put a ``Masks`` provider on every prunable op (and every elastic BN when
    ``with_norms`` or ``channels`` is given), all ones, then load the given masks: ``weights``
    by op name (full-size weight shape), ``channels`` by BN name (``(C,)``). An op named in a
    mask but absent from ``net``, or a mask of another shape, is a ``ConfigError``."""
    for _, op in prunable_ops(net):
        _install(op, ("weight",))
    if with_norms or channels:
        for _, bn in norm_ops(net):
            _install(bn, ("weight", "bias"))
    load_masks(net, weights or {}, channels or {})


def load_masks(net: nn.Module, weights: Mapping[str, torch.Tensor],
               channels: Mapping[str, torch.Tensor]) -> None:
    """Copy saved masks (booleans or 0/1) into the installed providers."""
    modules = dict(net.named_modules())
    for kind, masks, names in (("weight", weights, ("weight",)),
                               ("channel", channels, ("weight", "bias"))):
        for op_name, mask in masks.items():
            provider = getattr(modules.get(op_name), "weight_provider", None)
            if not isinstance(provider, Masks):
                raise ConfigError(f"{kind} mask of {op_name!r}: the supernet has no masked "
                                  "op of that name (a mask from another space or family?)")
            for name in names:
                target = provider._buffers[name]
                if tuple(mask.shape) != tuple(target.shape):
                    raise ConfigError(f"{kind} mask of {op_name!r}: shape {tuple(mask.shape)}"
                                      f", the op's {name} is {tuple(target.shape)}")
                target.copy_(mask.to(target.dtype))


def has_masks(net: nn.Module) -> bool:
    return any(isinstance(m, Masks) for m in net.modules())


def mask_state(net: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """``{"weights": {op: bool}, "channels": {bn: bool}}`` on the CPU (what checkpoints and
    tickets hold); empty dicts where no masks are installed."""
    out: dict[str, dict[str, torch.Tensor]] = {"weights": {}, "channels": {}}
    for name, op in prunable_ops(net):
        provider = op._modules.get("weight_provider")
        if isinstance(provider, Masks):
            out["weights"][name] = provider.weight.detach().cpu().bool()
    for name, bn in norm_ops(net):
        provider = bn._modules.get("weight_provider")
        if isinstance(provider, Masks):
            out["channels"][name] = provider.weight.detach().cpu().bool()
    return out


@torch.no_grad()
def zero_masked_(net: nn.Module, weights: bool = True, channels: bool = True) -> None:
    """Write zeros into the parameters where a mask is 0 (pruned weights and dropped channels
    stay exactly zero whatever momentum or weight decay would do); ``weights`` /
    ``channels``: which kind of mask to apply."""
    for module in net.modules():
        provider = module._modules.get("weight_provider") if isinstance(
            module, ElasticModule) else None
        kind = channels if isinstance(module, ElasticBatchNorm2d) else weights
        if kind and isinstance(provider, Masks):
            for name, mask in provider._buffers.items():
                module._parameters[name].mul_(mask)


def weight_counts(net: nn.Module) -> tuple[int, int]:
    """``(masked, total)`` over the full-size weights of the supernet's prunable ops."""
    masked = total = 0
    for _, op in prunable_ops(net):
        provider = op._modules.get("weight_provider")
        total += op.weight.numel()
        if isinstance(provider, Masks):
            masked += int((provider.weight == 0).sum())
    return masked, total


@torch.no_grad()
def subnet_sparsity(net: nn.Module) -> dict[str, float] | None:
    """For the arch ``net`` is set to: the zeros in its active conv / linear weights
    (``zero_weights``) of ``prunable_weights``, and their ratio ``sparsity``, counted on the
    tensors export copies (``active_state()``, read through the masks); None when ``net``
    carries no masks."""
    if not has_masks(net):
        return None
    zeros = total = 0
    for _, op in prunable_ops(net):
        weight = op.active_state()["weight"]
        zeros += int((weight == 0).sum())
        total += weight.numel()
    return {"sparsity": zeros / max(total, 1), "zero_weights": float(zeros),
            "prunable_weights": float(total)}
