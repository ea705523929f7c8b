"""Optimizers (``train.optimizer``) and learning-rate schedules (``train.schedule``) by
registered name.

An optimizer factory takes the parameter groups and the learning rate (from the job's
``train`` section) plus its own options, and returns a ``torch.optim.Optimizer``. Norms and
biases (1-d tensors) get no weight decay, as in AlphaNet / OFA.

A schedule factory takes the ``train`` section plus its own options and returns a function
``lr(step, epoch, steps_per_epoch)``; the train loop writes its value into every parameter
group before each step. ``warmup_cosine`` (the default) is linear warm-up then cosine decay;
``eden`` is icefall's schedule for ScaledAdam.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from raynas.errors import ConfigError, describe_value
from raynas.registry import Registry
from raynas.training.scaled_adam import Eden, ScaledAdam

OPTIMIZERS: Registry = Registry("optimizer", "train.optimizer", group="raynas.optimizers")
SCHEDULES: Registry = Registry("learning-rate schedule", "train.schedule",
                               group="raynas.schedules")


def _number(where: str, value, low: float | None = None, high: float | None = None,
            low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a float, or a ``ConfigError`` naming ``where`` and the allowed range."""
    lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
    hi = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
    allowed = " and ".join(x for x in (lo, hi) if x) or "finite"
    bad = isinstance(value, bool) or not isinstance(value, int | float) or \
        not math.isfinite(value)
    if not bad:
        bad = (low is not None and (value <= low if low_open else value < low)) or \
            (high is not None and (value >= high if high_open else value > high))
    if bad:
        raise ConfigError(f"{where} = {describe_value(value)}: must be a number {allowed}")
    return float(value)


@OPTIMIZERS.register("sgd")
def sgd(groups, lr: float, momentum: float = 0.9, nesterov: bool = True):
    """SGD with (Nesterov) momentum."""
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)


@OPTIMIZERS.register("adamw")
def adamw(groups, lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
    """AdamW (decoupled weight decay)."""
    return torch.optim.AdamW(groups, lr=lr, betas=(beta1, beta2), eps=eps)


@OPTIMIZERS.register("scaled_adam")
def scaled_adam(groups, lr: float, beta1: float = 0.9, beta2: float = 0.98, eps: float = 1e-8,
                scalar_lr_scale: float = 0.1, param_min_rms: float = 1e-5,
                param_max_rms: float = 3.0, scalar_max: float = 10.0,
                size_update_period: int = 4, clipping_scale: float | None = 2.0,
                clipping_update_period: int = 100):
    """ScaledAdam (icefall Zipformer; TODM): updates relative to each tensor's RMS, a learned
    log-scale per tensor, scalars at ``scalar_lr_scale`` x lr and clamped to ``scalar_max``,
    and (``clipping_scale``, null: off) clipping at that multiple of the median recent
    gradient norm. Pair it with ``train.schedule: eden``; icefall's lr is 0.045, about 10x
    Adam's. It ignores ``train.weight_decay``. See ``raynas.training.scaled_adam``."""
    w = "train.optimizer.options."
    for key, value in (("beta1", beta1), ("beta2", beta2)):
        _number(w + key, value, 0, 1, high_open=True)
    for key, value in (("eps", eps), ("scalar_lr_scale", scalar_lr_scale),
                       ("param_min_rms", param_min_rms), ("param_max_rms", param_max_rms),
                       ("scalar_max", scalar_max)):
        _number(w + key, value, 0, low_open=True)
    if param_min_rms >= param_max_rms:
        raise ConfigError(f"{w}param_min_rms = {param_min_rms}: must be below param_max_rms "
                          f"({param_max_rms})")
    for key, value in (("size_update_period", size_update_period),
                       ("clipping_update_period", clipping_update_period)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{w}{key} = {describe_value(value)}: must be an integer >= 1")
    if clipping_scale is not None:
        _number(w + "clipping_scale", clipping_scale, 0, low_open=True)
    return ScaledAdam(groups, lr=lr, betas=(beta1, beta2), eps=eps,
                      scalar_lr_scale=scalar_lr_scale, param_min_rms=param_min_rms,
                      param_max_rms=param_max_rms, scalar_max=scalar_max,
                      size_update_period=size_update_period, clipping_scale=clipping_scale,
                      clipping_update_period=clipping_update_period)


def build_optimizer(net: nn.Module, cfg) -> torch.optim.Optimizer:
    """The job's optimizer over ``net`` (``cfg``: the ``train`` section)."""
    decay = [p for p in net.parameters() if p.dim() > 1]
    no_decay = [p for p in net.parameters() if p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return OPTIMIZERS.create(cfg.optimizer.name, cfg.optimizer.options, groups=groups,
                             lr=cfg.lr)


def restore_optimizer(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a checkpoint's optimizer ``state`` (momentum, Adam's moments) but keep this job's
    hyperparameters: ``load_state_dict`` also brings back each group's learning rate, weight
    decay, momentum and betas as they were when the checkpoint was saved, so a resume with a
    new ``train.weight_decay`` (``train.resume_from``, a population-based-training trial
    continuing from its donor's weights) would silently train with the old one."""
    own = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, settings in zip(optimizer.param_groups, own):
        group.update(settings)


@SCHEDULES.register("warmup_cosine")
def warmup_cosine(train):
    """Linear warm-up over ``train.warmup_epochs``, then cosine decay to zero at the end of
    ``train.epochs`` (from ``train.lr``)."""
    return lambda step, epoch, steps_per_epoch: lr_at(train, step, steps_per_epoch)


@SCHEDULES.register("eden")
def eden(train, lr_batches: float = 7500, lr_epochs: float = 3.5,
         warmup_batches: float = 500, warmup_start: float = 0.1):
    """icefall's Eden (with ScaledAdam): ``train.lr`` decayed as a power -0.5 of the step
    past ``lr_batches`` and of the epoch past ``lr_epochs``, after a linear warm-up from
    ``warmup_start`` x lr over ``warmup_batches`` steps (``train.warmup_epochs`` is not
    used). See ``raynas.training.scaled_adam.Eden``."""
    w = "train.schedule.options."
    _number(w + "lr_batches", lr_batches, 0, low_open=True)
    _number(w + "lr_epochs", lr_epochs, 0, low_open=True)
    _number(w + "warmup_batches", warmup_batches, 0)
    _number(w + "warmup_start", warmup_start, 0, 1)
    schedule = Eden(train.lr, lr_batches, lr_epochs, warmup_batches, warmup_start)
    return lambda step, epoch, steps_per_epoch: schedule(step, epoch)


def build_schedule(cfg):
    """The job's schedule: ``lr(step, epoch, steps_per_epoch)`` (``cfg``: the ``train``
    section)."""
    return SCHEDULES.create(cfg.schedule.name, cfg.schedule.options, train=cfg)


def lr_at(cfg, step: int, steps_per_epoch: int) -> float:
    """Linear warm-up, then cosine decay to zero over the remaining steps."""
    warm = cfg.warmup_epochs * steps_per_epoch
    total = cfg.epochs * steps_per_epoch
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
