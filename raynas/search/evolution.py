"""HAT's evolutionary search (``search.searcher: hat_evolution``).

Wang et al. 2020, "HAT: Hardware-Aware Transformers for Efficient Natural Language
Processing", section 3.3: a population of random archs; each generation keeps the best
``parents_size`` as parents and adds ``mutation_size`` mutations of random parents (each
gene resampled with probability ``mutation_prob``) and ``crossover_size`` crossovers of two
random parents (each gene from either, 50/50).

Options (``search.options``), with HAT's values in brackets:

* ``population_size`` (125): random archs in generation 0. Default 32 (the driver passes
  ``search.population_size``, whose default is 32), so small budgets get past generation 0.
* ``parents_size`` (25): default 8.  ``mutation_size`` (50): default 12.
* ``crossover_size`` (50): default 12.  ``mutation_prob`` (0.3): default 0.3.

Genes are the space's dimensions, a per-layer dimension giving one gene per layer. A child is
always a valid arch: when its depth gene differs from its parent's, the per-layer list is
truncated or extended (new layers sampled at random), and a crossover takes layer ``i`` from
either parent that has one.

Parents are the best ``parents_size`` of everything evaluated so far (HAT keeps them from the
previous population, which amounts to the same elitism). Ranking:

* one objective: by its value (direction-aware); infeasible points (any constraint violated)
  after every feasible one, by total violation. This is HAT's setting (one objective plus a
  hard latency limit; HAT rejects infeasible children with its latency predictor, which
  raynas cannot do before evaluating, so they are ranked last instead).
* several objectives (raynas's extension, not in HAT): feasible points by non-dominated
  sorting, ties within a front broken by crowding distance (NSGA-II); infeasible points after
  them by total violation.

Asynchronous use: ``ask`` pops archs from the current generation. When the generation is
used up, a new one is bred once all of its results are back; until then each ``ask`` breeds
one extra child from what is known so far (or samples a random arch while fewer than
``parents_size`` results exist), so ``ask`` never blocks. A proposal already evaluated, queued
or in flight is redrawn (a few times) so budget goes to new archs. Failed evaluations
(``None``) are dropped. Everything random comes from ``random.Random(seed)``.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from raynas.errors import ConfigError, describe_value
from raynas.search.pareto import pareto_mask
from raynas.search.registry import register_searcher
from raynas.search.searchers import AskTellSearcher, check_options
from raynas.space import Arch, PerLayer

_REDRAWS = 10  # proposals tried before accepting an arch that is already known


@dataclass(frozen=True)
class _Result:
    arch: Arch
    values: dict[str, float]
    losses: tuple[float, ...]  # objectives to minimise (maximised ones negated)
    violation: float  # sum of positive constraint violations; 0 when feasible


def crowding_distance(losses: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance of each row of one front (inf at each objective's ends)."""
    n, m = losses.shape
    dist = np.zeros(n)
    if n <= 2:
        return np.full(n, math.inf)
    for j in range(m):
        order = np.argsort(losses[:, j], kind="stable")
        col = losses[order, j]
        dist[order[0]] = dist[order[-1]] = math.inf
        span = col[-1] - col[0]
        if span > 0:
            dist[order[1:-1]] += (col[2:] - col[:-2]) / span
    return dist


def rank(losses: np.ndarray, violations: np.ndarray, k: int | None = None) -> list[int]:
    """Indices of the best ``k`` rows (all when None), best first.

    ``losses`` is (n, objectives), every objective minimised; ``violations`` the total
    constraint violation per row (0: feasible). Feasible rows come first: with one objective
    by loss, with several by non-dominated front then crowding distance (largest first).
    Infeasible rows follow by violation. Equal keys keep row order.
    """
    n = len(losses)
    k = n if k is None else min(k, n)
    feasible = [i for i in range(n) if violations[i] <= 0]
    out: list[int] = []
    if losses.shape[1] == 1:
        out = sorted(feasible, key=lambda i: losses[i, 0])[:k]
    else:
        left = np.array(feasible, dtype=int)
        while len(out) < k and len(left):
            mask = pareto_mask(losses[left])
            front = left[mask]
            dist = crowding_distance(losses[front])
            order = np.argsort(-dist, kind="stable")
            out.extend(int(i) for i in front[order][: k - len(out)])
            left = left[~mask]
    if len(out) < k:
        infeasible = sorted((i for i in range(n) if violations[i] > 0),
                            key=lambda i: violations[i])
        out.extend(infeasible[: k - len(out)])
    return out


