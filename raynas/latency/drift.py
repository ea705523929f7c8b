"""Drift check: is the latency model still right on this target, during this search?

While a search runs on a lookup table or a predictor, a small seeded share of subnets is also
timed (``latency_measured_ms`` in their records). ``DriftMonitor`` keeps the relative error of
the most recent ``window`` of them; when its mean passes ``bound`` the search warns once (and
again only after it has recovered), and the numbers go to the tracker.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class DriftMonitor:
    bound: float = 0.15
    window: int = 20
    min_checks: int = 5
    errors: deque = field(default_factory=deque, repr=False)
    checks: int = 0
    warnings: int = 0
    drifting: bool = False

    def update(self, records: Iterable[Mapping[str, Any]]) -> str | None:
        """Add the checked records among ``records``; return a warning line when the error
        crosses the bound (None otherwise)."""
        for r in records:
            measured = r.get("latency_measured_ms")
            if measured is None or r.get("latency_model") == "measured":
                continue
            self.errors.append(abs(float(r["latency_ms"]) - measured) / measured)
            while len(self.errors) > self.window:
                self.errors.popleft()
            self.checks += 1
        if len(self.errors) < min(self.min_checks, self.window):
            return None
        error = self.mean_error
        if error > self.bound and not self.drifting:
            self.drifting = True
            self.warnings += 1
            return (f"latency model drift: mean relative error {error:.1%} over the last "
                    f"{len(self.errors)} checked subnets exceeds latency.drift_bound "
                    f"{self.bound:.0%}; its latencies no longer match this target (re-profile "
                    "with `raynas latency profile`, or search with latency.model=measured)")
        if error <= self.bound:
            self.drifting = False
        return None

    @property
    def mean_error(self) -> float | None:
        return sum(self.errors) / len(self.errors) if self.errors else None
