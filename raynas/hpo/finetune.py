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
             on_epoch: Callable[[int, dict[str, float]], None] | None = None
             ) -> list[dict[str, float]]:
    """Train ``model`` in place for ``values["epochs"]`` epochs; return each epoch's
    ``loss_train`` and validation metrics (``val_<name>``), also handed to ``on_epoch``.

    ``train``: the job's train section (batch size, optimizer, schedule, label smoothing,
    gradient clipping), with ``values``' ``lr``, ``weight_decay`` and ``epochs`` in place of
    its own and no warm-up. ``values["distill"]`` > 0 mixes the labels' loss with the KL
    from ``teacher``'s probabilities at ``values["temperature"]``, by that weight.
    """
    from raynas.config import TrainConfig
    from raynas.tasks import make_loader, to_device
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
    loader = make_loader(train_data, cfg.batch_size, shuffle=True, seed=seed,
                         drop_last=len(train_data) >= cfg.batch_size)
    steps = max(1, len(loader))
    params = [p for p in model.parameters() if p.requires_grad]
    history: list[dict[str, float]] = []
    for epoch in range(epochs):
        model.train()
        total, n = 0.0, 0
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
            if cfg.grad_clip:
                nn.utils.clip_grad_value_(params, cfg.grad_clip)
            optimizer.step()
            with torch.no_grad():
                for p, keep in zeros.items():
                    p.mul_(keep)
            total, n = total + float(loss.detach()), n + 1
        if not math.isfinite(total):
            raise FloatingPointError(f"fine-tuning diverged at epoch {epoch + 1} (lr "
                                     f"{cfg.lr:g}): the training loss is {total}")
        val = task.evaluate(model, val_batches, device)
        row = {"epoch": epoch, "loss_train": total / max(n, 1),
               **{f"val_{k}": v for k, v in val.items()}}
        history.append(row)
        if on_epoch is not None:
            on_epoch(epoch, row)
    return history


def finetune_trial(config: dict[str, Any], *, space: dict, candidates: dict[str, dict],
                   teacher: dict | None, defaults: dict[str, Any], train: dict[str, Any],
                   data: dict[str, Any], task: dict | None, seed: int, device: str) -> None:
    """Ray Tune's function trainable: fine-tune the trial's subnet (``config["arch"]``, a
    key of ``candidates``, or the only candidate) with the trial's ``finetune`` values over
    ``defaults``; report the validation metrics every epoch and the model at the last.
    ``candidates``: arch key -> ``{"arch": ..., "state": state dict}``; ``teacher`` the
    largest subnet's, or None."""
    import logging

    import ray.tune

    from raynas.space import Arch, SearchSpace
    from raynas.supernets import build_static
    from raynas.tasks import build_task, load_task_data, make_loader, to_device

    for name in ("ray.tune", "ray.train"):  # one line per epoch is the study's
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.set_num_threads(max(1, int(ray.get_runtime_context().get_assigned_resources()
                                     .get("CPU", 1))))
    space_ = SearchSpace.from_dict(space)
    key = config.get(ARCH, next(iter(candidates)))
    chosen = candidates[key]
    model = build_static(space_, Arch(chosen["arch"]))
    model.load_state_dict(chosen["state"])
    mentor = None
    if teacher is not None:
        mentor = build_static(space_, Arch(teacher["arch"]))
        mentor.load_state_dict(teacher["state"])
    task_ = build_task(space_, task)
    split = load_task_data(task_, data)
    val_batches = [to_device(b, device) for b in make_loader(split.val, data["batch_size"])]
    values = {**defaults, **{k: v for k, v in config.items() if k != ARCH}}
    epochs = int(values["epochs"])

    def report(epoch: int, row: dict[str, float]) -> None:
        metrics = {**row, EPOCHS: epoch + 1}
        if epoch + 1 < epochs:
            ray.tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(model.state_dict(), Path(tmp) / "model.pt")
            ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(tmp))

    finetune(model, task_, split.train, val_batches, train, values, teacher=mentor,
             device=device, seed=seed, on_epoch=report)
