"""Which subnets a fidelity report compares: M of them, spread evenly over the FLOPs range.

The candidates are the whole space when it is small enough, else a seeded sample plus the
largest and smallest subnets; each is counted by its static model's FLOPs, the candidates are
sorted by them, and M are taken at evenly spaced quantiles of that order within ``spread``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from raynas.errors import ConfigError
from raynas.space import Arch, SearchSpace


@dataclass(frozen=True)
class Picked:
    """A subnet of the report and its FLOPs (one forward pass of one sample)."""

    arch: Arch
    flops: int


def candidate_archs(space: SearchSpace, n: int, seed: int = 0) -> list[Arch]:
    """Every arch of ``space`` if it has at most ``n``, else ``n`` distinct seeded draws
    plus the largest and the smallest arch."""
    size = space.size()
    if size is not None and size <= n:
        return list(space.enumerate())
    rng = random.Random(seed)
    found = {a.key: a for a in (space.largest(), space.smallest())}
    for _ in range(20 * n):  # a space this big gives n distinct draws long before
        if len(found) >= n + 2:
            break
        arch = space.sample(rng)
        found.setdefault(arch.key, arch)
    return list(found.values())


def quantile_indices(n: int, m: int, spread: tuple[float, float]) -> list[int]:
    """``m`` distinct increasing indices into ``n`` sorted items, evenly spaced from the
    ``spread[0]`` to the ``spread[1]`` quantile, both ends included. ``ValueError`` when the
    quantile range holds fewer than ``m`` items."""

    def at(q: float) -> int:  # half up, not Python's round-half-even: stays evenly spaced
        return math.floor(q * (n - 1) + 0.5)

    lo, hi = at(spread[0]), at(spread[1])
    width = hi - lo + 1
    if width < m:
        raise ValueError(f"{width} candidates in the quantile range, fewer than {m}")
    # A step of (width - 1) / (m - 1) >= 1 keeps the rounded indices distinct.
    return [lo + math.floor(i * (width - 1) / (m - 1) + 0.5) for i in range(m)]


def pick_by_flops(candidates: Sequence[Picked], m: int,
                  spread: tuple[float, float]) -> list[Picked]:
    """``m`` candidates of distinct arch keys at evenly spaced FLOPs quantiles within
    ``spread``, in increasing FLOPs (ties in FLOPs ordered by arch key, so the pick is
    reproducible)."""
    unique = list({c.arch.key: c for c in candidates}.values())
    ordered = sorted(unique, key=lambda c: (c.flops, c.arch.key))
    try:
        return [ordered[i] for i in quantile_indices(len(ordered), m, spread)]
    except ValueError as exc:
        raise ConfigError(
            f"fidelity.subnets = {m}: the FLOPs quantile range fidelity.spread = "
            f"{list(spread)} holds {exc}; lower fidelity.subnets, widen fidelity.spread "
            "or raise fidelity.candidates") from None


def pick_subnets(space: SearchSpace, flops_of: Callable[[Arch], int], m: int,
                 spread: tuple[float, float], candidates: int, seed: int = 0
                 ) -> list[Picked]:
    """The subnets of a fidelity report (see the module doc); ``flops_of(arch)`` counts one
    (``static_flops`` for a job's task)."""
    pool = [Picked(a, int(flops_of(a))) for a in candidate_archs(space, candidates, seed)]
    return pick_by_flops(pool, m, spread)


def static_flops(space: SearchSpace, task) -> Callable[[Arch], int]:
    """``arch -> FLOPs`` of its freshly built static model on the task's example input (one
    sample), as the evaluator counts them."""
    from raynas.latency import count_flops
    from raynas.supernets import build_static
    from raynas.tasks import example_args

    inputs = example_args(space, 1, task)

    def flops(arch: Arch) -> int:
        return count_flops(build_static(space, arch).eval(), inputs)

    return flops
