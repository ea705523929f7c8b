"""Which subnets train at each step (``train.sampler``), by registered name.

Every data-parallel worker builds the same sampler and draws with the global step as seed,
so all workers train the same subnets at the same step (as HAT and MoS do). A sampler may
learn from feedback (each step's per-subnet losses) and keep state; its ``state_dict`` is
saved in every checkpoint and restored on resume. What a sampler learns from must be the
same on every worker: losses measured on a worker's own shard are averaged over the workers
first (``mean_over_workers``), as the loop's candidate scorer does.

Samplers driven by FLOPs (``bestup``, ``worstup``, ``complexity_aware``,
``performance_aware``) live in ``raynas.training.flops_samplers`` and
``raynas.training.level_samplers``.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from raynas.registry import Registry
from raynas.space import Arch, SearchSpace


def _load_builtin() -> None:
    from raynas.training import flops_samplers, level_samplers  # noqa: F401


SAMPLERS: Registry[type[ArchSampler]] = Registry("sampler", "train.sampler", _load_builtin,
                                                 group="raynas.samplers")

# ``score(archs) -> losses``: each subnet's loss on the current minibatch (no gradient), the
# same on every worker (averaged over them); lower is better.
Scorer = Callable[[Sequence[Arch]], list[float]]


def _rng(seed: int, step: int) -> random.Random:
    return random.Random(seed * 1_000_003 + step)


def mean_over_workers(values: Sequence[float]) -> list[float]:
    """``values`` averaged element-wise over the data-parallel workers (one all-reduce), so
    every worker sees the same numbers; unchanged without a process group (one worker)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    dist.all_reduce(t)
    return (t / dist.get_world_size()).tolist()


class ArchSampler:
    """Base class. ``start_epoch(epoch, epochs)`` opens each epoch; ``sample(step)`` is
    called once per optimizer step, in step order, and returns the subnets to train;
    ``feedback(step, archs, losses)`` follows with their losses on this worker's minibatch
    (same order; label or distillation losses, not averaged over workers). ``metrics()`` is
    logged with each epoch.

    ``teacher_first``: the first subnet is the largest, so in-place distillation may use it
    as the teacher of the others. ``needs_score``: ``sample`` takes ``score=`` (a ``Scorer``
    on the step's minibatch), for samplers that pick among candidates by their loss.
    """

    teacher_first = False
    needs_score = False

    def __init__(self, space: SearchSpace, num_subnets: int = 1, seed: int = 0):
        self.space, self.n, self.seed = space, num_subnets, seed

    @classmethod
    def teaches_first(cls, options: Mapping[str, Any]) -> bool:
        """Whether a sampler built with ``options`` trains the largest subnet first (checked
        against the distillation loss when a job loads)."""
        return cls.teacher_first

    def start_epoch(self, epoch: int, epochs: int) -> None:
        """Called before each training epoch (0-based ``epoch`` of ``epochs``)."""

    def sample(self, step: int) -> list[Arch]:
        raise NotImplementedError

    def feedback(self, step: int, archs: Sequence[Arch], losses: Sequence[float]) -> None:
        """Called after each step; stateless samplers ignore it."""

    def metrics(self) -> dict[str, float]:
        """Numbers to log with each epoch (named ``sampler.*``)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned (from a checkpoint)."""


class DrawLog:
    """A sampler wrapped so that every worker can prove it drew what the others drew: a
    digest of each step's arch keys, compared across workers once per epoch by the loop.
    Everything else is the wrapped sampler's."""

    def __init__(self, sampler: ArchSampler):
        self.sampler = sampler
        self._digest = hashlib.sha1()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sampler, name)

    def sample(self, step: int, **kwargs: Any) -> list[Arch]:
        archs = self.sampler.sample(step, **kwargs)
        self._digest.update(f"{step}:{'|'.join(a.key for a in archs)};".encode())
        return archs

    def digest(self) -> str:
        """The digest of every draw so far."""
        return self._digest.hexdigest()


class FixedArchSampler(ArchSampler):
    """One fixed subnet every step (a ticket's arch under ``train.init_ticket``, a fidelity
    report's standalone training); not a registered sampler. It counts as the teacher-first
    subnet: alone, nothing distils."""

    teacher_first = True

    def __init__(self, space: SearchSpace, arch: Arch):
        super().__init__(space, 1, 0)
        self.arch = arch

    def sample(self, step: int) -> list[Arch]:
        return [self.arch]


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