def _option(name: str, value: Any, check: Callable[[Any], bool], allowed: str) -> Any:
    if isinstance(value, bool) or not check(value):
        raise ConfigError(f"search.options.{name} = {describe_value(value)}: {allowed}")
    return value


def _count(name: str, value: Any, low: int) -> int:
    return _option(name, value, lambda v: isinstance(v, int) and v >= low,
                   f"must be an integer >= {low}")


class EvolutionSearcher(AskTellSearcher):
    """HAT's evolutionary search; see the module docstring."""

    def __init__(self, space, objectives, constraints=(), seed=0,
                 population_size: int = 32, parents_size: int = 8, mutation_size: int = 12,
                 crossover_size: int = 12, mutation_prob: float = 0.3):
        super().__init__(space, objectives, constraints, seed)
        if not self.objectives:
            raise ConfigError("the hat_evolution searcher needs at least one objective")
        self.population_size = _count("population_size", population_size, 1)
        self.parents_size = _count("parents_size", parents_size, 1)
        self.mutation_size = _count("mutation_size", mutation_size, 0)
        self.crossover_size = _count("crossover_size", crossover_size, 0)
        if mutation_size + crossover_size < 1:
            raise ConfigError(f"search.options.mutation_size = {mutation_size}: "
                              "mutation_size + crossover_size must be at least 1")
        self.mutation_prob = float(_option(
            "mutation_prob", mutation_prob,
            lambda v: isinstance(v, (int, float)) and 0 <= v <= 1, "must be in [0, 1]"))
        self._signs = [-1.0 if o.direction == "max" else 1.0 for o in self.objectives]
        self._scalars = [d for d in space.dims if not isinstance(d, PerLayer)]
        self._layered = [d for d in space.dims if isinstance(d, PerLayer)]
        size = space.size()
        self._enough = self.parents_size if size is None else min(self.parents_size, size)

        self._rng = random.Random(seed)
        self.generation = 0
        self._queue: deque[Arch] = deque()  # the current generation, not yet asked
        self._gen_left = 0  # archs of the current generation not yet told
        self._outstanding: dict[int, tuple[Arch, int | None]] = {}  # token -> arch, generation
        self._busy: dict[str, int] = {}  # arch key -> times queued or in flight
        self._results: dict[str, _Result] = {}  # arch key -> first result, in tell order
        self._next_token = 0
        self._parents_cache: list[Arch] = []
        self._parents_of = -1  # len(self._results) when the cache was filled
        for _ in range(self.population_size):
            self._enqueue(self._propose(self._random))
        self._gen_left = self.population_size

    # ---- ask / tell ----------------------------------------------------------------------
    def ask(self):
        if self._queue:
            arch, generation = self._queue.popleft(), self.generation
        else:
            generation = None
            if self._gen_left == 0 and len(self._results) >= self._enough:
                self._breed()
                arch, generation = self._queue.popleft(), self.generation
            elif len(self._results) >= self._enough:
                arch = self._propose(self._child_maker(self._parents()))
            else:
                arch = self._propose(self._random)
            if generation is None:
                self._busy[arch.key] = self._busy.get(arch.key, 0) + 1
        token = self._next_token
        self._next_token += 1
        self._outstanding[token] = (arch, generation)
        return token, arch

    def tell(self, token, values: Mapping[str, float] | None) -> None:
        arch, generation = self._outstanding.pop(token)
        self._busy[arch.key] -= 1
        if not self._busy[arch.key]:
            del self._busy[arch.key]
        if generation is not None and generation == self.generation:
            self._gen_left -= 1
        if values is None or arch.key in self._results:
            return  # failures are dropped; a repeat adds nothing
        metrics = {o.name for o in self.objectives} | {c.metric for c in self.constraints}
        self._results[arch.key] = _Result(
            arch=arch,
            values={m: float(values[m]) for m in sorted(metrics)},
            losses=tuple(s * float(values[o.name]) for s, o in zip(self._signs, self.objectives)),
            violation=sum(max(0.0, c.violation(values)) for c in self.constraints),
        )

    # ---- results -------------------------------------------------------------------------
    def top(self, k: int | None = None) -> list[tuple[Arch, dict[str, float]]]:
        """The best ``k`` evaluated archs (all when None) with their metrics, best first."""
        results = list(self._results.values())
        if not results:
            return []
        losses = np.array([r.losses for r in results], dtype=float)
        violations = np.array([r.violation for r in results], dtype=float)
        return [(results[i].arch, dict(results[i].values)) for i in rank(losses, violations, k)]

    # ---- breeding ------------------------------------------------------------------------
    def _parents(self) -> list[Arch]:
        """The best ``parents_size`` results (re-ranked only when new results came in)."""
        known = len(self._results)  # results are only ever added
        if self._parents_of != known:
            self._parents_cache = [arch for arch, _ in self.top(self.parents_size)]
            self._parents_of = known
        return self._parents_cache

    def _breed(self) -> None:
        """A new generation: mutations then crossovers of the current parents."""
        self.generation += 1
        parents = self._parents()
        for _ in range(self.mutation_size):
            self._enqueue(self._propose(lambda: self.mutate(self._rng.choice(parents))))
        for _ in range(self.crossover_size):
            self._enqueue(self._propose(lambda: self.crossover(*self._two(parents))))
        self._gen_left = len(self._queue)

    def _enqueue(self, arch: Arch) -> None:
        # one at a time, so that each proposal also avoids its siblings
        self._queue.append(arch)
        self._busy[arch.key] = self._busy.get(arch.key, 0) + 1

    def _child_maker(self, parents: list[Arch]) -> Callable[[], Arch]:
        """One extra child, a mutation or a crossover in the generation's proportions."""
        share = self.mutation_size / (self.mutation_size + self.crossover_size)
        if self._rng.random() < share:
            return lambda: self.mutate(self._rng.choice(parents))
        return lambda: self.crossover(*self._two(parents))

    def _two(self, parents: list[Arch]) -> tuple[Arch, Arch]:
        if len(parents) < 2:
            return parents[0], parents[0]
        a, b = self._rng.sample(parents, 2)
        return a, b

    def _random(self) -> Arch:
        return self.space.sample(self._rng)

    def _propose(self, make: Callable[[], Arch]) -> Arch:
        """``make()``, redrawn while it is already evaluated, queued or in flight."""
        arch = make()
        for _ in range(_REDRAWS - 1):
            if arch.key not in self._results and arch.key not in self._busy:
                break
            arch = make()
        return arch

    def mutate(self, parent: Arch) -> Arch:
        """Each gene resampled with probability ``mutation_prob``; a per-layer list follows
        its (possibly new) depth, new layers sampled."""
        rng, prob = self._rng, self.mutation_prob
        values: dict[str, Any] = {}
        for d in self._scalars:
            values[d.name] = d.sample(rng) if rng.random() < prob else parent[d.name]
        for d in self._layered:
            n = int(values[d.depth])
            layers = list(parent[d.name][:n])
            layers += d.sample(rng, n - len(layers))
            values[d.name] = tuple(rng.choice(d.values) if rng.random() < prob else v
                                   for v in layers)
        return Arch(values)

    def crossover(self, a: Arch, b: Arch) -> Arch:
        """Each gene from ``a`` or ``b`` (50/50); layer ``i`` from whichever parents have one."""
        rng = self._rng
        values: dict[str, Any] = {}
        for d in self._scalars:
            values[d.name] = a[d.name] if rng.random() < 0.5 else b[d.name]
        for d in self._layered:
            layers = []
            for i in range(int(values[d.depth])):
                options = [p[d.name][i] for p in (a, b) if i < len(p[d.name])]
                layers.append(options[0] if len(options) == 1 or rng.random() < 0.5
                              else options[1])
            values[d.name] = tuple(layers)
        return Arch(values)


_OPTIONS = ("population_size", "parents_size", "mutation_size", "crossover_size",
            "mutation_prob")


@register_searcher("hat_evolution")
def _hat_evolution(space, objectives, constraints=(), seed=0,
                   population_size: int = 32, parents_size: int = 8, mutation_size: int = 12,
                   crossover_size: int = 12, mutation_prob: float = 0.3, **unknown):
    check_options("hat_evolution", unknown, _OPTIONS)
    return EvolutionSearcher(space, objectives, constraints, seed,
                             population_size=population_size, parents_size=parents_size,
                             mutation_size=mutation_size, crossover_size=crossover_size,
                             mutation_prob=mutation_prob)
