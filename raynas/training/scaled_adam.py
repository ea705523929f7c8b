"""ScaledAdam (icefall's Zipformer optimizer, used by TODM) and its Eden learning-rate schedule.

ScaledAdam is Adam without first-moment bias correction whose step for a tensor is scaled by
that tensor's RMS, so every tensor moves by about the same *relative* amount per step; every
``size_update_period`` steps it also learns the tensor's overall scale (a step in log space).
Why it suits a supernet (our interpretation): front-sliced sub-tensors that
differently sized subnets train get comparably scaled updates, and the learned scale absorbs
magnitude drift.

Written from the algorithm of icefall's ``zipformer/optim.py`` as TODM uses it; the
choices where its description leaves room are marked "reading" below. Parameters are processed one
by one (icefall batches tensors of equal shape for speed: the same arithmetic).
"""

from __future__ import annotations

import math

import torch


class ScaledAdam(torch.optim.Optimizer):
    """Parameter-scale-relative Adam (see the module docstring). Per step, for a tensor ``p``
    with gradient ``g`` (times the clipping factor):

    - non-scalar: ``v = beta2 v + (1 - beta2) g^2``; ``delta = beta1 delta + (1 - beta1) u``
      with ``u = -lr * max(rms, param_min_rms) * g / (sqrt(v / (1 - beta2^t)) + eps)``, where
      ``rms`` is the tensor's RMS, refreshed every ``size_update_period`` steps; on those
      steps (not the first) ``u`` also gets ``p * scale_step``, a step on the tensor's
      log-scale from the gradients ``<p, g>`` summed over the period (Adam-normalised, lr
      times ``scalar_lr_scale``, clamped to [-0.1, 0.1], never growing the RMS past
      ``param_max_rms`` nor shrinking it below ``param_min_rms``); then ``p += delta``;
    - scalar (one element): lr times ``scalar_lr_scale``, no RMS factor, and ``|p|`` is
      clamped to ``scalar_max`` before the step (as icefall does).

    A parameter whose ``grad`` is None (no subnet used it this step, on any worker) is
    skipped: its state does not change. With ``clipping_scale``, gradients are scaled down
    when the global norm of ``g * rms`` (``g`` for scalars) exceeds ``clipping_scale`` times
    the median of the recent norms (see ``_clipping_factor``). ``train.weight_decay`` is not
    used: ScaledAdam has none (the learned scale bounds tensor sizes).
    """

    def __init__(self, params, lr: float = 0.045, betas: tuple[float, float] = (0.9, 0.98),
                 eps: float = 1e-8, scalar_lr_scale: float = 0.1, param_min_rms: float = 1e-5,
                 param_max_rms: float = 3.0, scalar_max: float = 10.0,
                 size_update_period: int = 4, clipping_scale: float | None = None,
                 clipping_update_period: int = 100):
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, scalar_lr_scale=scalar_lr_scale,
                        param_min_rms=param_min_rms, param_max_rms=param_max_rms,
                        scalar_max=scalar_max, size_update_period=int(size_update_period))
        super().__init__(params, defaults)
        self.clipping_scale = clipping_scale
        self.clipping_update_period = int(clipping_update_period)

    # ---- state ----------------------------------------------------------------------------
    def _init_state(self, p: torch.Tensor, group: dict) -> dict:
        state = self.state[p]
        state["step"] = 0
        state["delta"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if p.numel() > 1:
            state["param_rms"] = p.detach().pow(2).mean().sqrt()
            state["scale_grads"] = torch.zeros(group["size_update_period"], dtype=p.dtype,
                                               device=p.device)
            state["scale_exp_avg_sq"] = torch.zeros((), dtype=p.dtype, device=p.device)
        return state

    def _state(self, p: torch.Tensor, group: dict) -> dict:
        state = self.state[p]
        return state if "step" in state else self._init_state(p, group)

    # ---- clipping -------------------------------------------------------------------------
    def _clipping_factor(self) -> float:
        """The factor gradients are multiplied by this step (1: no clipping).

        Reading of icefall's ``_get_clipping_scale`` (2.0 x the median of the last 100 steps'
        norms, the threshold doubled at steps 10, 20 and 40): the norm of every step is kept
        (the last ``clipping_update_period``); the threshold is ``clipping_scale`` x their
        median, re-estimated at steps 10, 20 and 40 (doubled there, the early norms being
        noisy) and every ``clipping_update_period`` steps after; before step 10 nothing is
        clipped. Global over all parameter groups (icefall clips per group)."""
        if not self.clipping_scale:
            return 1.0
        clip = self.state["clipping"]  # a str key: kept by Optimizer.state_dict as it is
        if not clip:
            clip.update(step=0, norms=[], threshold=None)
        sumsq = None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if p.numel() > 1:
                    g = g * self._state(p, group)["param_rms"]
                s = g.pow(2).sum()
                sumsq = s if sumsq is None else sumsq + s
        if sumsq is None:
            return 1.0
        norm = math.sqrt(float(sumsq))
        step, period = clip["step"], self.clipping_update_period
        clip["norms"] = (clip["norms"] + [norm])[-period:]
        early = [s for s in (10, 20, 40) if s < period]
        if step in early or (step > 0 and step % period == 0):
            norms = sorted(clip["norms"])
            threshold = self.clipping_scale * norms[len(norms) // 2]
            clip["threshold"] = threshold * 2.0 if step in early else threshold
        clip["step"] = step + 1
        if clip["threshold"] is None or norm <= clip["threshold"]:
            return 1.0
        return clip["threshold"] / norm

    # ---- the step -------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        factor = self._clipping_factor()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue  # unused this step: no state change
                if p.grad.is_sparse:
                    raise RuntimeError("ScaledAdam does not support sparse gradients")
                grad = p.grad if factor == 1.0 else p.grad * factor
                state = self._state(p, group)
                if p.numel() > 1:
                    self._step_tensor(p, grad, state, group)
                else:
                    self._step_scalar(p, grad, state, group)
                state["step"] += 1
        return loss

    @staticmethod
    def _adam_direction(grad: torch.Tensor, state: dict, beta2: float, eps: float
                        ) -> torch.Tensor:
        """``g / (sqrt(v / bias_correction) + eps)`` after updating ``v``."""
        exp_avg_sq = state["exp_avg_sq"]
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        # Reading: the digest's v / bias_corr2 at every step (icefall skips the correction
        # once it is above 0.99, a difference under 1 %).
        bias_correction = 1 - beta2 ** (state["step"] + 1)
        return grad / ((exp_avg_sq / bias_correction).sqrt() + eps)

    def _step_tensor(self, p: torch.Tensor, grad: torch.Tensor, state: dict, group: dict
                     ) -> None:
        beta1, beta2 = group["betas"]
        period = group["size_update_period"]
        step = state["step"]
        delta = state["delta"]
        delta.mul_(beta1)
        state["scale_grads"][step % period] = (p * grad).sum()
        if step % period == period - 1:
            state["param_rms"].copy_(p.pow(2).mean().sqrt())
            if step > 0:
                delta.add_(p * self._scale_step(state, group), alpha=1 - beta1)
        direction = self._adam_direction(grad, state, beta2, group["eps"])
        rms = state["param_rms"].clamp(min=group["param_min_rms"])
        delta.add_(direction * rms, alpha=-group["lr"] * (1 - beta1))
        p.add_(delta)

    @staticmethod
    def _scale_step(state: dict, group: dict) -> torch.Tensor:
        """The step on the tensor's log-scale at the end of a ``size_update_period``: the
        summed ``<p, g>`` of the period, normalised by its own running RMS (an Adam step on
        the scale, bias-corrected per period), at lr x ``scalar_lr_scale``."""
        _, beta2 = group["betas"]
        period = group["size_update_period"]
        scale_grads = state["scale_grads"]
        beta2_period = beta2 ** period
        avg = state["scale_exp_avg_sq"]
        avg.mul_(beta2_period).add_(scale_grads.pow(2).mean(), alpha=1 - beta2_period)
        size_steps = (state["step"] + 1) // period
        bias_correction = 1 - beta2_period ** size_steps
        denom = (avg / bias_correction).sqrt() + group["eps"]
        lr = group["lr"] * group["scalar_lr_scale"]
        # Reading: the digest clamps the scale step to [-0.1, 0.1] and caps it so that the
        # RMS stays within [param_min_rms, param_max_rms] (below the minimum: no shrinking).
        scale_step = (-lr * scale_grads.sum() / denom).clamp(-0.1, 0.1)
        rms = state["param_rms"]
        if rms < group["param_min_rms"]:
            scale_step = scale_step.clamp(min=0.0)
        return torch.minimum(scale_step, (group["param_max_rms"] - rms) / rms)

    def _step_scalar(self, p: torch.Tensor, grad: torch.Tensor, state: dict, group: dict
                     ) -> None:
        beta1, beta2 = group["betas"]
        delta = state["delta"]
        delta.mul_(beta1)
        direction = self._adam_direction(grad, state, beta2, group["eps"])
        delta.add_(direction, alpha=-group["lr"] * group["scalar_lr_scale"] * (1 - beta1))
        p.clamp_(-group["scalar_max"], group["scalar_max"])
        p.add_(delta)


class Eden:
    """icefall's Eden learning-rate schedule (with ScaledAdam, as TODM trains):
    ``lr * ((step^2 + lr_batches^2) / lr_batches^2)^-0.25 * ((epoch^2 + lr_epochs^2) /
    lr_epochs^2)^-0.25 * warmup``, the warm-up rising linearly from ``warmup_start`` to 1
    over ``warmup_batches`` steps. ``step`` counts optimizer steps from 0; ``epoch`` is the
    0-based index of the current epoch (icefall calls ``step_epoch(epoch - 1)`` with 1-based
    epochs before each one: the first epoch decays nothing).

    Defaults: ``lr_batches=7500, lr_epochs=3.5`` (zipformer's train.py), ``warmup_batches
    500``, ``warmup_start 0.1`` (our reading of zipformer's train.py; icefall's
    ``Eden`` class itself defaults to 0.5). A small job wants far smaller ``lr_batches`` and
    ``lr_epochs``: they are where the decay becomes significant."""

    def __init__(self, lr: float, lr_batches: float = 7500, lr_epochs: float = 3.5,
                 warmup_batches: float = 500, warmup_start: float = 0.1):
        self.lr, self.lr_batches, self.lr_epochs = lr, lr_batches, lr_epochs
        self.warmup_batches, self.warmup_start = warmup_batches, warmup_start

    def __call__(self, step: int, epoch: int) -> float:
        decay = (((step ** 2 + self.lr_batches ** 2) / self.lr_batches ** 2) ** -0.25
                 * ((epoch ** 2 + self.lr_epochs ** 2) / self.lr_epochs ** 2) ** -0.25)
        warm = 1.0
        if step < self.warmup_batches:
            warm = self.warmup_start + (1.0 - self.warmup_start) * step / self.warmup_batches
        return self.lr * decay * warm
