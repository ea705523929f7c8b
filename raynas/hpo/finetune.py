"""Fine-tuning a chosen subnet: its static model, with the weights it inherited from the
supernet, trained on the labels (optionally distilled from the supernet's largest subnet).

``finetune`` is the pure torch loop (a test may call it directly); ``finetune_trial`` is
the Ray Tune trainable of ``raynas finetune``'s study, whose space holds the ``finetune``
keys of ``finetune.hparams`` and, where several subnets are candidates, the subnet itself
(``arch``, by key): one space for which subnet to deploy and how to fine-tune it.

A weight that is exactly zero when fine-tuning starts (a pruned ticket's) stays zero: the
exported model keeps the sparsity it was searched with.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raynas.errors import ConfigError
from raynas.space.dims import Choice, FloatRange, IntRange

KEYS = ("epochs", "lr", "weight_decay", "distill", "temperature")
ARCH = "arch"  # the study's key of the subnet when several are candidates
EPOCHS = "epochs_done"
FEASIBLE = "feasible"  # reported 0 by a trial whose subnet breaks a budget (not trained)


def parse_finetune_hparams(cfg) -> tuple[Choice | IntRange | FloatRange, ...]:
    """The dims of ``cfg.finetune.hparams`` (ConfigError naming the key if one is not a
    finetune key, is malformed, or has a bound the finetune section refuses)."""
    from raynas.config import FinetuneConfig
    from raynas.space.space import _parse_space

    doc = dict(cfg.finetune.hparams)
    for key in doc:
        if key not in KEYS:
            raise ConfigError(f"finetune.hparams.{key}: not a finetune key; the study "
                              f"searches {', '.join(KEYS)}")
    if not doc:
        return ()
    try:
        dims = _parse_space({"name": "finetune", "dims": doc}, "finetune.hparams").dims
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("finetune.hparams: dims.", "finetune.hparams.", 1)) \
            from None
    base = cfg.finetune.model_dump()
    for dim in dims:
        if not isinstance(dim, Choice | IntRange | FloatRange):
            raise ConfigError(f"finetune.hparams.{dim.name}.type = 'per_layer': a "
                              "hyperparameter is a float, int or choice dim")
        for value in (list(dim.values) if isinstance(dim, Choice) else [dim.low, dim.high]):
            try:
                FinetuneConfig(**{**base, dim.name: value})
            except ValueError as exc:
                why = exc.errors()[0]["msg"] if hasattr(exc, "errors") else str(exc)
                raise ConfigError(f"finetune.hparams.{dim.name}: the value {value!r} is "
                                  f"refused: {why}") from None
    return dims


def finetune(model: nn.Module, task, train_data, val_batches, train: Mapping[str, Any],
             values: Mapping[str, Any], *, teacher: nn.Module | None = None,
             device: str = "cpu", seed: int = 0,
             on_epoch: Callable[[int, dict[str, float]], None] | None = None,
             rank: int = 0, world: int = 1) -> list[dict[str, float]]:
    """Train ``model`` in place for ``values["epochs"]`` epochs; return each epoch's
    ``loss_train`` and validation metrics (``val_<name>``), also handed to ``on_epoch``.

    ``train``: the job's train section (batch size, optimizer, schedule, label smoothing,
    gradient clipping), with ``values``' ``lr``, ``weight_decay`` and ``epochs`` in place of
    its own and no warm-up. ``values["distill"]`` > 0 mixes the labels' loss with the KL
    from ``teacher``'s probabilities at ``values["temperature"]``, by that weight.

    ``world`` > 1: this is data-parallel worker ``rank`` of a ``torch.distributed`` group
    (Ray Train's): it trains on its shard of ``train_data`` (every rank takes the same number
    of steps), gradients are averaged over the ranks before each step, BatchNorm statistics
    at the end of each epoch, so every rank holds the same model and validates it;
    ``loss_train`` is the mean over the ranks, and each row also says ``steps``, a rank's
    steps in the epoch.
    """
    from raynas.config import TrainConfig
    from raynas.tasks import make_loader, to_device
    from raynas.training.loop import average_gradients
    from raynas.training.losses import KLDistiller
    from raynas.training.optim import build_optimizer, build_schedule

    epochs = int(values["epochs"])
    cfg = TrainConfig(**{**dict(train), "epochs": epochs, "lr": float(values["lr"]),
                         "weight_decay": float(values["weight_decay"]), "warmup_epochs": 0})
    weight = float(values.get("distill", 0.0))
    if weight > 0 and teacher is None:
        raise ConfigError("finetune.distill > 0 needs the supernet's largest subnet as teacher")
    kd = KLDistiller(float(values.get("temperature", 1.0)))
    torch.manual_seed(seed)
    model.to(device)
    if teacher is not None:
        teacher.to(device).eval()
    # Exact zeros (a pruned ticket's weights) stay zero.
    zeros = {p: p.detach() != 0 for p in model.parameters() if p.dim() > 1
             and bool((p == 0).any())}
    optimizer = build_optimizer(model, cfg)
    schedule = build_schedule(cfg)
    loader = make_loader(train_data, cfg.batch_size, shuffle=True, seed=seed, rank=rank,
                         world=world, drop_last=len(train_data) >= cfg.batch_size * world)
    steps = max(1, len(loader))
    params = [p for p in model.parameters() if p.requires_grad]
    history: list[dict[str, float]] = []
    for epoch in range(epochs):
        model.train()
        total, n = 0.0, 0
        if hasattr(loader.sampler, "set_epoch"):  # a DistributedSampler: this epoch's shard
            loader.sampler.set_epoch(epoch)
        for s, batch in enumerate(loader):
            for group in optimizer.param_groups:
                group["lr"] = schedule(epoch * steps + s, epoch, steps)
            batch = to_device(batch, device)
            inputs = task.inputs(batch)
            out = model(*inputs)
            loss = task.loss(out, batch, cfg.label_smoothing)
            if weight > 0:
                with torch.no_grad():
                    target = task.distill_target(teacher(*inputs))
                loss = (1 - weight) * loss + weight * kd(out, target, task.distill_mask(batch))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if world > 1:
                average_gradients(params, world)
            if cfg.grad_clip:
                nn.utils.clip_grad_value_(params, cfg.grad_clip)
            optimizer.step()
            with torch.no_grad():
                for p, keep in zeros.items():
                    p.mul_(keep)
            total, n = total + float(loss.detach()), n + 1
        steps_here = n
        if world > 1:  # every rank sees the others' loss (and so stops together if it diverged)
            total, n = _sum_over_ranks(model, total, n, world)
        if not math.isfinite(total):
            raise FloatingPointError(f"fine-tuning diverged at epoch {epoch + 1} (lr "
                                     f"{cfg.lr:g}): the training loss is {total}")
        val = task.evaluate(model, val_batches, device)
        row = {"epoch": epoch, "loss_train": total / max(n, 1),
               **{f"val_{k}": v for k, v in val.items()}}
        if world > 1:
            row["steps"] = steps_here
        history.append(row)
        if on_epoch is not None:
            on_epoch(epoch, row)
    return history


def _sum_over_ranks(model: nn.Module, total: float, n: int, world: int) -> tuple[float, int]:
    """The ranks' summed training loss and step count; every floating-point buffer of
    ``model`` (BatchNorm's running statistics, each rank's from its own shard) becomes the
    ranks' mean, in place."""
    import torch.distributed as dist

    buffers = [b for b in model.buffers() if b.is_floating_point()]
    device = next(model.parameters()).device
    flat = torch.cat([torch.tensor([total, n], dtype=torch.float64, device=device)]
                     + [b.detach().reshape(-1).double() for b in buffers])
    dist.all_reduce(flat)
    offset = 2
    for b in buffers:
        b.copy_((flat[offset:offset + b.numel()] / world).view_as(b))
        offset += b.numel()
    return float(flat[0]), int(flat[1])


