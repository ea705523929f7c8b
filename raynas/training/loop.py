"""Supernet training: one epoch loop that runs as ``train_loop_per_worker`` under Ray Train.

Per step (sandwich rule with in-place distillation, BigNAS / AttentiveNAS):
the largest subnet learns from the labels (label-smoothed CE) and its detached softmax becomes
the teacher for the other subnets of the step; every subnet's gradient accumulates, then the
data-parallel workers average gradients once (one all-reduce per step, not one per subnet) and
the optimizer steps.

The collaborators (sampler, distillation loss, optimizer) are plain objects built from the
config, so other strategies plug in without touching the loop.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from raynas.checkpoint import load_checkpoint, save_checkpoint
from raynas.config import DataConfig, TrainConfig
from raynas.data import load_data
from raynas.nn import recalibrate_batchnorm
from raynas.space import SearchSpace
from raynas.supernets import create_supernet, get_family
from raynas.training.losses import kd_kl
from raynas.training.samplers import SAMPLERS


def build_optimizer(net: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # No weight decay on norms and biases (1-d tensors), as in AlphaNet / OFA.
    decay = [p for p in net.parameters() if p.dim() > 1]
    no_decay = [p for p in net.parameters() if p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)


def lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Linear warm-up, then cosine decay to zero over the remaining steps."""
    warm = cfg.warmup_epochs * steps_per_epoch
    total = cfg.epochs * steps_per_epoch
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def average_gradients(params: list[nn.Parameter], world_size: int) -> None:
    """All-reduce every gradient as one flat buffer (unused parameters count as zero)."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p)
        offset += n


def train_step(net, optimizer, sampler, x, y, step: int, cfg: TrainConfig,
               world_size: int) -> dict[str, float]:
    """One optimizer step over the sampler's subnets; returns per-subnet losses."""
    optimizer.zero_grad(set_to_none=True)
    teacher = None
    losses: dict[str, float] = {}
    archs = sampler.sample(step)
    for i, arch in enumerate(archs):
        net.set_arch(arch)
        logits = net(x)
        if teacher is None or cfg.distill == "none":
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        else:
            loss = kd_kl(logits, teacher)
        loss.backward()
        if i == 0:
            teacher = F.softmax(logits.detach(), dim=-1)
            losses["loss_largest"] = float(loss.detach())
        elif i == len(archs) - 1:
            losses["loss_smallest"] = float(loss.detach())
    params = [p for p in net.parameters() if p.requires_grad]
    if world_size > 1:
        average_gradients(params, world_size)
    if cfg.grad_clip:
        nn.utils.clip_grad_value_(params, cfg.grad_clip)
    optimizer.step()
    return losses


@torch.no_grad()
def quick_accuracy(net, arch, splits, calib_batches: int = 2, batch: int = 256) -> float:
    """Validation accuracy of one subnet after BN recalibration on training batches."""
    net.set_arch(arch)
    calib = [splits.x_train[i * batch:(i + 1) * batch] for i in range(calib_batches)]
    recalibrate_batchnorm(net, calib, lambda m, b: m(b))
    net.eval()
    pred = net(splits.x_val).argmax(dim=-1)
    net.train()
    return float((pred == splits.y_val).float().mean())


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point. ``config`` holds plain values only (it crosses processes):
    ``space`` (dict), ``train`` / ``data`` (config dicts), ``seed``, ``resume_from``.

    Workers never talk to MLflow: rank 0 reports each epoch's metrics with its checkpoint,
    and the trainer's callback logs them from the driver's node (see ``trainer.py``).
    """
    import ray.train

    # Ray Train's worker root logger prints every report at INFO; one line per epoch is ours.
    logging.getLogger().setLevel(logging.WARNING)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = TrainConfig(**config["train"])
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    torch.manual_seed(config["seed"])  # identical initial weights on every worker

    space = SearchSpace.from_dict(config["space"])
    net = create_supernet(space)
    optimizer = build_optimizer(net, cfg)
    splits = load_data(DataConfig(**config["data"]),
                       get_family(space.family).input_shape(dict(space.model)))
    x_train, y_train = splits.x_train[rank::world], splits.y_train[rank::world]
    steps_per_epoch = max(1, len(x_train) // cfg.batch_size)

    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()
    resume_dir = None
    if checkpoint is not None:  # restarted after a failure: Ray hands back the latest
        resume_dir = checkpoint.to_directory()
    elif config.get("resume_from"):
        resume_dir = config["resume_from"]
    if resume_dir is not None:
        state = load_checkpoint(resume_dir, expected=space)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = state["epoch"] + 1

    # Where the workers run (a cluster spreads them over nodes), reported with the first
    # epoch of this attempt; the driver side logs it to MLflow.
    node = ray.get_runtime_context().get_node_id()
    nodes = [node]
    if world > 1:
        nodes = [None] * world
        dist.all_gather_object(nodes, node)
    attempt_info: dict[str, Any] = {"nodes": nodes}
    if checkpoint is not None:
        attempt_info["resumed_at_epoch"] = start_epoch
        if rank == 0:
            print(f"[raynas] train: restarted, resuming at epoch {start_epoch + 1}/"
                  f"{cfg.epochs} from the latest checkpoint", flush=True)

    sampler = SAMPLERS[cfg.sampler](space, cfg.num_subnets, config["seed"])
    net.train()
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(config["seed"] * 10_007 + epoch)
        order = torch.randperm(len(x_train), generator=g)
        sums: dict[str, float] = {}
        for s in range(steps_per_epoch):
            idx = order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
            step = epoch * steps_per_epoch + s
            for group in optimizer.param_groups:
                group["lr"] = lr_at(cfg, step, steps_per_epoch)
            losses = train_step(net, optimizer, sampler, x_train[idx], y_train[idx], step,
                                cfg, world)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v
        metrics = {k: v / steps_per_epoch for k, v in sums.items()}
        metrics.update(epoch=epoch, lr=optimizer.param_groups[0]["lr"],
                       epoch_time_s=time.perf_counter() - t0, **attempt_info)
        attempt_info = {}
        if rank == 0:
            metrics["val_acc_largest"] = quick_accuracy(net, space.largest(), splits)
            metrics["val_acc_smallest"] = quick_accuracy(net, space.smallest(), splits)
            with tempfile.TemporaryDirectory() as tmp:
                save_checkpoint(tmp, space, net.state_dict(), epoch,
                                {"optimizer": optimizer.state_dict()})
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
            print(f"[raynas] train epoch {epoch + 1}/{cfg.epochs}  "
                  f"loss {metrics.get('loss_largest', float('nan')):.3f}  "
                  f"val acc largest {metrics['val_acc_largest']:.3f} "
                  f"smallest {metrics['val_acc_smallest']:.3f}  "
                  f"({metrics['epoch_time_s']:.1f}s)", flush=True)
        else:
            ray.train.report(metrics)
