"""Fidelity of a supernet: does it rank subnets as training each from scratch does?

The seed papers' central claim is that plain weight sharing makes a supernet a poor judge of
its subnets. A fidelity report measures that on a job's own space: M subnets spread over the
FLOPs range (``picking``), each scored with the supernet's weights and trained alone from
scratch with the job's recipe (``standalone``, cached), and the two rankings compared
(``metrics``: Kendall tau, Spearman rho, top-k overlap, top-1 regret, mean gap), written as a
table, a plot and a summary (``report``). The stage that runs it, with Ray Tune and MLflow,
is ``raynas.pipeline.fidelity``.
"""

from __future__ import annotations

from raynas.fidelity.metrics import (
    FidelityBelowThreshold,
    RankAgreement,
    check_threshold,
    rank_agreement,
    top_k,
)
from raynas.fidelity.picking import Picked, pick_by_flops, pick_subnets, quantile_indices

__all__ = ["FidelityBelowThreshold", "Picked", "RankAgreement", "check_threshold",
           "pick_by_flops", "pick_subnets", "quantile_indices", "rank_agreement", "top_k"]