def finetune_trial(config: dict[str, Any], *, space: dict, candidates: dict[str, dict],
                   teacher: dict | None, defaults: dict[str, Any], train: dict[str, Any],
                   data: dict[str, Any], task: dict | None, seed: int, device: str,
                   evaluator=None, budgets: list[tuple[str, float]] = (), workers: int = 1,
                   storage: str = "") -> None:
    """Ray Tune's function trainable: fine-tune the trial's subnet with the trial's
    ``finetune`` values over ``defaults``; report the validation metrics every epoch and the
    model at the last.

    The subnet: ``config["arch"]``, a key of ``candidates`` (arch key -> ``{"arch": ...,
    "state": state dict}``), or the only candidate; or, with ``evaluator`` (the shared
    evaluator actor), the one the trial's ``arch.*`` values name, its inherited weights and
    metrics from that actor. Then a subnet over one of ``budgets`` (``(metric, limit)``) is
    not trained: the trial reports its inherited validation metrics and ``violation.*`` once.
    ``teacher``: the largest subnet's ``{"arch", "state"}``, or None. ``workers`` > 1: the
    fine-tuning is a Ray Train run of that many workers (``finetune.num_workers``), under
    ``<storage>/<trial id>``; else it trains in this process on ``device``."""
    import logging

    import ray.tune

    from raynas.hpo.space import VIOLATION, arch_of
    from raynas.space import SearchSpace
    from raynas.tasks import build_task

    for name in ("ray.tune", "ray.train"):  # one line per epoch is the study's
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.set_num_threads(max(1, int(ray.get_runtime_context().get_assigned_resources()
                                     .get("CPU", 1))))
    space_ = SearchSpace.from_dict(space)
    task_ = build_task(space_, task)
    extra: dict[str, Any] = {}  # reported with every epoch's metrics
    if evaluator is None:
        chosen = candidates[config.get(ARCH, next(iter(candidates)))]
    else:
        arch = arch_of(space_, config)
        record, state = ray.get(evaluator.inherit.remote(arch.to_dict()))
        chosen = {"arch": arch.to_dict(), "state": state}
        over = {VIOLATION + m: (float(record[m]) - limit) / abs(limit) if limit else
                float(record[m]) - limit for m, limit in budgets}
        extra = {"arch_key": arch.key, **over}
        if any(v > 0 for v in over.values()):  # over a budget: scored, not trained
            ray.tune.report({**{f"val_{m.name}": record[m.name] for m in task_.metrics},
                             **extra, EPOCHS: 0, FEASIBLE: 0})
            return
    values = {**defaults, **{k: v for k, v in config.items() if k in KEYS}}
    epochs = int(values["epochs"])
    if workers > 1:  # a Ray Train run of its own, its reports relayed here
        from raynas.hpo.finetune_train import finetune_with_ray_train

        def relay(metrics: dict[str, Any], checkpoint: str | None) -> None:
            metrics = {k: v for k, v in metrics.items() if k != "weights_digests"}
            ray.tune.report({**metrics, **extra}, checkpoint=None if checkpoint is None
                            else ray.tune.Checkpoint.from_directory(checkpoint))

        trial_id = ray.tune.get_context().get_trial_id()
        finetune_with_ray_train(space=space, arch=chosen["arch"], state=chosen["state"],
                                teacher=teacher, task=task, data=data, train=train,
                                values=values, seed=seed, num_workers=workers,
                                storage_path=f"{storage}/{trial_id}", report=relay)
        return
    from raynas.hpo.finetune_train import load_subnet

    model, mentor, split, val_batches = load_subnet(space_, task_, chosen, teacher, data,
                                                    device)

    def report(epoch: int, row: dict[str, float]) -> None:
        metrics = {**row, **extra, EPOCHS: epoch + 1}
        if epoch + 1 < epochs:
            ray.tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(model.state_dict(), Path(tmp) / "model.pt")
            ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(tmp))

    finetune(model, task_, split.train, val_batches, train, values, teacher=mentor,
             device=device, seed=seed, on_epoch=report)
