"""In-place distillation losses (``train.distill``), by registered name.

A distiller turns the task's distillation target (``Task.distill_target`` of the teacher's
output: per-sample, per-token or per-frame class probabilities) and a student's output into
a loss, averaged over the positions the task marks as real (``Task.distill_mask``).
``none`` trains every subnet on the labels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from raynas.registry import Registry

DISTILLERS: Registry = Registry("distillation loss", "train.distill", group="raynas.distillers")


def _masked_mean(per_position: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return per_position.mean()
    mask = mask.to(per_position.dtype)
    return (per_position * mask).sum() / mask.sum().clamp_min(1.0)


def kd_kl(student_logits: torch.Tensor, teacher_probs: torch.Tensor,
          mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL(teacher || student) summed over classes (the last dim), averaged over positions
    (samples, or the unmasked tokens / frames)."""
    log_p = F.log_softmax(student_logits.float(), dim=-1)
    per = F.kl_div(log_p, teacher_probs, reduction="none").sum(-1)
    return _masked_mean(per, mask)


@DISTILLERS.register("kl")
class KLDistiller:
    """In-place distillation with KL divergence from the teacher's probabilities
    (BigNAS / AttentiveNAS). ``temperature`` softens both distributions (1: none)."""

    needs_teacher = True

    def __init__(self, temperature: float = 1.0):
        if not temperature > 0:
            from raynas.errors import ConfigError

            raise ConfigError(f"train.distill.options.temperature = {temperature}: must be > 0")
        self.temperature = temperature

    def __call__(self, student_out, teacher_probs, mask=None) -> torch.Tensor:
        t = self.temperature
        if t != 1.0:
            teacher_probs = F.softmax(torch.log(teacher_probs.clamp_min(1e-12)) / t, dim=-1)
            return kd_kl(student_out / t, teacher_probs, mask) * t * t
        return kd_kl(student_out, teacher_probs, mask)


@DISTILLERS.register("none")
class NoDistiller:
    """No distillation: every subnet learns from the labels."""

    needs_teacher = False
