"""Pareto fronts and hypervolume over evaluation records (dicts of metric values).

One hypervolume convention for all of raynas: ``hypervolume`` (exact, in metric units) against
``default_reference`` unless a reference point is given.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import moocore
import numpy as np

from raynas.search.searchers import Constraint, Objective


def _loss_matrix(records: Sequence[Mapping[str, Any]], objectives: Sequence[Objective]):
    """Every objective as a value to minimise (maximised metrics negated)."""
    return np.array([[(-1.0 if o.direction == "max" else 1.0) * float(r[o.name])
                      for o in objectives] for r in records], dtype=float).reshape(
        len(records), len(objectives))


def feasible(records: Sequence[Mapping[str, Any]],
             constraints: Sequence[Constraint] = ()) -> list[Mapping[str, Any]]:
    return [r for r in records if all(c.violation(r) <= 0 for c in constraints)]


def pareto_mask(losses: np.ndarray) -> np.ndarray:
    """True for rows no other row dominates (all <=, one <); duplicates all stay."""
    n = len(losses)
    mask = np.ones(n, dtype=bool)
    for i in range(n):
        dominated = np.all(losses <= losses[i], axis=1) & np.any(losses < losses[i], axis=1)
        mask[i] = not dominated.any()
    return mask


def pareto_front(records: Sequence[Mapping[str, Any]], objectives: Sequence[Objective],
                 constraints: Sequence[Constraint] = ()) -> list[Mapping[str, Any]]:
    """Non-dominated feasible records, one per arch, ordered by the last objective
    (latency, for the default objectives), then by the first."""
    unique = list({r["arch_key"]: r for r in records}.values()) if records and \
        "arch_key" in records[0] else list(records)
    pool = feasible(unique, constraints)
    if not pool:
        return []
    mask = pareto_mask(_loss_matrix(pool, objectives))
    front = [r for r, keep in zip(pool, mask) if keep]
    last, first = objectives[-1], objectives[0]
    sign = -1.0 if first.direction == "max" else 1.0
    return sorted(front, key=lambda r: (float(r[last.name]), sign * float(r[first.name])))


#: How far beyond each objective's worst value the default reference point lies, as a share
#: of that objective's range over the records.
REFERENCE_MARGIN = 0.1


def default_reference(objectives: Sequence[Objective],
                      records: Iterable[Mapping[str, Any]]) -> list[float]:
    """The hypervolume reference point raynas uses wherever none is given: by a search (its
    ``hypervolume`` metric), by ``raynas replay`` and by the benchmarks.

    In metric units, one value per objective: the objective's worst value over ``records``
    (the lowest of a maximised metric, the highest of a minimised one), pushed further out by
    ``REFERENCE_MARGIN`` (10%) of its range (best minus worst), so the worst points still add
    volume. The rule assumes nothing about a metric's scale, sign or bounds, so it serves
    accuracy in [0, 1], BLEU in [0, 100], a WER above 1 or a negative log-likelihood alike;
    rescaling or shifting a metric moves the point with it, and hypervolume ratios against
    it do not change. An objective with one value only has no range: the margin is then 10%
    of that value's magnitude, or 1 when it is 0. Non-finite values are ignored.

    The point depends on the records: compare hypervolumes only against one reference (replay
    computes it once from its whole table; a search logs it as ``hypervolume.reference``).
    """
    records = list(records)
    ref = []
    for o in objectives:
        values = [v for v in (float(r[o.name]) for r in records) if math.isfinite(v)]
        if not values:
            raise ValueError(f"default_reference: no finite value of {o.name!r} to place the "
                             "reference point by")
        lo, hi = min(values), max(values)
        pad = REFERENCE_MARGIN * (hi - lo) or REFERENCE_MARGIN * abs(hi) or 1.0
        ref.append(lo - pad if o.direction == "max" else hi + pad)
    return ref


def hypervolume(records: Sequence[Mapping[str, Any]], objectives: Sequence[Objective],
                reference: Sequence[float], constraints: Sequence[Constraint] = ()) -> float:
    """Hypervolume dominated by the feasible records, bounded by ``reference`` (metric units).

    The volume (area for two objectives) of the region between the records and the reference
    point, as the product of metric differences: with accuracy and latency_ms it is in
    accuracy x ms. Points not strictly better than the reference in every objective add
    nothing; dominated and repeated points add nothing. Exact in any number of objectives
    (moocore's hypervolume: O(n log n) for 2 and 3 objectives).
    """
    pool = feasible(records, constraints)
    if not pool:
        return 0.0
    losses = _loss_matrix(pool, objectives)
    ref = np.array([(-1.0 if o.direction == "max" else 1.0) * float(v)
                    for o, v in zip(objectives, reference)])
    inside = losses[np.all(losses < ref, axis=1)]
    if len(inside) == 0:
        return 0.0
    return float(moocore.hypervolume(inside, ref=ref))
