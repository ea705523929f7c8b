"""A surrogate-assisted searcher (``search.searcher: surrogate``): it learns the space from the
subnets evaluated so far, scores many cheap candidates with what it learned, and sends only
the most promising to the evaluator.

Once-for-All and AttentiveNAS guide their evolution with an accuracy predictor trained
offline; this one learns online, from the search's own results, and is multi-objective:

1. ``initial`` random archs (default 24).
2. Then, whenever its queue runs empty: one extra-trees regressor (``trees``, default 64) per
   objective and per constrained metric, on the space's encoding of every evaluated arch; a
   pool of ``pool`` (default 1,000) new candidates, mutations and crossovers of the best
   ``parents_size`` results (as hat_evolution breeds them, each gene resampled with
   probability ``mutation_prob``, default 0.15) and a share ``random_share`` (default 0) of
   random archs; each candidate scored by the hypervolume its prediction (the trees' mean,
   less ``explore`` times their spread: 0 by default) adds to the evaluated front, a
   dominated one by minus its distance to the front. The best ``batch`` (default 8)
   are queued, greedily: each pick's predicted mean joins the front before the next pick is
   scored, so a batch spreads along the front instead of piling onto one point.
3. A candidate predicted (optimistically) to break a constraint ranks after every other.

Objectives are normalised by the evaluated front's range; the reference point for the
scores is the front's nadir plus ``margin`` (default 0.5) of that range, looser than the
reporting rule's 10% so that a candidate extending the front past its ends still scores.
Everything random comes from ``random.Random(seed)``; the trees are seeded from it.

The defaults were chosen on replays of two tables: digits_cnn_small's 2,592 subnets (20
seeds; hypervolume ratio at 100/200/500 subnets 0.786/0.978/1.000 against 0.722/0.899/0.997
with ``explore`` 1, ``mutation_prob`` 0.3, ``random_share`` 0.1) and a synthetic
15,625-subnet table (10 seeds; 0.336/0.526/0.803 against 0.274/0.450/0.742).
"""

from __future__ import annotations

from typing import Any

import moocore
import numpy as np

from raynas.errors import ConfigError
from raynas.search.evolution import EvolutionSearcher, _count, _option
from raynas.search.pareto import pareto_mask
from raynas.search.registry import register_searcher
from raynas.search.searchers import check_options
from raynas.space import Arch


