"""In-place distillation losses (``train.distill``), by registered name.

A distiller turns the task's distillation target (``Task.distill_target`` of the teacher's
output: per-sample, per-token or per-frame class probabilities) and a student's output into
a loss, averaged over the positions the task marks as real (``Task.distill_mask``):
``kl`` (BigNAS / AttentiveNAS), ``alpha_divergence`` (AlphaNet's adaptive alpha-divergence),
or ``none``, which trains every subnet on the labels.
"""

from __future__ import annotations

import math

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


def _f_divergence(q: torch.Tensor, p: torch.Tensor, alpha: float, iw_clip: float
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """AlphaNet's f-divergence pieces for student probabilities ``q`` and teacher ``p`` (both
    without gradient): per position, the value ``D_alpha(p || q) = sum_i q_i (f(t_i) - f0)``
    with ``t = p / q``, and the weights ``rho`` of the surrogate ``-sum_i q_i rho_i log q_i``
    whose gradient in the student's logits is the gradient of ``D_alpha``.

    ``f(t) = t^alpha / (alpha (alpha - 1))``; ``rho = t f'(t) - f(t)`` up to a constant (the
    constant cancels in the gradient, which is ``-q_j (rho_j - E_q[rho])``). Near alpha = 0 and
    alpha = 1 the limits are used: reverse KL(q || p) (``f = -log t``) and forward KL(p || q)
    (``f = t log t``). As in AlphaNet, the importance ratio (``t`` near 0, ``t^alpha`` else) is
    clipped to ``[0, iw_clip]``; the alpha = 1 branch is not clipped."""
    t = p / q
    if abs(alpha) < 1e-3:
        # A floor keeps log finite where the teacher's probability underflows to 0.
        t = t.clamp(torch.finfo(t.dtype).tiny, iw_clip)
        f, f0, rho = -t.log(), 0.0, t.log() - 1.0
    elif abs(alpha - 1.0) < 1e-3:
        f, f0, rho = torch.xlogy(t, t), 0.0, t
    else:
        ta = t.pow(alpha).clamp(0.0, iw_clip)
        f0 = 1.0 / (alpha * (alpha - 1.0))
        f, rho = ta * f0, ta / alpha + f0
    return (q * (f - f0)).sum(-1), rho


def alpha_divergence(student_logits: torch.Tensor, teacher_probs: torch.Tensor,
                     alpha_min: float = -1.0, alpha_max: float = 1.0, iw_clip: float = 5.0,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """AlphaNet's adaptive alpha-divergence (``AdaptiveLossSoft``), averaged over positions.

    At each position (sample, token or frame) both ``D_{alpha_min}`` and ``D_{alpha_max}`` of
    the teacher from the student are computed, and the larger one is trained: its surrogate
    gives the gradient. The returned value is that larger divergence (so the logged loss reads
    as a divergence); AlphaNet returns the surrogate's value instead, which has the same
    gradient but no meaning of its own."""
    student_logits, p = student_logits.float(), teacher_probs.detach().float()
    if mask is not None:
        # Padding may hold anything (even inf or nan), and 0 * nan is nan in the backward
        # pass too: give masked positions a neutral student and teacher before computing.
        keep = mask.bool().unsqueeze(-1)
        student_logits = torch.where(keep, student_logits, torch.zeros_like(student_logits))
        p = torch.where(keep, p, torch.full_like(p, 1.0 / p.shape[-1]))
    log_q = F.log_softmax(student_logits, dim=-1)
    q = log_q.detach().exp()
    d_lo, rho_lo = _f_divergence(q, p, alpha_min, iw_clip)
    d_hi, rho_hi = _f_divergence(q, p, alpha_max, iw_clip)
    pick_lo = d_lo > d_hi  # AlphaNet's tie goes to alpha_max
    d = torch.where(pick_lo, d_lo, d_hi)
    rho = torch.where(pick_lo.unsqueeze(-1), rho_lo, rho_hi)
    surrogate = -(q * rho * log_q).sum(-1)
    per = surrogate + (d - surrogate).detach()  # value: D; gradient: the surrogate's
    return _masked_mean(per, mask)


@DISTILLERS.register("alpha_divergence")
class AlphaDivergenceDistiller:
    """In-place distillation with AlphaNet's adaptive alpha-divergence (Wang et al., 2021;
    ElasticViT and TODM use it too): per position, the larger of ``D_{alpha_min}`` and
    ``D_{alpha_max}`` (alpha = 0: reverse KL(student || teacher); alpha = 1: forward
    KL(teacher || student)), importance ratios clipped at ``iw_clip``. AlphaNet's defaults:
    ``alpha_min=-1, alpha_max=1, iw_clip=5``.

    AlphaNet trains this loss with gradient clipping (``clip_grad_value_(params, 1.0)``):
    keep ``train.grad_clip`` set (its default, 1.0, clips every gradient element to
    [-1, 1] after the workers' gradients are averaged)."""

    needs_teacher = True

    def __init__(self, alpha_min: float = -1.0, alpha_max: float = 1.0, iw_clip: float = 5.0):
        from raynas.errors import ConfigError, describe_value

        for key, value in (("alpha_min", alpha_min), ("alpha_max", alpha_max),
                           ("iw_clip", iw_clip)):
            if isinstance(value, bool) or not isinstance(value, int | float) or \
                    not math.isfinite(value):
                raise ConfigError(f"train.distill.options.{key} = {describe_value(value)}: "
                                  "must be a finite number")
        if not alpha_min <= alpha_max:
            raise ConfigError(f"train.distill.options.alpha_min = {alpha_min}: must be at "
                              f"most alpha_max ({alpha_max})")
        if not iw_clip > 0:
            raise ConfigError(f"train.distill.options.iw_clip = {iw_clip}: must be > 0")
        self.alpha_min, self.alpha_max, self.iw_clip = float(alpha_min), float(alpha_max), \
            float(iw_clip)

    def __call__(self, student_out, teacher_probs, mask=None) -> torch.Tensor:
        return alpha_divergence(student_out, teacher_probs, self.alpha_min, self.alpha_max,
                                self.iw_clip, mask)


@DISTILLERS.register("none")
class NoDistiller:
    """No distillation: every subnet learns from the labels."""

    needs_teacher = False
