"""The timing protocol of measured latency: short windows, an estimator over their medians,
and windows interleaved across models, on modules whose cost is known (they sleep)."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from raynas.config import LatencyConfig, load_config
from raynas.errors import ConfigError
from raynas.latency.measure import MeasuredLatency, Timing


class Sleeper(nn.Module):
    """Sleeps ``slow_s`` per call until ``burst_s`` after its first call, then ``fast_s``:
    a burst of other work on the machine, then a quiet one."""

    def __init__(self, fast_s: float, slow_s: float = 0.0, burst_s: float = 0.0):
        super().__init__()
        self.fast_s, self.slow_s, self.burst_s = fast_s, slow_s, burst_s
        self.start: float | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        now = time.perf_counter()
        self.start = self.start if self.start is not None else now
        time.sleep(self.slow_s if now - self.start < self.burst_s else self.fast_s)
        return x


def test_min_over_windows_sees_through_a_burst_that_the_median_reports():
    # 5 windows of 40 ms; the burst (5 ms a call) covers warm-up, calibration (10 ms), the
    # first three windows and half the fourth, then calls take 0.2 ms: the median window is
    # in the burst, the fastest one is not (20 ms to spare either side for sleep overshoot).
    timings = {}
    for estimator in ("min", "median"):
        meter = MeasuredLatency(min_run_time_s=0.2, windows=5, estimator=estimator, warmup=1)
        timings[estimator] = meter.measure(Sleeper(0.0002, 0.005, 0.15), (4,))
    low, mid = timings["min"], timings["median"]
    assert low.ms < 2.0 and mid.ms >= 5.0, (low, mid)
    assert len(low.windows) == 5 and low.spread > 3.0  # the burst shows in the spread


def test_steady_cost_is_the_same_by_either_estimator():
    got = [MeasuredLatency(min_run_time_s=0.05, windows=w, estimator=e, warmup=1).measure_ms(
        Sleeper(0.001), (4,)) for w, e in ((5, "min"), (5, "median"), (1, "median"))]
    assert min(got) >= 1.0 and max(got) / min(got) < 1.5, got  # sleep(1 ms) and overshoot


def test_measure_many_interleaves_windows_and_keeps_each_model_s_time():
    order: list[str] = []

    class Named(Sleeper):
        def __init__(self, name: str, fast_s: float):
            super().__init__(fast_s)
            self.name = name

        def forward(self, x):
            if not order or order[-1] != self.name:
                order.append(self.name)
            return super().forward(x)

    meter = MeasuredLatency(min_run_time_s=0.06, windows=3, warmup=1)
    a, b = meter.measure_many([Named("a", 0.001), Named("b", 0.002)], [(4,), (4,)])
    # 1 and 2 ms of sleep, each plus the same overshoot
    assert isinstance(a, Timing) and 1.4 < b.ms / a.ms <= 2.1, (a, b)
    # Warm-up and calibration per model, then window 1 of each, window 2 of each...
    assert order == ["a", "b"] + ["a", "b"] * 3


def test_timing_settings_come_from_the_job_and_are_checked(tmp_path):
    lat = LatencyConfig(windows=7, estimator="median", min_run_time_s=0.07)
    meter = MeasuredLatency.from_config(lat)
    assert (meter.windows, meter.estimator, meter.min_run_time_s) == (7, "median", 0.07)
    job = tmp_path / "job.yaml"
    job.write_text("name: t\nspace: digits_cnn\nlatency:\n  estimator: mean\n")
    with pytest.raises(ConfigError, match="latency.estimator"):
        load_config(job)
