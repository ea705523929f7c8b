"""How well the supernet's ranking of subnets agrees with training each from scratch.

Pure Python + scipy: lists of metric values in, numbers out. ``standalone[i]`` and
``inherited[i]`` are the same subnet's metric, trained from scratch and scored with the
supernet's weights.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from raynas.errors import RaynasError


@dataclass(frozen=True)
class RankAgreement:
    """The numbers of a fidelity report (one metric, one split).

    ``kendall_tau``, ``spearman_rho``: rank correlations in [-1, 1] (1: the same order; NaN
    when one side gives every subnet the same value). ``top_k_overlap``: the share of the k
    best subnets by standalone training that are also among the k best by the supernet.
    ``top1_regret``: how much worse (in metric units, >= 0) the supernet's favourite is than
    the best subnet, both by standalone training. ``mean_gap``: mean of standalone minus
    inherited (> 0: weight sharing under-rates the subnets on a metric to maximise).
    """

    n: int
    k: int
    kendall_tau: float
    spearman_rho: float
    top_k_overlap: float
    top1_regret: float
    mean_gap: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def top_k(values: Sequence[float], goal: str, k: int) -> list[int]:
    """Indices of the ``k`` best values (``goal`` ``"max"`` or ``"min"``), best first; ties
    go to the lower index."""
    sign = -1.0 if goal == "max" else 1.0
    return sorted(range(len(values)), key=lambda i: (sign * values[i], i))[:k]


def rank_agreement(standalone: Sequence[float], inherited: Sequence[float], goal: str,
                   k: int) -> RankAgreement:
    """Compare two scorings of the same subnets (see ``RankAgreement``)."""
    from scipy.stats import ConstantInputWarning, kendalltau, spearmanr

    if len(standalone) != len(inherited) or len(standalone) < 2:
        raise ValueError("need two equally long lists of at least two values")
    if goal not in ("max", "min"):
        raise ValueError(f"goal must be 'max' or 'min', not {goal!r}")
    k = min(k, len(standalone))
    with warnings.catch_warnings():
        # A constant side has no ranking: scipy warns and returns NaN, which we report.
        warnings.simplefilter("ignore", ConstantInputWarning)
        tau = float(kendalltau(standalone, inherited).statistic)
        rho = float(spearmanr(standalone, inherited).statistic)
    best_alone, best_shared = top_k(standalone, goal, k), top_k(inherited, goal, k)
    overlap = len(set(best_alone) & set(best_shared)) / k
    best, picked = standalone[best_alone[0]], standalone[best_shared[0]]
    regret = best - picked if goal == "max" else picked - best
    gap = sum(a - b for a, b in zip(standalone, inherited)) / len(standalone)
    return RankAgreement(len(standalone), k, tau, rho, overlap, float(regret), float(gap))


class FidelityBelowThreshold(RaynasError):
    """The supernet ranks subnets too unlike standalone training (``fidelity.min_kendall_tau``).

    The command line exits with ``exit_status`` (3), apart from bad input (2)."""

    exit_status = 3


def check_threshold(tau: float, threshold: float | None, metric: str,
                    report: str | Path | None = None) -> None:
    """Raise ``FidelityBelowThreshold`` when ``tau`` is below ``threshold`` (or undefined);
    ``report``: the folder of the report, named in the message."""
    if threshold is None or (not math.isnan(tau) and tau >= threshold):
        return
    measured = ("undefined (one side scored every subnet the same)" if math.isnan(tau)
                else f"{tau:.3f}")
    where = f"{report}/fidelity.md and fidelity.png" if report else "fidelity.md and " \
        "fidelity.png in the output folder"
    raise FidelityBelowThreshold(
        f"the supernet ranks subnets unlike training them from scratch: the Kendall tau of "
        f"their {metric} (inherited vs standalone) is {measured}, below "
        f"fidelity.min_kendall_tau = {threshold}, so a search on this supernet would chase "
        "its errors. Try a weight scheme that shares less (weights: mos_layer, mos_neuron or "
        "balanced_mixture), more supernet epochs (train.epochs), or more epochs for the "
        "standalone runs (fidelity.epochs) if they are undertrained; see " + where +
        ", or lower the threshold.")
