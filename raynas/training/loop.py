"""Supernet training: one epoch loop that runs as ``train_loop_per_worker`` under Ray Train.

Per step, the sampler names the subnets to train. The first one learns from the labels
(the task's loss); with in-place distillation its output becomes the teacher of the others
(BigNAS / AttentiveNAS), through the task's distillation target (per-sample, per-token or
per-frame probabilities). Every subnet's gradient accumulates, then the data-parallel workers
average gradients once (one all-reduce per step, not one per subnet) and the optimizer steps.

``train_epoch`` takes its collaborators (task, sampler, distiller, optimizer, hooks) as
arguments; ``train_loop_per_worker`` builds them from the job by registered name.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from raynas.checkpoint import load_checkpoint, save_checkpoint
from raynas.config import TrainConfig
from raynas.nn import recalibrate_batchnorm, set_dropout
from raynas.space import Arch, SearchSpace
from raynas.tasks import Batch, Task, load_task_data, make_loader, sample_batches, to_device
from raynas.tickets import load_ticket
from raynas.training.diagnostics import GradientCosine
from raynas.training.dropout import DROPOUTS, check_dropout_site
from raynas.training.losses import DISTILLERS
from raynas.training.optim import build_optimizer, build_schedule, restore_optimizer
from raynas.training.pruning import PRUNERS, FixedMasks
from raynas.training.samplers import (
    SAMPLERS,
    DrawLog,
    FixedArchSampler,
    Scorer,
    mean_over_workers,
)
from raynas.weights import SchemeSupernet, Score, normalise, set_training_arch
from raynas.weights.masks import load_masks, mask_state, subnet_sparsity

# ``hook(step, losses)`` after every optimizer step (progress, logging, schedules).
Hook = Callable[[int, dict[str, float]], None]


def average_gradients(params: list[nn.Parameter], world_size: int) -> None:
    """All-reduce every gradient as one flat buffer. A parameter no worker used this step
    keeps no gradient (so the optimizer skips it, as it does on one worker: no momentum or
    weight decay for an untrained block or supernet); one used by some workers only counts
    as zero on the others."""
    used = torch.tensor([p.grad is not None for p in params], dtype=torch.int32)
    dist.all_reduce(used)
    params = [p for p, u in zip(params, used.tolist()) if u]
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p)
        offset += n


def validation_scorer(task: Task, val, batch_size: int, seed: int,
                      device: torch.device | str = "cpu") -> Callable[[int], Score]:
    """``for_step(step)``: a ``Score`` on one seeded validation minibatch of that step (the
    same on every worker), drawn only if a scheme asks: the primary metric, negated where
    its goal is min, of the net in train mode (batch statistics) without gradients."""
    metric = task.primary

    def for_step(step: int) -> Score:
        batch: list[Batch] = []

        def score(net: nn.Module) -> float:
            if not batch:
                drawn = sample_batches(val, 1, min(batch_size, len(val)), seed=seed + step)
                batch.append(to_device(drawn[0], device))
            net.train()
            with torch.no_grad():
                out = net(*task.inputs(batch[0]))
            total, n = task.metric_sums(out, batch[0])[metric.name]
            value = total / max(n, 1e-12)
            return value if metric.goal == "max" else -value
        return score
    return for_step


def candidate_scorer(net, task: Task, batch: Batch, cfg: TrainConfig) -> Scorer:
    """``score(archs)`` for samplers that pick by loss (``needs_score``): each subnet's label
    loss on ``batch``, without gradients, in train mode (batch statistics), averaged over the
    workers so that every worker picks the same subnets."""
    def score(archs: Sequence[Arch]) -> list[float]:
        losses = []
        with torch.no_grad():
            for arch in archs:
                net.set_arch(arch)
                out = net(*task.inputs(batch))
                losses.append(float(task.loss(out, batch, cfg.label_smoothing)))
        return mean_over_workers(losses)
    return score


def train_step(net, task: Task, optimizer, sampler, distiller, batch: Batch, step: int,
               cfg: TrainConfig, world_size: int, score: Score | None = None,
               dropout=None, pruner=None) -> dict[str, float]:
    """One optimizer step over the sampler's subnets; returns the first and last subnets'
    losses (``loss_largest`` only where the sampler trains the largest first). ``score``
    rates a subnet on validation data for a weight scheme that learns from it. ``dropout``
    (a ``train.dropout`` policy) sets each subnet's dropout rate before its forward pass;
    the rate is back at 0 after the step (validation scoring runs without dropout).
    ``pruner`` (``train.prune`` or a ticket's fixed masks, see ``pruning.Pruner``) adds its
    regulariser's gradient after the workers' average and re-zeroes masked weights after
    the optimizer step."""
    optimizer.zero_grad(set_to_none=True)
    drop = dropout is not None and getattr(dropout, "active", True)
    teacher = None
    distil = getattr(distiller, "needs_teacher", False)
    mask = task.distill_mask(batch) if distil else None
    inputs = task.inputs(batch)
    archs = (sampler.sample(step, score=candidate_scorer(net, task, batch, cfg))
             if getattr(sampler, "needs_score", False) else sampler.sample(step))
    per_subnet: list[float] = []
    for i, arch in enumerate(archs):
        set_training_arch(net, arch, step)
        if drop:
            set_dropout(net, dropout.rate(arch))
        out = net(*inputs)
        if teacher is None:
            loss = task.loss(out, batch, cfg.label_smoothing)
        else:
            loss = distiller(out, teacher, mask)
        loss.backward()
        if i == 0 and distil:
            teacher = task.distill_target(out)
        per_subnet.append(float(loss.detach()))
    if drop:
        set_dropout(net, 0.0)
    params = [p for p in net.parameters() if p.requires_grad]
    if world_size > 1:
        average_gradients(params, world_size)
    if pruner is not None:
        pruner.before_step(net, step)
    if cfg.grad_clip:
        nn.utils.clip_grad_value_(params, cfg.grad_clip)
    optimizer.step()
    if pruner is not None:
        pruner.after_step(net)
    sampler.feedback(step, archs, per_subnet)
    if isinstance(net, SchemeSupernet):
        net.after_step(step, archs, score)
        net.train()
    first = "loss_largest" if sampler.teacher_first else "loss_first"
    losses = {first: per_subnet[0]}
    if len(archs) > 1:
        losses["loss_smallest" if sampler.teacher_first else "loss_last"] = per_subnet[-1]
    return losses


def train_epoch(net, task: Task, batches: Iterable[Batch], optimizer, sampler, distiller,
                cfg: TrainConfig, epoch: int, steps_per_epoch: int, world: int = 1,
                device: torch.device | str = "cpu", hooks: Sequence[Hook] = (),
                scorer: Callable[[int], Score] | None = None,
                schedule: Callable[[int, int, int], float] | None = None,
                dropout=None, pruner=None) -> dict[str, float]:
    """One pass over ``batches``; the mean of each step loss. ``scorer(step)``: the
    step's ``Score`` (see ``validation_scorer``) for weight schemes that use one.
    ``schedule(step, epoch, steps_per_epoch)``: the learning rate of each step, written into
    every parameter group (None: the job's ``train.schedule``). ``dropout``: the
    ``train.dropout`` policy (None: no dropout). ``pruner``: see ``train_step``."""
    if isinstance(net, SchemeSupernet):
        net.start_epoch(epoch, cfg.epochs)
    if hasattr(sampler, "start_epoch"):
        sampler.start_epoch(epoch, cfg.epochs)
    schedule = schedule or build_schedule(cfg)
    sums: dict[str, float] = {}
    n = 0
    for s, batch in enumerate(batches):
        if s >= steps_per_epoch:
            break
        step = epoch * steps_per_epoch + s
        for group in optimizer.param_groups:
            group["lr"] = schedule(step, epoch, steps_per_epoch)
        losses = train_step(net, task, optimizer, sampler, distiller, to_device(batch, device),
                            step, cfg, world, scorer(step) if scorer else None, dropout,
                            pruner)
        for hook in hooks:
            hook(step, losses)
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v
        n += 1
    return {k: v / max(n, 1) for k, v in sums.items()}


@torch.no_grad()
def quick_metric(net, task: Task, arch: Arch, calib: list[Batch], val_batches: list[Batch],
                 device: torch.device | str = "cpu") -> float:
    """The task's primary metric of one subnet on validation batches, after BN
    recalibration on ``calib`` (a seeded sample of training batches)."""
    net.set_arch(arch)
    recalibrate_batchnorm(net, [to_device(b, device) for b in calib],
                          lambda m, b: m(*task.inputs(b)))
    value = task.evaluate(net, val_batches, device, full=False)[task.primary.name]
    net.train()
    return value


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point. ``config`` holds plain values only (it crosses processes):
    ``space`` (dict), ``task`` (``{name, options}`` or None), ``train`` / ``data`` (config
    dicts), ``seed``, ``resume_from``, ``ticket`` (the bytes of ``train.init_ticket``'s file,
    or None), ``probes`` (archs whose mean validation metric each epoch reports, or None).

    Workers never talk to MLflow: rank 0 reports each epoch's metrics with its checkpoint,
    and the trainer's callback logs them from the driver's node (see ``trainer.py``).
    """
    import ray.train
    import ray.train.torch

    # Ray Train's worker root logger prints every report at INFO; one line per epoch is ours.
    logging.getLogger().setLevel(logging.WARNING)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = TrainConfig(**config["train"])
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    torch.manual_seed(config["seed"])  # identical initial weights on every worker
    device = ray.train.torch.get_device() if cfg.use_gpu else torch.device("cpu")

    from raynas.supernets import create_supernet
    from raynas.tasks import build_task

    space = SearchSpace.from_dict(config["space"])
    task = build_task(space, config.get("task"))
    weights = normalise(config.get("weights"))
    net = create_supernet(space, weights).to(device)
    optimizer = build_optimizer(net, cfg)
    data = load_task_data(task, config["data"])
    # Each rank reads its own shard of the training set (Ray Train's rank and world size).
    loader = make_loader(data.train, cfg.batch_size, shuffle=True, seed=config["seed"],
                         rank=rank, world=world, drop_last=len(data.train) >= cfg.batch_size
                         * world)
    steps_per_epoch = max(1, len(loader))
    # DrawLog: a digest of the draws, compared across workers after each epoch.
    sampler = DrawLog(SAMPLERS.create(cfg.sampler.name, cfg.sampler.options, space=space,
                                      num_subnets=cfg.num_subnets, seed=config["seed"]))
    distiller = DISTILLERS.create(cfg.distill.name, cfg.distill.options)
    dropout = DROPOUTS.create(cfg.dropout.name, cfg.dropout.options, space=space)
    check_dropout_site(cfg.dropout.name, dropout, net, space)
    pruner = PRUNERS.create(cfg.prune.name, cfg.prune.options, space=space)
    ticket = None
    if config.get("ticket"):
        # A ticket's arch alone trains, from this job's fresh (seeded) weights: lottery-ticket
        # retraining with a new initialisation, not a rewind (the ticket holds no weights).
        ticket = load_ticket(config["ticket"], expected=space)
        pruner = FixedMasks(ticket["masks"]["weights"], ticket["masks"].get("channels") or {})
        sampler = DrawLog(FixedArchSampler(space, ticket["arch"]))
    if pruner is not None:
        example = task.example_inputs(2, seed=config["seed"])
        pruner.setup(net, [example[k].to(device) for k in task.input_names], space,
                     steps_per_epoch)

    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()
    resume_dir = None
    if checkpoint is not None:  # restarted after a failure: Ray hands back the latest
        resume_dir = checkpoint.to_directory()
    elif config.get("resume_from"):
        resume_dir = config["resume_from"]
    if resume_dir is not None:
        state = load_checkpoint(resume_dir, expected=space, weights=weights)
        net.load_state_dict(state["model"])
        restore_optimizer(optimizer, state["optimizer"])
        sampler.load_state_dict(state.get("sampler") or {})
        start_epoch = state["epoch"] + 1
        if pruner is not None:
            masks = state.get("masks") or {}
            load_masks(net, masks.get("weights") or {}, masks.get("channels") or {})
            pruner.after_checkpoint(net, state["epoch"], cfg.epochs)

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

    calib = sample_batches(data.train, 2, 256, seed=config["seed"]) if rank == 0 else []
    val_batches = list(make_loader(data.val, 512)) if rank == 0 else []
    primary = task.primary.name
    probes = [space.validate(a) for a in config.get("probes") or ()]
    scorer = validation_scorer(task, data.val, cfg.batch_size, config["seed"], device)
    probe = (GradientCosine([p for p in net.parameters() if p.requires_grad])
             if cfg.grad_cosine else None)
    net.train()
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        metrics: dict[str, Any] = train_epoch(
            net, task, loader, optimizer, sampler, distiller, cfg, epoch, steps_per_epoch,
            world, device, hooks=[probe] if probe else (), scorer=scorer, dropout=dropout,
            pruner=pruner)
        if pruner is not None:  # prunes on its schedule: the evaluation and checkpoint see it
            metrics.update(pruner.end_epoch(net, epoch, cfg.epochs, world))
        if isinstance(net, SchemeSupernet):
            metrics.update(net.metrics())
        metrics.update(sampler.metrics())
        if probe:
            metrics.update(probe.metrics())
        if world > 1:  # every worker must have trained the same subnets at every step
            digests: list[Any] = [None] * world
            dist.all_gather_object(digests, sampler.digest())
            metrics["sampler.workers_agree"] = float(len(set(digests)) == 1)
            if rank == 0 and len(set(digests)) > 1:
                print(f"[raynas] train: WARNING: the workers drew different subnets in epoch "
                      f"{epoch + 1} (train.sampler = {cfg.sampler.name!r} is not deterministic "
                      "across workers)", flush=True)
        metrics.update(epoch=epoch, lr=optimizer.param_groups[0]["lr"],
                       weight_decay=optimizer.param_groups[0].get("weight_decay", 0.0),
                       epoch_time_s=time.perf_counter() - t0, **attempt_info)
        attempt_info = {}
        if rank == 0:
            for which, arch in (("largest", space.largest()), ("smallest", space.smallest())):
                metrics[f"val_{primary}_{which}"] = quick_metric(net, task, arch, calib,
                                                                 val_batches, device)
            if probes:  # `raynas tune`'s metric: the mean over a fixed set of subnets
                metrics[f"val_{primary}_probes"] = sum(
                    quick_metric(net, task, a, calib, val_batches, device) for a in probes
                ) / len(probes)
            if ticket is not None:
                metrics[f"val_{primary}_ticket"] = quick_metric(net, task, ticket["arch"], calib,
                                                                val_batches, device)
                metrics.update({f"ticket.{k}": v for k, v in subnet_sparsity(net).items()})
            extra = {"weights": weights, "optimizer": optimizer.state_dict(),
                     "sampler": sampler.state_dict()}
            if pruner is not None:
                extra["masks"] = mask_state(net)
            with tempfile.TemporaryDirectory() as tmp:
                model_state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
                save_checkpoint(tmp, space, model_state, epoch, extra)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
            loss = next(iter(v for k, v in metrics.items() if k.startswith("loss_")),
                        float("nan"))
            print(f"[raynas] train epoch {epoch + 1}/{cfg.epochs}  loss {loss:.3f}  val "
                  f"{primary} largest {metrics[f'val_{primary}_largest']:.3f} smallest "
                  f"{metrics[f'val_{primary}_smallest']:.3f}  ({metrics['epoch_time_s']:.1f}s"
                  f"{', ' + str(device) if device.type != 'cpu' else ''})", flush=True)
        else:
            ray.train.report(metrics)
        if pruner is not None:
            pruner.after_checkpoint(net, epoch, cfg.epochs)
