"""A seeded table of sampled archs and their FLOPs: the offline table behind the FLOPs-driven
samplers (AttentiveNAS's FLOPs prior, ElasticViT's per-level look-up tables).

Every worker builds the same table from the same seed (sampling and FLOPs counting are
deterministic), so nothing of it needs to travel or be checkpointed. FLOPs are those of the
extracted static subnet on the space's default example input at batch size 1, counted as the
evaluator and ``raynas latency`` count them (``flops_of``); a table costs one static build
per distinct arch (about 1-10 ms each for the tiny spaces, 0.1 s for ``vit_elasticvit``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from raynas.space import Arch, SearchSpace

FlopsFn = Callable[[Arch], int]


def counted_flops(space: SearchSpace) -> FlopsFn:
    """``arch -> FLOPs`` of its static subnet (``raynas.latency.models.flops_of``, what the
    evaluator and ``raynas latency`` count), cached by arch."""
    from raynas.latency.models import flops_of

    count = flops_of(space)
    cache: dict[Arch, int] = {}

    def flops(arch: Arch) -> int:
        if arch not in cache:
            cache[arch] = count(arch)
        return cache[arch]

    return flops


@dataclass(frozen=True)
class Level:
    """One FLOPs level: the table's archs with FLOPs in ``[low, high]`` (inclusive), sorted by
    FLOPs. ``target`` is the middle of the range and ``bound`` half its width."""

    low: int
    high: int
    archs: tuple[Arch, ...]
    flops: tuple[int, ...]

    @property
    def target(self) -> float:
        return (self.low + self.high) / 2

    @property
    def bound(self) -> float:
        return (self.high - self.low) / 2

    @property
    def smallest(self) -> Arch:
        return self.archs[0]


class FlopsTable:
    """``size`` archs drawn from ``space.sample`` (the space's own prior) with a seeded
    generator, and their FLOPs."""

    def __init__(self, space: SearchSpace, size: int, seed: int,
                 flops: FlopsFn | None = None):
        self.space = space
        self.flops_of = flops or counted_flops(space)
        rng = random.Random(f"raynas.flops_table:{seed}")
        self.archs = [space.sample(rng) for _ in range(size)]
        self.flops = [self.flops_of(a) for a in self.archs]

    def buckets(self, n: int) -> list[list[int]]:
        """The table's indices in ``n`` equal-width FLOPs buckets between its min and max
        (AttentiveNAS rounds FLOPs to 25 MFLOPs; a generic space has no natural unit)."""
        lo, hi = min(self.flops), max(self.flops)
        out: list[list[int]] = [[] for _ in range(n)]
        for i, f in enumerate(self.flops):
            b = 0 if hi == lo else min(n - 1, int((f - lo) / (hi - lo) * n))
            out[b].append(i)
        return out

    def levels(self, n: int) -> list[Level]:
        """``n`` levels at the quantiles of the table's FLOPs: the sorted table cut into ``n``
        runs of equal count, so each level holds ``len(table) / n`` archs; adjacent levels
        touch (they share a FLOPs value only where the table ties at a cut)."""
        order = sorted(range(len(self.archs)), key=lambda i: (self.flops[i], self.archs[i].key))
        cuts = [round(k * len(order) / n) for k in range(n + 1)]
        out = []
        for a, b in zip(cuts, cuts[1:]):
            idx = order[a:b] or order[max(0, a - 1):a]  # a level never comes out empty
            flops = tuple(self.flops[i] for i in idx)
            out.append(Level(flops[0], flops[-1], tuple(self.archs[i] for i in idx), flops))
        return out

