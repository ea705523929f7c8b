"""The probe set: a few fixed subnets whose mean validation metric judges a whole supernet.

A supernet is trained for all its subnets, so one trial of ``raynas tune`` is judged on
several: the largest, the smallest, and the rest at evenly spaced FLOPs quantiles of a seeded
sample of the space. Every trial of a study is judged on the same set.
"""

from __future__ import annotations

import random
from typing import Any

from raynas.space import SearchSpace


def probe_archs(space: SearchSpace, n: int, seed: int = 0,
                pool: int = 200) -> list[dict[str, Any]]:
    """``n`` distinct archs (fewer only if the space has fewer): the largest, the smallest,
    then the archs of a ``pool``-sized seeded sample nearest the FLOPs quantiles between."""
    from raynas.training.flops_table import counted_flops

    flops = counted_flops(space)
    ends = [space.largest(), space.smallest()]
    rng = random.Random(seed)
    sample = sorted({space.sample(rng) for _ in range(pool)} - set(ends), key=flops)
    chosen = list(dict.fromkeys(ends))
    inner = min(n - len(chosen), len(sample))
    picks = {round((i + 1) * (len(sample) - 1) / (inner + 1)) for i in range(inner)}
    chosen += [sample[i] for i in sorted(picks)]
    return [dict(a) for a in chosen]
