"""Optimizers (``train.optimizer``) by registered name, and the learning-rate schedule.

A factory takes the parameter groups and the learning rate (from the job's ``train``
section) plus its own options, and returns a ``torch.optim.Optimizer``. Norms and biases
(1-d tensors) get no weight decay, as in AlphaNet / OFA.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from raynas.registry import Registry

OPTIMIZERS: Registry = Registry("optimizer", "train.optimizer", group="raynas.optimizers")


@OPTIMIZERS.register("sgd")
def sgd(groups, lr: float, momentum: float = 0.9, nesterov: bool = True):
    """SGD with (Nesterov) momentum."""
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)


@OPTIMIZERS.register("adamw")
def adamw(groups, lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
    """AdamW (decoupled weight decay)."""
    return torch.optim.AdamW(groups, lr=lr, betas=(beta1, beta2), eps=eps)


def build_optimizer(net: nn.Module, cfg) -> torch.optim.Optimizer:
    """The job's optimizer over ``net`` (``cfg``: the ``train`` section)."""
    decay = [p for p in net.parameters() if p.dim() > 1]
    no_decay = [p for p in net.parameters() if p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return OPTIMIZERS.create(cfg.optimizer.name, cfg.optimizer.options, groups=groups,
                             lr=cfg.lr)


def lr_at(cfg, step: int, steps_per_epoch: int) -> float:
    """Linear warm-up, then cosine decay to zero over the remaining steps."""
    warm = cfg.warmup_epochs * steps_per_epoch
    total = cfg.epochs * steps_per_epoch
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
