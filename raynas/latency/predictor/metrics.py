"""How close predicted latencies are to measured ones: the figures every predictor reports."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def regression_metrics(pred: Sequence[float], true: Sequence[float]) -> dict[str, float]:
    """Accuracy of predicted latencies ``pred`` against measured ``true`` (both in ms).

    Returns ``rmse_ms``, ``mape`` (mean |pred - true| / true, a fraction, not a percent),
    ``within_10pct`` (share of predictions with |pred - true| / true <= 0.10), ``kendall_tau``
    (rank agreement, what a latency-constrained search relies on; NaN when fewer than two
    values or when either side is constant) and ``n``.
    """
    p = np.asarray(pred, dtype=np.float64).reshape(-1)
    t = np.asarray(true, dtype=np.float64).reshape(-1)
    if p.shape != t.shape:
        raise ValueError(f"regression_metrics: {p.size} predictions for {t.size} true values")
    if p.size == 0:
        raise ValueError("regression_metrics: no values")
    if not (np.all(np.isfinite(t)) and np.all(t > 0)):
        raise ValueError("regression_metrics: true latencies must be finite and > 0")
    rel = np.abs(p - t) / t
    tau = float("nan")
    if p.size >= 2 and np.ptp(p) > 0 and np.ptp(t) > 0:
        from scipy.stats import kendalltau  # lazy: scipy is slow to import

        tau = float(kendalltau(p, t).statistic)
    return {
        "rmse_ms": float(np.sqrt(np.mean((p - t) ** 2))),
        "mape": float(np.mean(rel)),
        # A tolerance so that an error of exactly 10% (as written in decimal) counts as within.
        "within_10pct": float(np.mean(rel <= 0.10 + 1e-12)),
        "kendall_tau": tau,
        "n": int(p.size),
    }
