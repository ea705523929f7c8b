"""Fine-tuning a subnet as a Ray Train run, for ``finetune.num_workers`` > 1: that many
data-parallel workers (``train.cpus_per_worker`` CPUs each, a GPU each with
``train.use_gpu``, placed by ``train.placement_strategy``) run
``raynas.hpo.finetune.finetune`` on their shards of the training set.

``finetune_with_ray_train`` starts the run from a trial of ``raynas finetune``'s study and
hands each epoch's report (rank 0's metrics, the model at the last epoch) to the trial, as
``raynas tune``'s trials relay a supernet training (``raynas.hpo.trial.relay_reports``).
``finetune_worker`` is the run's ``train_loop_per_worker``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raynas.hpo.finetune import EPOCHS, finetune
from raynas.hpo.trial import NODES, relay_reports
from raynas.runtime import Request

MODEL = "model.pt"  # the fine-tuned state dict, in the last epoch's checkpoint
WORLD = "world_size"
DIGESTS = "weights_digests"  # each rank's state digest after the epoch, in rank order


def load_subnet(space, task, chosen: dict, teacher: dict | None, data: dict[str, Any],
                device: torch.device | str):
    """What ``finetune`` takes, from plain values: the static subnet of ``chosen``
    (``{"arch", "state"}``) with its weights, the teacher likewise from ``teacher`` (or
    None), ``task``'s data splits (``data``: the data section) and the validation batches
    on ``device``. Returns ``(model, teacher, split, val_batches)``."""
    from raynas.space import Arch
    from raynas.supernets import build_static
    from raynas.tasks import load_task_data, make_loader, to_device

    def static(which: dict) -> nn.Module:
        model = build_static(space, Arch(which["arch"]))
        model.load_state_dict(which["state"])
        return model

    split = load_task_data(task, data)
    val = [to_device(b, device) for b in make_loader(split.val, data["batch_size"])]
    return static(chosen), (static(teacher) if teacher is not None else None), split, val


def state_digest(model: nn.Module) -> str:
    """A short digest of every weight and buffer of ``model``, bit for bit."""
    h = hashlib.sha256()
    for name, value in model.state_dict().items():
        h.update(name.encode())
        h.update(value.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def finetune_worker(config: dict[str, Any]) -> None:
    """Ray Train's ``train_loop_per_worker``. ``config`` holds plain values: ``space`` (a
    SearchSpace dict), ``arch`` and ``state`` (the subnet and its static model's state dict),
    ``teacher`` (``{"arch", "state"}`` or None), ``task`` (``{name, options}`` or None),
    ``data`` and ``train`` (the job's sections), ``values`` (the trial's finetune values)
    and ``seed``. Every rank reports every epoch (the row of ``finetune``, ``epochs_done``,
    ``world_size``, ``train_nodes`` and ``weights_digests``); rank 0 adds the model at the
    last."""
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    from raynas.space import SearchSpace
    from raynas.tasks import build_task

    logging.getLogger().setLevel(logging.WARNING)  # one line per report at INFO otherwise
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    train = config["train"]
    torch.set_num_threads(max(1, int(train["cpus_per_worker"])))
    device = ray.train.torch.get_device() if train["use_gpu"] else torch.device("cpu")
    space = SearchSpace.from_dict(config["space"])
    task = build_task(space, config["task"])
    model, mentor, split, val = load_subnet(
        space, task, {"arch": config["arch"], "state": config["state"]}, config["teacher"],
        config["data"], device)
    nodes: list[Any] = [None] * world
    dist.all_gather_object(nodes, ray.get_runtime_context().get_node_id())
    epochs = int(config["values"]["epochs"])

    def report(epoch: int, row: dict[str, float]) -> None:
        digests: list[Any] = [None] * world
        dist.all_gather_object(digests, state_digest(model))
        metrics = {**row, EPOCHS: epoch + 1, WORLD: world, NODES: ",".join(nodes),
                   DIGESTS: ",".join(digests)}
        if epoch + 1 < epochs or rank != 0:  # every rank reports: Ray Train's barrier
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()},
                       Path(tmp) / MODEL)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    finetune(model, task, split.train, val, train, config["values"], teacher=mentor,
             device=device, seed=config["seed"], on_epoch=report, rank=rank, world=world)


def finetune_with_ray_train(*, space: dict, arch: dict, state: dict[str, torch.Tensor],
                            teacher: dict | None, task: dict | None, data: dict[str, Any],
                            train: dict[str, Any], values: dict[str, Any], seed: int,
                            num_workers: int, storage_path: str,
                            report: Callable[[dict[str, Any], str | None], None],
                            name: str | None = None) -> None:
    """Fine-tune the subnet ``arch`` (its static model's ``state``, CPU tensors) as a Ray
    Train run of ``num_workers`` data-parallel workers (Ray must be initialised; a Tune
    trial's process is the intended caller). ``space``, ``teacher``, ``task``, ``data``,
    ``train``, ``values`` and ``seed`` are ``finetune_worker``'s; ``train`` also places the
    workers (``cpus_per_worker``, ``use_gpu``, ``placement_strategy``).

    ``report(metrics, checkpoint_dir)`` is called in this thread after each epoch, in order:
    rank 0's metrics (see ``finetune_worker``), and at the last epoch a local directory
    holding ``model.pt`` (the fine-tuned state dict; it is removed when ``report`` returns),
    None before. The run (its own checkpoint and state) goes to ``<storage_path>/<name>``
    (``name``: a fresh ``finetune-<hex>`` by default). A failed training raises here (Ray
    Train's ``TrainingFailedError``, whose message holds the worker's error), after the
    reports it made."""
    from ray.train import LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from raynas.training.trainer import POLL_INTERVAL_S, _controller_poll

    config = {"space": space, "arch": arch, "state": state, "teacher": teacher, "task": task,
              "data": data, "train": train, "values": values, "seed": seed}
    gpu = bool(train["use_gpu"])

    def fit(callbacks: list) -> None:
        TorchTrainer(
            finetune_worker, train_loop_config=config,
            torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
            scaling_config=ScalingConfig(
                num_workers=num_workers, use_gpu=gpu,
                resources_per_worker={"CPU": train["cpus_per_worker"]},
                placement_strategy=train["placement_strategy"]),
            run_config=RunConfig(name=name or f"finetune-{uuid.uuid4().hex[:8]}",
                                 storage_path=storage_path,
                                 logging_config=LoggingConfig(log_level="WARNING"),
                                 callbacks=callbacks),
        ).fit()

    def relay(metrics: dict[str, Any], checkpoint) -> None:
        if checkpoint is None:
            report(metrics, None)
            return
        with tempfile.TemporaryDirectory() as tmp:  # a local copy, from any storage
            report(metrics, checkpoint.to_directory(tmp))

    with _controller_poll(POLL_INTERVAL_S):  # sub-second epochs: no 2 s wait per report
        relay_reports(fit, relay, "raynas-finetune-train")


def finetune_request(cfg) -> Request:
    """What one fine-tuning trial asks Ray for, to refuse it up front when it can never be
    placed: 1 CPU (or a GPU) where it trains in the trial's process, else its Ray Train
    worker group (``finetune.num_workers`` bundles of ``train.cpus_per_worker`` CPUs, a GPU
    each with ``train.use_gpu``, placed by ``train.placement_strategy``)."""
    from raynas.pipeline.fidelity import standalone_request
    from raynas.training.trainer import train_request

    n = cfg.finetune.num_workers
    if n == 1:
        return standalone_request(cfg, "a fine-tuning trial")
    group = train_request(cfg.model_copy(update={
        "train": cfg.train.model_copy(update={"num_workers": n})}))
    return dataclasses.replace(
        group, what="a fine-tuning trial: " + group.what.replace("train.num_workers",
                                                                 "finetune.num_workers", 1),
        hint=group.hint.replace("train.num_workers", "finetune.num_workers", 1))
