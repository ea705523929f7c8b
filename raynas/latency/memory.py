"""Peak memory of one inference, measured tensor by tensor as the forward runs.

``peak_memory_mb`` = the bytes of the model's parameters and buffers, plus its inputs, plus the
most bytes that the forward's own tensors (activations and temporaries) hold at once. The
forward runs under a dispatch mode that sees every tensor an operator returns: a storage
counts from the operator that made it until the last tensor seen on it is freed (views and
in-place results share their storage's bytes; Python frees a tensor as its last reference
goes, so the count follows the forward's real allocations and frees).

What it leaves out: scratch memory a kernel allocates and frees inside one operator (oneDNN's
or cuDNN's workspaces) and the allocator's rounding and caching. It measures the same on the
CPU and on a GPU, so numbers are comparable across devices and with what export records.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

MB = 2 ** 20


class _LiveBytes(TorchDispatchMode):
    """Counts the bytes of storages made by operators and still referenced; keeps the peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._refs: dict[int, list[int]] = {}  # data pointer -> [tensors on it, bytes]

    def _release(self, key: int) -> None:
        entry = self._refs.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self._refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
            if size == 0:
                continue
            entry = self._refs.get(key)
            if entry is None:  # a new storage: the operator allocated it
                self._refs[key] = entry = [0, size]
                self.live += size
                self.peak = max(self.peak, self.live)
            entry[0] += 1
            weakref.finalize(t, self._release, key)
        return out


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def peak_memory_mb(model: nn.Module, inputs: Mapping[str, torch.Tensor] | tuple) -> float:
    """Peak memory in MiB of one inference of ``model`` on ``inputs`` (a tuple of the model's
    positional inputs, or a mapping of its keyword inputs), as the module docstring says."""
    args = tuple(inputs.values()) if isinstance(inputs, Mapping) else tuple(inputs)
    static = tensor_bytes(model.parameters()) + tensor_bytes(model.buffers())
    counter = _LiveBytes()
    with torch.inference_mode(), counter:
        out = model(*args)
    del out
    return (static + tensor_bytes(a for a in args if isinstance(a, torch.Tensor))
            + counter.peak) / MB
