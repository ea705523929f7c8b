"""Multi-fidelity evaluation on shared weights (``search.evaluator.halving``): successive
halving inside each subnet's evaluation, judged against the search's own front.

The validation set is put in a seeded random order once (a file sorted by label must not show a
subnet its first classes only). A subnet is scored on its first ``ceil(start * N)`` samples (at
least ``MIN_SAMPLES``), then on ``eta`` times as many, and so on up to all N, each rung's new
samples in the evaluator's batches. After each rung short of the whole set, each validation
metric gets its optimistic value: the estimate so far moved ``z`` standard errors towards its
goal. A metric is a ratio of sums (correct samples over samples, summed loss over tokens...),
so the error is the ratio estimator's over the samples seen (``Task.sample_sums``), with the
finite-population correction ``1 - n/N``: the samples left are the rest of one fixed set, and
the error vanishes at n = N. (Per sample, not per chunk of samples: the spread of a few chunk
means is itself too noisy; 5 chunks of 16 once put a front subnet 3 points below its true
accuracy with a small spread, and stopped it.) The exact metrics (latency, FLOPs, parameters)
are known before any sample is scored.

The subnet stops at a rung when that optimistic point cannot enter the front: a subnet already
scored in full dominates it (the search's objectives), or it breaks one of the search's
constraints (the latency budget). Its record then holds the metrics over the samples seen,
``fidelity`` (their share of the validation samples) and no test metrics (NaN). A subnet that
reaches the last rung is scored as without halving, ``fidelity`` 1, and joins the front.

Only records of ``fidelity`` 1 enter a Pareto front or a hypervolume
(``raynas.search.pareto.feasible``); a searcher is told every record as it is, so it learns a
stopped subnet's estimate (and sees its ``fidelity``). The front here is this evaluator's: the
subnets it scored, and the records of a resumed search.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from raynas.search.pareto import feasible, loss_matrix, pareto_mask
from raynas.search.searchers import Constraint, Objective

#: Samples of the first rung at least: the normal approximation needs a few dozen.
MIN_SAMPLES = 64

Sums = Mapping[str, tuple[np.ndarray, np.ndarray]]  # metric -> per-sample (sums, counts)


def rung_ends(start: float, eta: float, total: int, first: int = MIN_SAMPLES) -> list[int]:
    """Samples scored by the end of each rung: ``ceil(start * N)`` (at least ``first``), then
    ``eta`` times the rung before (rounded up), up to N, which always ends the list."""
    ends = [min(total, max(first, math.ceil(round(start * total, 9))))]
    while ends[-1] < total:
        ends.append(min(total, max(ends[-1] + 1, math.ceil(round(ends[-1] * eta, 9)))))
    return ends


def estimate(sums: Sums, total: int) -> dict[str, tuple[float, float]]:
    """Per metric, ``(ratio, standard error)`` from per-unit ``(sums, counts)`` arrays (k units
    of ``total``).

    The ratio is sum over count, as over the whole set. Its error is the ratio estimator's
    under sampling without replacement: ``sqrt((1 - k/K) / k * s_e^2) / mean count``, with
    ``s_e^2`` the sample variance of the residuals ``sum_i - ratio * count_i``; infinite
    with fewer than two units, 0 once all are seen.
    """
    out = {}
    for name, (s, n) in sums.items():
        s, n = np.asarray(s, dtype=float), np.asarray(n, dtype=float)
        k = len(s)
        ratio = s.sum() / max(n.sum(), 1e-12)
        if k >= total:
            se = 0.0
        elif k < 2:
            se = math.inf
        else:
            resid = s - ratio * n
            var = (1 - k / total) / k * float(resid @ resid) / (k - 1)
            se = math.sqrt(var) / max(n.mean(), 1e-12)
        out[name] = (float(ratio), se)
    return out


class Halving:
    """The rungs, and the front a partly scored subnet is judged against.

    ``objectives``: ``(metric, "max" | "min")`` pairs, the search's; ``constraints``:
    ``(metric, limit)`` pairs, each ``metric <= limit``; ``goals``: the task's validation
    metrics and their goals (the uncertain ones); ``samples``: N, the validation set's;
    ``known``: records scored before (a resumed search), whose full ones start the front.
    """

    def __init__(self, start: float, eta: float, z: float, samples: int,
                 objectives: Sequence[Sequence[Any]], constraints: Sequence[Sequence[Any]],
                 goals: Mapping[str, str], known: Sequence[Mapping[str, Any]] = ()):
        self.ends = rung_ends(start, eta, samples)
        self.samples, self.z = samples, z
        self.objectives = [Objective(str(name), str(goal)) for name, goal in objectives]
        self.constraints = [Constraint(str(m), float(limit)) for m, limit in constraints]
        self.goals = dict(goals)
        self.front = np.empty((0, len(self.objectives)))  # losses: every objective minimised
        self.stopped = 0  # subnets stopped short of the whole set
        for r in known:
            if r.get("fidelity", 1.0) >= 1:
                self.add(r)

    def optimistic(self, sums: Sums) -> dict[str, float]:
        """Each validation metric moved ``z`` standard errors towards its goal."""
        return {name: ratio + (1 if self.goals.get(name) == "max" else -1) * self.z * se
                for name, (ratio, se) in estimate(sums, self.samples).items()}

    def hopeless(self, exact: Mapping[str, Any], sums: Sums) -> bool:
        """Whether the subnet, at its optimistic values after ``sums`` (per sample seen),
        breaks a constraint or is dominated by the front (then it is scored no further)."""
        values = {**exact, **self.optimistic(sums)}
        if not feasible([values], self.constraints):
            return True
        if not len(self.front):
            return False
        p = loss_matrix([values], self.objectives)[0]
        if np.isnan(p).any():
            return False
        return bool(np.any(np.all(self.front <= p, axis=1) & np.any(self.front < p, axis=1)))

    def add(self, record: Mapping[str, Any]) -> None:
        """A record scored in full: it joins the front if feasible and not dominated."""
        if not feasible([record], self.constraints):
            return
        p = loss_matrix([record], self.objectives)[0]
        if np.isnan(p).any():
            return
        rows = np.vstack([self.front, p])
        self.front = rows[pareto_mask(rows)]
