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


def loss_matrix(records: Sequence[Mapping[str, Any]], objectives: Sequence[Objective]):
    """Every objective as a value to minimise (maximised metrics negated)."""
    return np.array([[(-1.0 if o.direction == "max" else 1.0) * float(r[o.name])
                      for o in objectives] for r in records], dtype=float).reshape(
        len(records), len(objectives))


def feasible(records: Sequence[Mapping[str, Any]],
             constraints: Sequence[Constraint] = ()) -> list[Mapping[str, Any]]:
    """The records that may enter a front: within every constraint, and scored on the whole
    validation set (a record that multi-fidelity halving stopped holds estimates over part of
    it, ``fidelity`` below 1)."""
    return [r for r in records if all(c.violation(r) <= 0 for c in constraints)
            and _full(r.get("fidelity"))]


def _full(fidelity: Any) -> bool:
    return fidelity is None or not fidelity < 1  # NaN: a table whose rows had no halving


def pareto_mask(losses: np.ndarray) -> np.ndarray:
    """True for rows no other row dominates (all <=, one <); duplicates all stay. A row with
    a NaN is compared with nothing: it stays, and dominates no other row.

    moocore's non-dominated filter: O(n log n) for 2 and 3 objectives (a 15,625-row table
    in milliseconds, where comparing every pair took 9 s)."""
    losses = np.asarray(losses, dtype=float)
    mask = np.ones(len(losses), dtype=bool)
    if losses.size == 0:
        return mask
    rows = ~np.isnan(losses).any(axis=1)
    if rows.any():
        mask[rows] = moocore.is_nondominated(losses[rows], keep_weakly=True)
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
    mask = pareto_mask(loss_matrix(pool, objectives))
    front = [r for r, keep in zip(pool, mask) if keep]
    last, first = objectives[-1], objectives[0]
    sign = -1.0 if first.direction == "max" else 1.0
    return sorted(front, key=lambda r: (float(r[last.name]), sign * float(r[first.name])))


#: How far beyond the front's worst value of each objective the default reference point lies,
#: as a share of that objective's range over the front.
REFERENCE_MARGIN = 0.1


def default_reference(objectives: Sequence[Objective],
                      records: Iterable[Mapping[str, Any]],
                      constraints: Sequence[Constraint] = ()) -> list[float]:
    """The hypervolume reference point raynas uses wherever none is given: by a search (its
    ``hypervolume`` metric), by ``raynas replay`` and by the benchmarks.

    In metric units, one value per objective: the worst value of that objective over the Pareto
    front of the feasible ``records`` (the front's nadir), pushed further out by
    ``REFERENCE_MARGIN`` (10%) of the front's range in it, so the front's extreme points still
    add volume. Placing it by the front, not by the worst record, keeps the volume on the trade-
    offs users choose from: a reference behind the table's worst subnets (or one slow outlier)
    gives any scattered set of subnets most of the volume: random search reached 0.87 of a
    2,592-subnet table's hypervolume after 50 subnets that way, 0.57 against the front's nadir
    (medians of 10 seeds). The rule assumes nothing about a metric's scale, sign or bounds
    (accuracy in [0, 1], BLEU in [0, 100], a WER above 1); rescaling or shifting a metric moves
    the point with it, and hypervolume ratios against it do not change. An objective the front
    holds one value of has no range: the margin is then 10% of that value's magnitude, or 1 when
    it is 0. Non-finite values are ignored; with no feasible record the rule falls back to all
    records.

    The point depends on the records: compare hypervolumes only against one reference (replay
    computes it once from its whole table; a search logs it as ``hypervolume.reference``).
    """
    records = list(records)
    front = pareto_front(records, objectives, constraints) or records
    ref = []
    for o in objectives:
        values = [v for v in (float(r[o.name]) for r in front) if math.isfinite(v)]
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
    losses = loss_matrix(pool, objectives)
    ref = np.array([(-1.0 if o.direction == "max" else 1.0) * float(v)
                    for o, v in zip(objectives, reference)])
    inside = losses[np.all(losses < ref, axis=1)]
    if len(inside) == 0:
        return 0.0
    return float(moocore.hypervolume(inside, ref=ref))
