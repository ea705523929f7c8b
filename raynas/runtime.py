"""Starting and joining Ray: the embedded local instance by default, a named cluster if any."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator


def ray_address(configured: str | None) -> str:
    """The job's ``ray.address``, else ``RAY_ADDRESS`` (set by ``ray job submit``), else
    ``"local"``: a fresh embedded instance, never a leftover cluster from ``ray start``."""
    return configured or os.environ.get("RAY_ADDRESS") or "local"


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None,
                resources: dict[str, float] | None = None) -> Iterator[None]:
    """Initialise Ray for the duration of the block, unless it already is (then reuse it).

    ``num_cpus`` and ``resources`` (custom resources, e.g. ``{"target:local-cpu": 1}`` to
    declare this machine a latency target) apply to the embedded local instance only.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    addr = ray_address(address)
    kwargs = {"logging_level": logging.WARNING}
    if addr == "local":
        kwargs.update(num_cpus=num_cpus, resources=dict(resources or {}) or None,
                      include_dashboard=True, dashboard_host="127.0.0.1")
    # Workers import raynas from the driver's environment; keep Ray's own chatter down.
    ray.init(address=addr, **kwargs)
    try:
        yield
    finally:
        ray.shutdown()
