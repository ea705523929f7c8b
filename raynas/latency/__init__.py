"""Latency and cost of subnets: measured on this machine, FLOPs and parameter counts.

Every latency carries its unit (milliseconds) and its target (a device name).
"""

from __future__ import annotations

from raynas.latency.measure import MeasuredLatency, count_flops, count_params

__all__ = ["MeasuredLatency", "count_flops", "count_params"]
