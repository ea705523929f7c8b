"""Which subnets train at each step.

Every data-parallel worker builds the same sampler and draws with the global step as seed,
so all workers train the same subnets at the same step (as HAT and MoS do).
"""

from __future__ import annotations

import random

from raynas.space import Arch, SearchSpace


def _rng(seed: int, step: int) -> random.Random:
    return random.Random(seed * 1_000_003 + step)


class SandwichSampler:
    """Sandwich rule (BigNAS): the largest subnet, ``n - 2`` random ones, the smallest.

    The largest comes first because in-place distillation uses its output as the teacher.
    """

    def __init__(self, space: SearchSpace, num_subnets: int = 4, seed: int = 0):
        self.space, self.n, self.seed = space, num_subnets, seed
        self._largest, self._smallest = space.largest(), space.smallest()

    def sample(self, step: int) -> list[Arch]:
        if self.n == 1:
            return [self._largest]
        rng = _rng(self.seed, step)
        middle = [self.space.sample(rng) for _ in range(self.n - 2)]
        return [self._largest, *middle, self._smallest]


class UniformSampler:
    """``n`` subnets drawn uniformly per dimension (HAT, SPOS)."""

    def __init__(self, space: SearchSpace, num_subnets: int = 1, seed: int = 0):
        self.space, self.n, self.seed = space, num_subnets, seed

    def sample(self, step: int) -> list[Arch]:
        rng = _rng(self.seed, step)
        return [self.space.sample(rng) for _ in range(self.n)]


SAMPLERS = {"sandwich": SandwichSampler, "uniform": UniformSampler}