def hypervolume_gain_2d(front: np.ndarray, points: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per row of ``points``, the area it adds to the non-dominated 2-objective ``front``
    (every objective minimised), bounded by ``ref``: exact, for all points at once."""
    front = front[np.all(front < ref, axis=1)]
    front = front[np.argsort(front[:, 0], kind="stable")]
    # The front's staircase: from x = -inf to its first point at height ref[1], then at each
    # point's height up to the next point's x (the last one up to ref[0]).
    starts = np.concatenate([[-np.inf], front[:, 0]])
    ends = np.concatenate([front[:, 0], [ref[0]]])
    heights = np.concatenate([[ref[1]], front[:, 1]])
    if len(front):  # a dominated front point would not lower the staircase
        heights = np.minimum.accumulate(heights)
    x, y = points[:, :1], points[:, 1:2]
    width = np.clip(np.minimum(ends, ref[0]) - np.maximum(starts, x), 0, None)
    height = np.clip(heights - y, 0, None)
    gain = (width * height).sum(axis=1)
    gain[np.any(points >= ref, axis=1)] = 0.0
    return gain


def hypervolume_gain(front: np.ndarray, points: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """As ``hypervolume_gain_2d`` in any number of objectives (moocore, one point at a time
    beyond two)."""
    if front.shape[1] == 1:
        best = min(float(front.min()), float(ref[0])) if len(front) else float(ref[0])
        return np.clip(best - points[:, 0], 0, None)
    if front.shape[1] == 2:
        return hypervolume_gain_2d(front, points, ref)
    inside = front[np.all(front < ref, axis=1)]
    base = float(moocore.hypervolume(inside, ref=ref)) if len(inside) else 0.0
    out = np.zeros(len(points))
    for i, p in enumerate(points):
        if np.all(p < ref):
            both = np.vstack([inside, p[None]]) if len(inside) else p[None]
            out[i] = float(moocore.hypervolume(both, ref=ref)) - base
    return out


def distance_to_front(front: np.ndarray, points: np.ndarray) -> np.ndarray:
    """How far each point must move (the same amount in every objective) to be dominated by
    no front point: 0 for a non-dominated point (the additive epsilon indicator)."""
    if not len(front):
        return np.zeros(len(points))
    gaps = (points[:, None, :] - front[None, :, :]).min(axis=2)  # > 0: front point dominates
    return np.clip(gaps.max(axis=1), 0, None)


class SurrogateSearcher(EvolutionSearcher):
    """See the module docstring."""

    def __init__(self, space, objectives, constraints=(), seed=0, initial: int = 24,
                 pool: int = 1000, batch: int = 8, trees: int = 64, explore: float = 0.0,
                 random_share: float = 0.0, margin: float = 0.5, parents_size: int = 8,
                 mutation_prob: float = 0.15):
        super().__init__(space, objectives, constraints, seed,
                         population_size=_count("initial", initial, 1),
                         parents_size=parents_size, mutation_size=1, crossover_size=1,
                         mutation_prob=mutation_prob)
        self.pool = _count("pool", pool, 1)
        self.batch = _count("batch", batch, 1)
        self.trees = _count("trees", trees, 1)
        def number(v: Any) -> bool:
            return isinstance(v, (int, float)) and v >= 0

        self.explore = float(_option("explore", explore, number, "must be a number >= 0"))
        self.margin = float(_option("margin", margin, lambda v: number(v) and v > 0,
                                    "must be a number > 0"))
        self.random_share = float(_option(
            "random_share", random_share, lambda v: number(v) and v <= 1, "must be in [0, 1]"))
        self.refits = 0

    def ask(self):
        if not self._queue:
            if self._learnable() >= max(2, self._enough):
                self._plan()
            if not self._queue:  # too few results to learn from, or nothing new to propose
                self._enqueue(self._propose(self._random))
        arch = self._queue.popleft()
        token = self._next_token
        self._next_token += 1
        self._outstanding[token] = (arch, None)
        return token, arch

    # ---- planning ------------------------------------------------------------------------
    def _learnable(self) -> int:
        """Results every objective and constrained metric has a finite value in."""
        return sum(all(np.isfinite(v) for v in r.values.values())
                   for r in self._results.values())

    def _candidates(self) -> list[Arch]:
        parents = self._parents()
        seen: set[str] = set(self._results) | set(self._busy)
        out: list[Arch] = []
        for _ in range(self.pool):
            r = self._rng.random()
            if r < self.random_share:
                arch = self._random()
            elif r < self.random_share + (1 - self.random_share) / 2:
                arch = self.mutate(self._rng.choice(parents))
            else:
                arch = self.crossover(*self._two(parents))
            if arch.key not in seen:
                seen.add(arch.key)
                out.append(arch)
        return out

    def _predict(self, candidates: list[Arch]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Metric -> (mean, spread) over the trees, for every objective and constrained
        metric, in the metric's own units."""
        from sklearn.ensemble import ExtraTreesRegressor

        results = list(self._results.values())
        x = np.array([self.space.encode(r.arch) for r in results])
        xc = np.array([self.space.encode(a) for a in candidates])
        metrics = [o.name for o in self.objectives] + [c.metric for c in self.constraints]
        out = {}
        for m in dict.fromkeys(metrics):
            y = np.array([r.values[m] for r in results])
            known = np.isfinite(y)  # a NaN metric teaches nothing
            model = ExtraTreesRegressor(n_estimators=self.trees, min_samples_leaf=1,
                                        random_state=self._rng.randrange(2**31))
            model.fit(x[known], y[known])
            per_tree = np.stack([t.predict(xc) for t in model.estimators_])
            out[m] = per_tree.mean(axis=0), per_tree.std(axis=0)
        self.refits += 1
        return out

    def _plan(self) -> None:
        candidates = self._candidates()
        if not candidates:
            return
        pred = self._predict(candidates)
        finite = [r for r in self._results.values() if np.all(np.isfinite(r.losses))]
        feasible = [r for r in finite if r.violation <= 0]
        losses = np.array([r.losses for r in (feasible or finite)], float)
        front = losses[pareto_mask(losses)]
        lo, hi = front.min(axis=0), front.max(axis=0)
        span = np.where(hi > lo, hi - lo, 1.0)
        signs = np.array(self._signs)
        mean = np.stack([signs[j] * pred[o.name][0] for j, o in enumerate(self.objectives)], 1)
        spread = np.stack([pred[o.name][1] for o in self.objectives], 1)
        mean, spread = (mean - lo) / span, spread / span
        hopeful = mean - self.explore * spread
        front = (front - lo) / span
        ref = np.full(front.shape[1], 1.0 + self.margin)
        breaks = np.zeros(len(candidates))  # predicted constraint violation, optimistic
        for c in self.constraints:
            value = pred[c.metric][0] - self.explore * pred[c.metric][1]
            breaks += np.clip(value - c.limit, 0, None)
        left = np.ones(len(candidates), dtype=bool)
        for _ in range(min(self.batch, len(candidates))):
            gain = hypervolume_gain(front, hopeful, ref)
            score = np.where(gain > 0, gain, -distance_to_front(front, hopeful))
            score = np.where(breaks > 0, -1e9 - breaks, score)
            score[~left] = -np.inf
            i = int(np.argmax(score))
            left[i] = False
            self._enqueue(candidates[i])
            front = np.vstack([front, mean[i][None]])  # believed, until told
            front = front[pareto_mask(front)]


_OPTIONS = ("initial", "pool", "batch", "trees", "explore", "random_share", "margin",
            "parents_size", "mutation_prob", "population_size")


@register_searcher("surrogate")
def _surrogate(space, objectives, constraints=(), seed=0, population_size: Any = None,
               **options):
    """``population_size`` (the driver's ``search.population_size``) is not used: the
    start is ``initial`` random archs."""
    unknown = {k: v for k, v in options.items() if k not in _OPTIONS}
    check_options("surrogate", unknown, _OPTIONS)
    if not objectives:
        raise ConfigError("the surrogate searcher needs at least one objective")
    return SurrogateSearcher(space, objectives, constraints, seed, **options)
