"""ElasticViT's samplers (Tang et al., ICCV 2023): complexity-aware sampling walks
FLOPs levels a step at a time, and performance-aware sampling adds a memory bank per level.
Like every FLOPs sampler (see ``flops_samplers``) they draw from a seeded ``FlopsTable`` and
choose by losses averaged over the workers.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

from raynas.errors import ConfigError
from raynas.space import Arch, SearchSpace
from raynas.space.dims import FloatRange, PerLayer
from raynas.training.flops_samplers import _FIELD, _check_int, _check_prob
from raynas.training.flops_table import FlopsTable, Level, counted_flops
from raynas.training.samplers import SAMPLERS, ArchSampler, Scorer, _rng, mean_over_workers

_MODES = ("uniform", "min", "max")


def _check_modes(modes: Any, n: int) -> tuple[str, ...]:
    if modes is None:  # ElasticViT: ['uniform'] * 3 + ['min'], no 'max'
        return ("uniform",) * (n - 1) + ("min",) if n > 1 else ("uniform",)
    if (not isinstance(modes, list | tuple) or not all(m in _MODES for m in modes)
            or len(modes) != n or "max" in modes[1:]):
        raise ConfigError(
            f"{_FIELD}.modes = {modes!r}: must list one mode per subnet (train.num_subnets = "
            f"{n}), each of {', '.join(_MODES)}; 'max' only first")
    return tuple(modes)


@SAMPLERS.register("complexity_aware")
class ComplexityAwareSampler(ArchSampler):
    """ElasticViT's complexity-aware sampling: FLOPs levels and an adjacent-step random walk.

    ``levels`` FLOPs levels at the quantiles of a table of ``levels * table_size`` archs drawn
    from the space: the sorted table cut into equal-count runs, each level's bound half its
    FLOPs range (our CPU-sized reading of the paper: 5 levels at quantiles, the bound half a
    level's spacing, the levels tiling the space's FLOPs, each holding ``table_size`` archs,
    its own look-up table). The walk starts at level 0; at every step it moves by a choice of
    (-1, 0, +1), of (0, 0, +1) at the bottom and of (-1, 0, 0) at the top, so consecutive
    steps' levels differ by at most one. Per ``modes`` (one per subnet), a subnet is
    ``uniform`` (a random arch of the level's table), ``min`` (the level's smallest arch, not
    the global one) or ``max`` (the global largest, first only: the teacher of in-place
    distillation). Default: ``uniform`` for all but the last, ``min`` last, as ElasticViT
    trains no largest subnet (so use ``train.distill: none`` or put ``max`` first).
    """

    def __init__(self, space: SearchSpace, num_subnets: int = 4, seed: int = 0,
                 levels: int = 5, table_size: int = 200, modes: Sequence[str] | None = None):
        super().__init__(space, num_subnets, seed)
        self.num_levels = _check_int("levels", levels, 1)
        self.table_size = _check_int("table_size", table_size, 1)
        self.modes = _check_modes(modes, num_subnets)
        self.teacher_first = self.modes[0] == "max"
        self._levels: list[Level] | None = None
        self.level = 0
        self._last: tuple[int, list[Arch]] | None = None
        self._visits = [0] * self.num_levels

    @classmethod
    def teaches_first(cls, options: Mapping[str, Any]) -> bool:
        modes = options.get("modes")
        return bool(modes) and isinstance(modes, list | tuple) and modes[0] == "max"

    @property
    def levels(self) -> list[Level]:
        if self._levels is None:
            table = FlopsTable(self.space, self.num_levels * self.table_size, self.seed)
            self._levels = table.levels(self.num_levels)
        return self._levels

    def _walk(self, rng: random.Random) -> None:
        top = self.num_levels - 1
        moves = (0, 0, 1) if self.level == 0 else (-1, 0, 0) if self.level == top else (-1, 0, 1)
        if top == 0:
            moves = (0,)
        self.level += rng.choice(moves)

    def _uniform(self, step: int, index: int, rng: random.Random) -> Arch:
        return rng.choice(self.levels[self.level].archs)

    def sample(self, step: int, score: Scorer | None = None) -> list[Arch]:
        if self._last is not None and self._last[0] == step:  # the same step asked again
            return list(self._last[1])
        rng = _rng(self.seed, step)
        self.before_draw(step, score)
        self._walk(rng)
        self._visits[self.level] += 1
        level = self.levels[self.level]
        archs = []
        for i, mode in enumerate(self.modes):
            if mode == "max":
                archs.append(self.space.largest())
            elif mode == "min":
                archs.append(level.smallest)
            else:
                archs.append(self._uniform(step, i, rng))
        self._last = (step, archs)
        return list(archs)

    def before_draw(self, step: int, score: Scorer | None) -> None:
        """Called by ``sample`` before the walk moves (the performance-aware bank re-score)."""

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self._visits = [0] * self.num_levels

    def metrics(self) -> dict[str, float]:
        """Per level: the steps it was visited this epoch and its FLOPs target."""
        out = {"sampler.level": float(self.level)}
        for i, lv in enumerate(self.levels):
            out[f"sampler.level{i}_steps"] = float(self._visits[i])
            out[f"sampler.level{i}_target_flops"] = lv.target
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"level": self.level, "visits": list(self._visits)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.level = int(state.get("level", 0))
        self._visits = list(state.get("visits", self._visits))
        self._last = None


def _softmax_pick(rng: random.Random, scores: Sequence[float]) -> int:
    top = max(scores)
    weights = [math.exp(s - top) for s in scores]
    return rng.choices(range(len(scores)), weights=weights)[0]


@SAMPLERS.register("performance_aware")
class PerformanceAwareSampler(ComplexityAwareSampler):
    """ElasticViT's performance-aware sampling on top of complexity-aware: a memory bank per
    level of (arch, score) and, for each ``uniform`` subnet, exploit or explore.

    Exploit (probability ``p_bank``, once the level's bank is more than half full): an arch of
    the bank, drawn with the softmax of the bank's scores. Explore: ``candidates`` archs of
    the level's table (just one while the bank is at most half full), and the one whose FLOPs
    come most from width rather than depth (``prefer_width``, see ``_wide_first``).

    Score: minus the subnet's training loss on the step's minibatch, averaged over the
    workers (ElasticViT: -CE). Without a teacher (the default modes) that is the label loss;
    with ``max`` first and in-place distillation, the distillation loss against the largest
    (every bank entry is then scored alike). An explored arch enters its level's bank, or
    replaces the worst entry if the bank is full and it scores higher; one already there
    gets the new score. ``rescore_every`` > 0 re-scores the current level's bank on the
    step's minibatch every that many steps (ElasticViT: four times an epoch; one forward
    pass per entry, so off by default on CPU). ElasticViT drops entries whose FLOPs drifted
    out of their level; ours cannot drift (FLOPs are the static subnet's).

    ``p_bank`` rises by ``p_bank_inc`` every ``p_bank_every`` of the training (a fraction of
    the epochs), up to ``p_bank_max`` (ElasticViT: 0.2 + 0.15 every 100 of 600 epochs, up to
    0.95; sized for CPU jobs: every quarter of the training).
    """

    needs_score = True

    def __init__(self, space: SearchSpace, num_subnets: int = 4, seed: int = 0,
                 levels: int = 5, table_size: int = 200, modes: Sequence[str] | None = None,
                 bank_size: int = 20, p_bank: float = 0.2, p_bank_inc: float = 0.15,
                 p_bank_every: float = 0.25, p_bank_max: float = 0.95, candidates: int = 5,
                 prefer_width: bool = True, rescore_every: int = 0):
        super().__init__(space, num_subnets, seed, levels, table_size, modes)
        self.bank_size = _check_int("bank_size", bank_size, 1)
        self.p0 = _check_prob("p_bank", p_bank)
        self.p_inc = _check_prob("p_bank_inc", p_bank_inc)
        self.p_max = _check_prob("p_bank_max", p_bank_max)
        if not isinstance(p_bank_every, int | float) or not 0 < p_bank_every <= 1:
            raise ConfigError(f"{_FIELD}.p_bank_every = {p_bank_every!r}: must be a "
                              "fraction of the training in (0, 1]")
        self.p_every = float(p_bank_every)
        self.candidates = _check_int("candidates", candidates, 1)
        self.prefer_width = bool(prefer_width)
        self.rescore_every = _check_int("rescore_every", rescore_every, 0)
        self.p_bank = self.p0
        self.banks: list[list[tuple[Arch, float]]] = [[] for _ in range(self.num_levels)]
        self._explored: tuple[int, int, list[int]] | None = None  # step, level, indices
        self._exploits = 0
        self._draws = 0
        self._depths, self._widths = _depth_and_width_dims(space)
        self._flops_fn = None  # FLOPs of the swapped archs of the width preference

    def start_epoch(self, epoch: int, epochs: int) -> None:
        super().start_epoch(epoch, epochs)
        period = max(1, round(epochs * self.p_every))
        self.p_bank = min(self.p_max, self.p0 + self.p_inc * (epoch // period))
        self._exploits = self._draws = 0

    def before_draw(self, step: int, score: Scorer | None) -> None:
        bank = self.banks[self.level]
        if score is not None and self.rescore_every and bank and step % self.rescore_every == 0:
            losses = score([a for a, _ in bank])
            self.banks[self.level] = [(a, -loss) for (a, _), loss in zip(bank, losses)]

    def _uniform(self, step: int, index: int, rng: random.Random) -> Arch:
        bank = self.banks[self.level]
        self._draws += 1
        if self._explored is None or self._explored[0] != step:
            self._explored = (step, self.level, [])
        half_full = len(bank) > self.bank_size / 2
        if half_full and rng.random() < self.p_bank:
            self._exploits += 1
            return bank[_softmax_pick(rng, [s for _, s in bank])][0]
        table = self.levels[self.level].archs
        k = self.candidates if len(bank) >= self.bank_size / 2 else 1
        cands = [rng.choice(table) for _ in range(k)]
        self._explored[2].append(index)
        if k == 1 or not self.prefer_width:
            return cands[0]
        return self._wide_first(cands)

    def anchor(self) -> Arch:
        """ElasticViT's anchor with its default levels: the best arch of the lowest level's
        bank, or the space's smallest arch at the lowest level or while that bank is empty."""
        low = self.banks[0]
        if self.level == 0 or not low:
            return self.space.smallest()
        return max(low, key=lambda e: e[1])[0]

    def _wide_first(self, cands: Sequence[Arch]) -> Arch:
        """ElasticViT's path preference: for each candidate ``c``, diff = FLOPs(c with the
        anchor's widths) - FLOPs(c with the anchor's depths); the smallest diff wins (its
        FLOPs come from width, not depth: wide and shallow). Our reading for a generic space:
        the depths are the integer dimensions that size a per-layer dimension or are named
        ``*depth*``; the widths are every other non-float dimension (kernel and ratio choices
        too; ElasticViT swaps only the transformer stages' widths). A per-layer dimension
        takes the anchor's values for the layers both have and keeps the candidate's beyond.
        A space without both kinds (e.g. ``resnet20_pool``'s one layout) has no preference:
        the first candidate is taken."""
        if not self._depths or not self._widths:
            return cands[0]
        if self._flops_fn is None:
            self._flops_fn = counted_flops(self.space)
        anchor, flops = self.anchor(), self._flops_fn
        diffs = [flops(self._swap(c, anchor, self._widths))
                 - flops(self._swap(c, anchor, self._depths)) for c in cands]
        return cands[min(range(len(cands)), key=lambda i: diffs[i])]

    def _swap(self, c: Arch, anchor: Arch, names: set[str]) -> Arch:
        values = {k: (anchor[k] if k in names else v) for k, v in c.items()}
        for d in self.space.dims:
            if isinstance(d, PerLayer):
                n = int(values[d.depth])
                own, theirs = list(c[d.name]), list(anchor[d.name])
                mine = theirs if d.name in names else own
                other = own if d.name in names else theirs
                values[d.name] = tuple((mine + other[len(mine):] + [d.values[0]] * n)[:n])
        return self.space.validate(values)

    def feedback(self, step: int, archs: Sequence[Arch], losses: Sequence[float]) -> None:
        losses = mean_over_workers(losses)  # the same bank on every worker
        if self._explored is None or self._explored[0] != step:
            return
        _, level, indices = self._explored
        for i in indices:
            self._remember(level, archs[i], -losses[i])

    def _remember(self, level: int, arch: Arch, score: float) -> None:
        bank = self.banks[level]
        for j, (a, _) in enumerate(bank):
            if a == arch:
                bank[j] = (arch, score)
                return
        if len(bank) < self.bank_size:
            bank.append((arch, score))
            return
        worst = min(range(len(bank)), key=lambda j: bank[j][1])
        if score > bank[worst][1]:
            bank[worst] = (arch, score)

    def metrics(self) -> dict[str, float]:
        out = super().metrics()
        out["sampler.p_bank"] = self.p_bank
        out["sampler.exploit_share"] = self._exploits / max(1, self._draws)
        for i, bank in enumerate(self.banks):
            out[f"sampler.level{i}_bank_size"] = float(len(bank))
            if bank:
                out[f"sampler.level{i}_bank_best_score"] = max(s for _, s in bank)
        return out

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["p_bank"] = self.p_bank
        state["banks"] = [[[a.to_json(), s] for a, s in bank] for bank in self.banks]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.p_bank = float(state.get("p_bank", self.p_bank))
        if "banks" in state:
            self.banks = [[(self.space.validate(json.loads(a)), float(s)) for a, s in bank]
                          for bank in state["banks"]]
        self._explored = None


def _depth_and_width_dims(space: SearchSpace) -> tuple[set[str], set[str]]:
    depths = {d.depth for d in space.dims if isinstance(d, PerLayer)}
    depths |= {d.name for d in space.dims
               if "depth" in d.name and not isinstance(d, PerLayer | FloatRange)}
    widths = {d.name for d in space.dims
              if d.name not in depths and not isinstance(d, FloatRange)}
    return depths, widths
