"""Standalone training: one subnet's static model, freshly initialised, trained from scratch
on the labels with the job's training recipe; and the cache of its results.

The recipe is the supernet's (``train``: epochs or ``fidelity.epochs``, batch size per
worker, optimizer, learning rate, weight decay, learning-rate schedule, label smoothing,
gradient clipping), run by the same ``train_epoch`` on one worker, with no distillation: the
subnet is the only model. Pure torch: Ray Tune runs ``train_standalone`` as a trial (see
``raynas.search.trials``), and a test may call it directly.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raynas.space import Arch, SearchSpace

# Bump when train_standalone changes what it computes: older cache entries stop matching.
RECIPE = 1

# The train settings a standalone result depends on (not workers, sampler or distillation).
TRAIN_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "optimizer", "warmup_epochs",
              "label_smoothing", "grad_clip", "schedule")
# Keys added after results were cached: left out of the settings at their default, so the
# cache keys of jobs that do not set them stay as they were.
_LATER_DEFAULTS = {"schedule": {"name": "warmup_cosine", "options": {}}}


def standalone_settings(cfg, space: SearchSpace) -> dict[str, Any]:
    """What a job's standalone results depend on besides the arch, as plain values (they
    travel to the Tune trials, and all but ``space`` make the cache key). The device type and
    torch's version are among them: the same recipe gives other numbers on a GPU or another
    torch release, so a cached CPU result does not stand in for a GPU one."""
    from raynas.config import resolve_path

    data = cfg.data.model_dump(mode="json")
    if data.get("path"):  # absolute: the trials may run in another directory
        data["path"] = str(resolve_path(cfg, data["path"]).resolve())
    train = {k: v for k, v in cfg.train.model_dump(mode="json").items() if k in TRAIN_KEYS
             and not (k in _LATER_DEFAULTS and v == _LATER_DEFAULTS[k])}
    train["epochs"] = cfg.fidelity.epochs or cfg.train.epochs
    return {
        "recipe": RECIPE,
        "space_fingerprint": space.fingerprint,
        "task": cfg.task.model_dump(mode="json") if cfg.task else None,
        "train": train,
        "data": data,
        "seed": cfg.seed,
        "device": "cuda" if cfg.train.use_gpu else "cpu",
        "torch": torch.__version__.split("+")[0],
        "space": space.to_dict(),
    }


def cache_key(arch: Arch, settings: Mapping[str, Any]) -> str:
    """The cache key of ``arch`` trained under ``settings``: a hash of the arch key and
    every setting but the space's text (its fingerprint stands for it)."""
    doc = {"arch": arch.key, **{k: v for k, v in settings.items() if k != "space"}}
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:24]


class StandaloneCache:
    """Standalone results as small JSON files, ``<directory>/<cache key>.json``: the result
    with the arch and settings it came from (readable, and safe to delete)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached result of ``key``, or None (absent or unreadable: trained again)."""
        try:
            return json.loads(self.path(key).read_text())["result"]
        except (OSError, ValueError, KeyError):
            return None

    def put(self, key: str, arch: Arch, settings: Mapping[str, Any],
            result: Mapping[str, Any]) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        doc = {"key": key, "arch_key": arch.key, "arch": arch.to_dict(),
               "settings": {k: v for k, v in settings.items() if k != "space"},
               "result": dict(result), "created_at": time.time()}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(doc, indent=1, default=str))
        os.replace(tmp, path)  # a reader never sees half a file
        return path


class _FixedArch(nn.Module):
    """A static model seen as a supernet set to its own arch, so that ``train_epoch`` (which
    sets the arch of each step's subnets) trains it unchanged."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def set_arch(self, arch: Arch) -> None:
        """Nothing to set: the model is that arch."""

    def forward(self, *inputs):
        return self.model(*inputs)


def train_standalone(arch: Mapping[str, Any], settings: Mapping[str, Any],
                     threads: int | None = None) -> dict[str, Any]:
    """Train ``arch`` from scratch under ``settings`` (``standalone_settings``) on their
    ``device`` with ``threads`` torch threads (None: torch's default); return its task
    metrics on the validation split (under their names) and the test split
    (``test_<name>``), the final epoch's training ``loss_train``, ``epochs`` and
    ``train_s``."""
    from raynas.config import TrainConfig
    from raynas.supernets import build_static
    from raynas.tasks import build_task, load_task_data, make_loader
    from raynas.training.loop import train_epoch
    from raynas.training.losses import NoDistiller
    from raynas.training.optim import build_optimizer
    from raynas.training.samplers import FixedArchSampler

    t0 = time.perf_counter()
    device = settings.get("device", "cpu")
    if threads:
        torch.set_num_threads(threads)
    space = SearchSpace.from_dict(settings["space"])
    arch = space.validate(arch)
    task = build_task(space, settings["task"])
    data = load_task_data(task, settings["data"])
    cfg = TrainConfig(**settings["train"])
    seed = int(settings["seed"])
    torch.manual_seed(seed)  # the same fresh initialisation on every rerun
    model = build_static(space, arch).to(device)
    net = _FixedArch(model)
    optimizer = build_optimizer(net, cfg)
    loader = make_loader(data.train, cfg.batch_size, shuffle=True, seed=seed,
                         drop_last=len(data.train) >= cfg.batch_size)
    steps = max(1, len(loader))
    sampler = FixedArchSampler(space, arch)
    net.train()
    losses: dict[str, float] = {}
    for epoch in range(cfg.epochs):
        losses = train_epoch(net, task, loader, optimizer, sampler, NoDistiller(), cfg, epoch,
                             steps, device=device)
    batch = int(settings["data"].get("batch_size", 256))
    val = task.evaluate(model, make_loader(data.val, batch), device)
    test = task.evaluate(model, make_loader(data.test, batch), device)
    return {**val, **{f"test_{k}": v for k, v in test.items()},
            "loss_train": losses.get("loss_first", float("nan")), "epochs": cfg.epochs,
            "train_s": time.perf_counter() - t0}
