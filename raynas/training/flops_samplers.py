"""Samplers driven by FLOPs: AttentiveNAS's BestUp / WorstUp here (Wang et
al., CVPR 2021), ElasticViT's complexity-aware and performance-aware sampling in
``level_samplers``; the option checks both use.

Each builds a seeded ``FlopsTable`` on its first draw (the same on every worker, so it is not
checkpointed); what changes during training (the walk's level, the memory banks) is in
``state_dict``. Choices that depend on a subnet's loss use losses averaged over the workers
(the loop's scorer does it; ``feedback`` does it with ``mean_over_workers``), so every worker
draws the same subnets at every step.
"""

from __future__ import annotations

import random
from typing import Any

from raynas.errors import ConfigError
from raynas.space import Arch, SearchSpace
from raynas.training.flops_table import FlopsTable
from raynas.training.samplers import SAMPLERS, ArchSampler, Scorer, _rng

_FIELD = "train.sampler.options"


def _check_int(name: str, value: Any, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{_FIELD}.{name} = {value!r}: must be an integer >= {low}")
    return value


def _check_prob(name: str, value: Any) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1:
        raise ConfigError(f"{_FIELD}.{name} = {value!r}: must be a number in [0, 1]")
    return float(value)


# ---- AttentiveNAS ------------------------------------------------------------------------------
@SAMPLERS.register("bestup")
class BestUpSampler(ArchSampler):
    """AttentiveNAS BestUp: the sandwich rule (largest first, smallest last) whose ``n - 2``
    middle subnets are each the best of ``candidates`` archs of one FLOPs bucket, judged by
    their loss on the step's minibatch (averaged over the workers).

    The target bucket follows the empirical FLOPs prior: the FLOPs of ``table_size`` archs
    drawn from the space, in ``buckets`` equal-width buckets; a bucket is drawn with its share
    of the table. ``candidates`` (AttentiveNAS: 3) are then drawn from the table's archs in
    that bucket. AttentiveNAS instead draws each dimension from P(choice | bucket) and rejects
    until the FLOPs round to the target (at most 100 tries); drawing from the table's archs in
    the bucket samples the same empirical conditional, without counting FLOPs during
    training (our reading). Scoring costs one forward pass without gradient per candidate.
    """

    teacher_first = True
    needs_score = True
    worst = False  # WorstUp picks the highest loss instead

    def __init__(self, space: SearchSpace, num_subnets: int = 4, seed: int = 0,
                 candidates: int = 3, buckets: int = 20, table_size: int = 1000):
        super().__init__(space, num_subnets, seed)
        self.candidates = _check_int("candidates", candidates, 1)
        self.num_buckets = _check_int("buckets", buckets, 1)
        self.table_size = _check_int("table_size", table_size, 1)
        self._buckets: list[list[Arch]] | None = None
        self._weights: list[int] = []
        self._gaps: list[float] = []

    def _prior(self) -> list[list[Arch]]:
        if self._buckets is None:
            table = FlopsTable(self.space, self.table_size, self.seed)
            self._buckets = [[table.archs[i] for i in b] for b in table.buckets(self.num_buckets)]
            self._weights = [len(b) for b in self._buckets]
        return self._buckets

    def draw_candidates(self, rng: random.Random) -> list[Arch]:
        """One target bucket from the FLOPs prior and ``candidates`` archs of it."""
        buckets = self._prior()
        bucket = buckets[rng.choices(range(len(buckets)), weights=self._weights)[0]]
        return [rng.choice(bucket) for _ in range(self.candidates)]

    def bucket_of(self, arch: Arch) -> int:
        """The prior bucket that holds ``arch`` (a table arch), for tests and reports."""
        return next(i for i, b in enumerate(self._prior()) if arch in b)

    def sample(self, step: int, score: Scorer | None = None) -> list[Arch]:
        largest = self.space.largest()
        if self.n == 1:
            return [largest]
        rng = _rng(self.seed, step)
        groups = [self.draw_candidates(rng) for _ in range(self.n - 2)]
        flat = [a for g in groups for a in g]
        # Without a scorer (outside the training loop) the first candidate stands in.
        losses = score(flat) if score is not None and self.candidates > 1 else [0.0] * len(flat)
        middle = []
        for k, group in enumerate(groups):
            ls = losses[k * self.candidates:(k + 1) * self.candidates]
            pick = (max if self.worst else min)(range(len(group)), key=lambda i: ls[i])
            middle.append(group[pick])
            self._gaps.append(sum(ls) / len(ls) - ls[pick])
        return [largest, *middle, self.space.smallest()]

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self._gaps = []

    def metrics(self) -> dict[str, float]:
        """``sampler.pick_gain``: the mean of (candidates' mean loss - the pick's loss) this
        epoch; above 0 when BestUp picks better than a random candidate would."""
        if not self._gaps:
            return {}
        return {"sampler.pick_gain": sum(self._gaps) / len(self._gaps)}


@SAMPLERS.register("worstup")
class WorstUpSampler(BestUpSampler):
    """AttentiveNAS WorstUp: BestUp picking the candidate with the highest loss."""

    worst = True
