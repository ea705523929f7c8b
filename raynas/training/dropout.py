"""Dropout per subnet (``train.dropout``), by registered name.

A policy gives the dropout rate of each subnet a step trains: the loop sets it on the
supernet's ``SubnetDropout`` modules (``raynas.nn.dropout``) before the subnet's forward
pass, and back to 0 after the step's last subnet. ``fixed`` gives every subnet one rate (0 by
default: no dropout, what jobs computed before this option existed); ``adaptive`` scales the
rate with the subnet's size, as TODM does (Shangguan et al., ICASSP 2024) with the form of HAT's
``calc_dropout``: ``p = p_max * size(subnet) / size(largest)``, so the largest subnet gets
``p_max`` and small subnets, which underfit rather than overfit, little dropout.
"""

from __future__ import annotations

import math
from typing import Any

from raynas.errors import ConfigError, describe_value
from raynas.registry import Registry
from raynas.space import Arch, SearchSpace

DROPOUTS: Registry = Registry("dropout policy", "train.dropout", group="raynas.dropouts")


def _rate(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or \
            not math.isfinite(value) or not 0 <= value < 1:
        raise ConfigError(f"{where} = {describe_value(value)}: must be a number in [0, 1)")
    return float(value)


@DROPOUTS.register("fixed")
class FixedDropout:
    """The same rate ``p`` for every subnet (0: no dropout)."""

    def __init__(self, space: SearchSpace | None, p: float = 0.0):
        self.p = _rate("train.dropout.options.p", p)

    @property
    def active(self) -> bool:
        return self.p > 0

    def rate(self, arch: Arch) -> float:
        return self.p


MEASURES = ("params", "flops")


@DROPOUTS.register("adaptive")
class AdaptiveDropout:
    """``p_max * size(arch) / size(largest)``, the size being ``measure``: ``params`` (the
    parameter count of the subnet's static model, the default) or ``flops`` (its FLOPs on
    one example input of the task).

    Reading: TODM's abstract names "adaptive dropout" and the digest reconstructs it as HAT's
    ``calc_dropout`` (``p * sample_embed_dim / super_embed_dim``, a width ratio). A width
    ratio has no meaning shared by every family (a pooling layout has no width), so the size
    here is a count every family has; for a transformer whose size is mostly its width the
    two orderings agree. Sizes are computed once per arch and cached."""

    def __init__(self, space: SearchSpace | None, p_max: float = 0.1, measure: str = "params"):
        self.p_max = _rate("train.dropout.options.p_max", p_max)
        if measure not in MEASURES:
            raise ConfigError(f"train.dropout.options.measure = {describe_value(measure)}: "
                              f"choose one of {', '.join(MEASURES)}")
        self.space, self.measure = space, measure
        self._sizes: dict[str, float] = {}
        self._size_fn = None

    @property
    def active(self) -> bool:
        return self.p_max > 0

    def _size(self, arch: Arch) -> float:
        key = arch.key
        if key not in self._sizes:
            if self._size_fn is None:
                self._size_fn = _size_function(self.space, self.measure)
            if len(self._sizes) > 100_000:  # a bounded cache over a long run's random archs
                self._sizes.clear()
            self._sizes[key] = float(self._size_fn(arch))
        return self._sizes[key]

    def rate(self, arch: Arch) -> float:
        if self.space is None:
            raise RuntimeError("adaptive dropout needs the search space")
        largest = self._size(self.space.largest())
        return self.p_max * min(1.0, self._size(arch) / largest)


def check_dropout_site(name: str, policy, net, space: SearchSpace) -> None:
    """A clear error when ``policy`` (``train.dropout`` = ``name``) drops out but the
    supernet ``net`` (of ``space``'s family) has no ``SubnetDropout`` to set: checked when a
    job loads (on a supernet built on the meta device) and again in each training worker."""
    from raynas.nn import dropout_rates

    if getattr(policy, "active", True) and not dropout_rates(net):
        raise ConfigError(f"train.dropout = {name!r}: family {space.family!r} has no "
                          "dropout site (a raynas.nn.SubnetDropout module in its supernet); "
                          "use train.dropout=fixed (rate 0)")


def _size_function(space: SearchSpace, measure: str):
    from raynas.latency.measure import count_params
    from raynas.latency.models import flops_of
    from raynas.supernets import build_static

    if measure == "flops":
        return flops_of(space)
    return lambda arch: count_params(build_static(space, arch))
