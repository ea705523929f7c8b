"""Which subnets train at each step (``train.sampler``), by registered name.

Every data-parallel worker builds the same sampler and draws with the global step as seed,
so all workers train the same subnets at the same step (as HAT and MoS do). A sampler may
learn from feedback (each step's per-subnet losses) and keep state; its ``state_dict`` is
saved in every checkpoint and restored on resume.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from raynas.registry import Registry
from raynas.space import Arch, SearchSpace

SAMPLERS: Registry[type[ArchSampler]] = Registry("sampler", "train.sampler",
                                                 group="raynas.samplers")


def _rng(seed: int, step: int) -> random.Random:
    return random.Random(seed * 1_000_003 + step)


class ArchSampler:
    """Base class. ``sample(step)`` is called once per optimizer step and returns the
    subnets to train; ``feedback(step, archs, losses)`` follows with their losses (same
    order). ``teacher_first``: the first subnet is the largest, so in-place distillation
    may use it as the teacher of the others."""

    teacher_first = False

    def __init__(self, space: SearchSpace, num_subnets: int = 1, seed: int = 0):
        self.space, self.n, self.seed = space, num_subnets, seed

    def sample(self, step: int) -> list[Arch]:
        raise NotImplementedError

    def feedback(self, step: int, archs: Sequence[Arch], losses: Sequence[float]) -> None:
        """Called after each step; stateless samplers ignore it."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned (from a checkpoint)."""


@SAMPLERS.register("sandwich")
class SandwichSampler(ArchSampler):
    """Sandwich rule (BigNAS): the largest subnet, ``n - 2`` random ones, the smallest.

    The largest comes first because in-place distillation uses its output as the teacher.
    """

    teacher_first = True

    def __init__(self, space: SearchSpace, num_subnets: int = 4, seed: int = 0):
        super().__init__(space, num_subnets, seed)
        self._largest, self._smallest = space.largest(), space.smallest()

    def sample(self, step: int) -> list[Arch]:
        if self.n == 1:
            return [self._largest]
        rng = _rng(self.seed, step)
        middle = [self.space.sample(rng) for _ in range(self.n - 2)]
        return [self._largest, *middle, self._smallest]


@SAMPLERS.register("uniform")
class UniformSampler(ArchSampler):
    """``n`` subnets drawn uniformly per dimension (HAT, SPOS). No teacher among them."""

    def sample(self, step: int) -> list[Arch]:
        rng = _rng(self.seed, step)
        return [self.space.sample(rng) for _ in range(self.n)]


@SAMPLERS.register("largest_first")
class LargestFirstSampler(ArchSampler):
    """The largest subnet, then ``n - 1`` uniform ones: uniform sampling that in-place
    distillation can use (the largest is the teacher), without the smallest's pull."""

    teacher_first = True

    def sample(self, step: int) -> list[Arch]:
        rng = _rng(self.seed, step)
        return [self.space.largest(), *(self.space.sample(rng) for _ in range(self.n - 1))]
