"""Losses for supernet training."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_kl(student_logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """In-place distillation loss: KL(teacher || student), batch mean.

    ``teacher_probs`` are the largest subnet's softmax outputs on the same batch, detached.
    """
    return F.kl_div(F.log_softmax(student_logits, dim=-1), teacher_probs, reduction="batchmean")
