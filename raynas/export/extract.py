"""Turn one subnet of a trained supernet into a plain torch model, and check it."""

from __future__ import annotations

import torch
from torch import nn

from raynas.errors import RaynasError
from raynas.nn import ElasticModule
from raynas.space import Arch, SearchSpace
from raynas.supernets import build_static
from raynas.weights import active_net


def active_state_dict(supernet: nn.Module) -> dict[str, torch.Tensor]:
    """State of the supernet's active subnet, keyed like the static model's state dict.

    Elastic ops contribute their ``active_state()``; plain modules their own tensors.
    """
    state: dict[str, torch.Tensor] = {}
    for name, module in supernet.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, ElasticModule):
            tensors = module.active_state()
        else:
            tensors = dict(module.named_parameters(recurse=False))
            tensors.update(module.named_buffers(recurse=False))
        for key, value in tensors.items():
            if value is not None:
                state[prefix + key] = value
    return state


def extract(supernet: nn.Module, space: SearchSpace, arch: Arch) -> nn.Module:
    """A static ``nn.Module`` computing what ``supernet`` computes with ``arch`` active.

    The returned model owns copies of the weights (no link to the supernet) and is in
    ``eval`` mode. Under any weight scheme it holds the tensors the scheme generated for
    ``arch`` (mixed experts, the assigned supernet's): a plain model, no router. The
    supernet is left set to ``arch``.
    """
    supernet.set_arch(arch)
    static = build_static(space, arch)
    wanted = static.state_dict()
    source = active_state_dict(active_net(supernet))
    missing = [k for k in wanted if k not in source]
    if missing:
        raise RaynasError(f"supernet has no weights for static subnet tensor {missing[0]!r}")
    with torch.no_grad():
        static.load_state_dict({k: source[k].detach().clone() for k in wanted}, strict=True)
    return static.eval()


def max_abs_diff(a: nn.Module, b: nn.Module, inputs: torch.Tensor) -> float:
    """Largest absolute difference of the two models' outputs on ``inputs`` (eval mode)."""
    with torch.no_grad():
        return float((a(inputs) - b(inputs)).abs().max())
