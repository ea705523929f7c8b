"""The confirmation pass: before a search reports its Pareto front, the subnets that are on
it, or would be with a little less latency, are timed again, side by side.

Why: a subnet is timed once, in a few milliseconds, while other work may run on the same
cores. Other work only ever adds time, so a timing is too high or about right, never too
low: a disturbed subnet lands behind the front (hidden), or, if it is the most accurate one,
on the front far to the right (a 10x outlier alone on the plot). Timing the candidates again
in interleaved windows (``MeasuredLatency.measure_many``), and keeping each one's lower
timing, undoes both, and the agreement of the two timings measures the noise of this search.

A candidate (``candidates``) is a record that would be a feasible front member if its own
latency were divided by ``1 + margin`` (``latency.confirm_margin``), every other record
unchanged: the front itself (margin 0) and the records within the margin of it. The pass
only lowers latencies, so no record outside the candidates can reach the new front: its
dominators only get better.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from raynas.search.pareto import feasible, loss_matrix, pareto_front
from raynas.search.searchers import Constraint, Objective

#: Timings within this share of each other agree (the search's agreement figure).
AGREEMENT = 0.10


def candidates(records: Sequence[Mapping[str, Any]], objectives: Sequence[Objective],
               constraints: Sequence[Constraint] = (), margin: float = 0.25) -> list[str]:
    """The arch keys to time again, in the records' order (each once)."""
    front = pareto_front(records, objectives, constraints)
    if not front:
        return []
    losses = loss_matrix(front, objectives)
    keys = np.array([r["arch_key"] for r in front])
    out: dict[str, None] = {}
    for r in records:
        key = r["arch_key"]
        if key in out or "latency_ms" not in r:
            continue
        faster = {**r, "latency_ms": float(r["latency_ms"]) / (1.0 + margin)}
        if not feasible([faster], constraints):
            continue
        (x,) = loss_matrix([faster], objectives)
        if np.isnan(x).any():
            continue
        others = losses[keys != key]
        dominated = (np.all(others <= x, axis=1) & np.any(others < x, axis=1)).any()
        if not dominated:
            out[key] = None
    return list(out)


def confirm(records: Sequence[Mapping[str, Any]], objectives: Sequence[Objective],
            constraints: Sequence[Constraint], margin: float,
            retime: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]
            ) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Time the candidates again (``retime``: archs -> one dict per arch with
    ``latency_confirm_ms``, as ``Evaluator.retime`` gives) and return the records with
    theirs updated, and the pass's figures for the tracker.

    An updated record keeps its first timing as ``latency_first_ms``, the second as
    ``latency_confirm_ms`` (with ``latency_confirm_spread``), and the lower of the two as
    ``latency_ms``; every record of the same arch gets the same values."""
    keys = candidates(records, objectives, constraints, margin)
    first = {}
    for r in records:
        first.setdefault(r["arch_key"], r)
    timed = retime([dict(first[k]["arch"]) for k in keys]) if keys else []
    new = dict(zip(keys, timed))
    out = []
    for r in records:
        extra = new.get(r["arch_key"])
        if extra is None:
            out.append(dict(r))
            continue
        ms = float(r.get("latency_first_ms", r["latency_ms"]))
        out.append({**r, **extra, "latency_first_ms": ms,
                    "latency_ms": min(ms, float(extra["latency_confirm_ms"]))})
    ratios = [float(new[k]["latency_confirm_ms"]) / float(first[k]["latency_ms"])
              for k in keys]
    figures = {"latency_confirmed": float(len(keys))}
    if ratios:
        figures["latency_confirm_agreement"] = sum(
            abs(q - 1.0) <= AGREEMENT for q in ratios) / len(ratios)
        figures["latency_confirm_lowered"] = float(sum(q < 1.0 - AGREEMENT for q in ratios))
        figures["latency_confirm_median_ratio"] = float(np.median(ratios))
    return out, figures
