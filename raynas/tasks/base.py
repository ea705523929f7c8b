"""The task contract: what a model is trained and judged on, independent of its family.

A batch is a mapping of named tensors (``images`` and ``labels``; ``tokens``, ``lengths`` and
``tags``; ...). A task says which of them the model takes (``input_names``, in the order of
the model's ``forward`` arguments), how to compute the training loss, what a teacher hands
its students in in-place distillation, which metrics judge a model (each with a goal), and
which example inputs time and export it. Nothing else in raynas knows about images, tokens
or accuracy.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

Batch = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Metric:
    """A named measure of a model: ``goal`` is ``"max"`` or ``"min"``."""

    name: str
    goal: str
    description: str = ""

    def __post_init__(self):
        if self.goal not in ("max", "min"):
            raise ValueError(f"metric {self.name}: goal must be 'max' or 'min'")


class TensorDictDataset(Dataset):
    """Rows of equally long named tensors. ``__getitems__`` returns a whole batch at once
    (one fancy index per tensor instead of one Python call per sample): use it with
    ``collate_fn=as_batch`` (``make_loader`` does)."""

    batched = True  # __getitems__ returns a stacked batch

    def __init__(self, tensors: Mapping[str, torch.Tensor]):
        sizes = {len(t) for t in tensors.values()}
        if len(sizes) != 1:
            lengths = {k: len(v) for k, v in tensors.items()}
            raise ValueError(f"tensors of different lengths: {lengths}")
        self.tensors = dict(tensors)
        self._n = sizes.pop()

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return {k: v[idx] for k, v in self.tensors.items()}


def as_batch(batch: Any) -> Any:
    """Collate function for ``TensorDictDataset``: its batches arrive already stacked."""
    return batch


@dataclass(frozen=True)
class TaskData:
    """The three splits of a task's data, as datasets of named tensors; ``tokenizer``: the
    one that made the ids, where a task turns ids back into text (translation's BLEU)."""

    train: Dataset
    val: Dataset
    test: Dataset
    tokenizer: Any = None


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                rank: int = 0, world: int = 1, drop_last: bool = False):
    """A ``DataLoader`` over ``dataset``; with ``world > 1`` each rank reads its own shard
    (a ``DistributedSampler``: call ``loader.sampler.set_epoch(e)`` each epoch)."""
    from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

    sampler = None
    if world > 1:
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle,
                                     seed=seed, drop_last=drop_last)
    elif shuffle:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    collate = as_batch if getattr(dataset, "batched", False) else None
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                      collate_fn=collate)


def to_device(batch: Batch, device: torch.device | str) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def sample_batches(dataset: Dataset, n_batches: int, batch_size: int, seed: int = 0
                   ) -> list[dict[str, torch.Tensor]]:
    """``n_batches`` batches of a seeded random sample of ``dataset`` (BN recalibration:
    a file sorted by label must not calibrate on its first classes)."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset), generator=g)[: n_batches * batch_size].tolist()
    loader = make_loader(_Subset(dataset, order), batch_size)
    return list(loader)


class _Subset(Dataset):
    def __init__(self, dataset: Dataset, indices: list[int]):
        self.dataset, self.indices = dataset, indices
        self.batched = getattr(dataset, "batched", False)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.dataset[self.indices[i]]

    def __getitems__(self, indices: list[int]):
        picked = [self.indices[i] for i in indices]
        if hasattr(self.dataset, "__getitems__"):
            return self.dataset.__getitems__(picked)
        return [self.dataset[i] for i in picked]


def token_sums(out: torch.Tensor, targets: torch.Tensor, accuracy: str, per_sample: bool = False
               ) -> dict[str, tuple[Any, Any]]:
    """``accuracy`` (argmax right) and ``loss`` (cross-entropy) sums over the positions of
    per-position logits ``out`` (n, t, classes) whose target is not -100, with their count:
    for the whole batch as floats, or ``per_sample`` as float64 tensors of length n (the
    tasks that predict per token share this)."""
    valid = targets != -100
    right = (out.argmax(-1) == targets) & valid
    if not per_sample:
        n = float(valid.sum())
        ce = F.cross_entropy(out.float().flatten(0, 1), targets.flatten(), ignore_index=-100,
                             reduction="sum")
        return {accuracy: (float(right.sum()), n), "loss": (float(ce), n)}
    n = valid.sum(1).double().cpu()
    ce = F.cross_entropy(out.float().transpose(1, 2), targets, ignore_index=-100,
                         reduction="none").sum(1).double().cpu()
    return {accuracy: (right.sum(1).double().cpu(), n), "loss": (ce, n)}


class Task(ABC):
    """What models are trained and judged on.

    Subclasses set ``name``, ``input_names`` (the model's ``forward`` arguments, in order),
    ``output_name`` and ``metrics`` (the first is the primary one: the default search
    objective and what ``export.pick: best`` maximises or minimises). A task instance is
    built from the space's ``model`` settings (shapes, vocabulary) and the task options.
    """

    name: str = ""
    input_names: tuple[str, ...] = ()
    output_name: str = "logits"
    metrics: tuple[Metric, ...] = ()

    def __init__(self, model: Mapping[str, Any]):
        self.model = dict(model)

    # ---- training ----------------------------------------------------------------------
    def inputs(self, batch: Batch) -> tuple[torch.Tensor, ...]:
        """The model's positional inputs from a batch."""
        return tuple(batch[k] for k in self.input_names)

    @abstractmethod
    def loss(self, out: torch.Tensor, batch: Batch, label_smoothing: float = 0.0
             ) -> torch.Tensor:
        """The training loss of a model output against the batch's targets (a scalar)."""

    def distill_target(self, teacher_out: torch.Tensor) -> torch.Tensor:
        """What the teacher hands its students: class probabilities over the last dim
        (per sample, per token or per frame), detached."""
        return F.softmax(teacher_out.detach().float(), dim=-1)

    def distill_mask(self, batch: Batch) -> torch.Tensor | None:
        """Which positions of the output count in distillation (padding does not); None:
        all of them."""
        return None

    # ---- judging -----------------------------------------------------------------------
    @abstractmethod
    def metric_sums(self, out: torch.Tensor, batch: Batch) -> dict[str, tuple[float, float]]:
        """Per metric, ``(sum, count)`` over one batch: metrics average over all batches."""

    def sample_sums(self, out: torch.Tensor, batch: Batch
                    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``metric_sums`` per sample of a batch, as ``(sums, counts)`` tensors of its length
        (search halving's error estimate). This default slices the output and the batch on
        their first axis and calls ``metric_sums`` per sample; tasks override it with one
        vectorised pass (a task whose output is not batch-first must)."""
        rows = [self.metric_sums(out[i:i + 1], {k: v[i:i + 1] for k, v in batch.items()})
                for i in range(len(out))]
        return {k: (torch.tensor([r[k][0] for r in rows], dtype=torch.float64),
                    torch.tensor([r[k][1] for r in rows], dtype=torch.float64))
                for k in (rows[0] if rows else {})}

    def derived(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """Measures computed from the averaged metrics that are no average themselves
        (perplexity, ``exp`` of a mean loss): ``evaluate`` adds them to its result. They are
        not in ``metrics``, so search halving, which estimates ratios of sums, never sees
        them. Default: none."""
        return {}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[Batch],
                 device: torch.device | str = "cpu", full: bool = True) -> dict[str, float]:
        """Every metric of ``model`` over ``batches`` (the model is put in eval mode), and
        with ``full`` the task's ``derived`` measures and any it computes besides (a
        translation's BLEU decodes every source: training's per-epoch check skips it)."""
        model.eval()
        sums: dict[str, list[float]] = {}
        for batch in batches:
            batch = to_device(batch, device)
            for k, (s, n) in self.metric_sums(model(*self.inputs(batch)), batch).items():
                acc = sums.setdefault(k, [0.0, 0.0])
                acc[0] += s
                acc[1] += n
        means = {k: s / max(n, 1e-12) for k, (s, n) in sums.items()}
        return {**means, **self.derived(means)} if full else means

    def metric(self, name: str) -> Metric:
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(name)

    @property
    def primary(self) -> Metric:
        return self.metrics[0]

    # ---- timing and export -------------------------------------------------------------
    @abstractmethod
    def example_inputs(self, batch_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
        """Random (not zero) inputs of the model at the task's stated shape, for latency
        timing and export checks."""

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """Per input, the axes whose size varies (batch, and time where lengths vary)."""
        return {k: {0: "batch"} for k in self.input_names}

    def shape_key(self, batch_size: int) -> str:
        """The example inputs' shapes as text (a latency's key includes it)."""
        ex = self.example_inputs(batch_size)
        return ";".join(f"{k}={'x'.join(map(str, ex[k].shape))}" for k in self.input_names)

    # ---- data --------------------------------------------------------------------------
    @abstractmethod
    def check_data(self, data: TaskData) -> None:
        """Raise ``ConfigError`` if the data does not fit the model settings."""


class TokenTargetTask(Task):
    """A task whose batches carry ``targets``, one id per output position and ``-100`` where
    nothing is predicted (masked-LM, translation): cross-entropy per predicted token, the
    share ranked first (named ``accuracy``), and ``perplexity`` derived from the loss."""

    accuracy: str = "token_accuracy"

    def loss(self, out, batch, label_smoothing: float = 0.0):
        # The mean over predicted positions, written as sum / count: a batch without any
        # (possible with few short blocks) gives 0, not NaN.
        targets = batch["targets"]
        total = F.cross_entropy(out.flatten(0, 1), targets.flatten(), ignore_index=-100,
                                label_smoothing=label_smoothing, reduction="sum")
        return total / (targets != -100).sum().clamp(min=1)

    def distill_mask(self, batch):
        return batch["targets"] != -100

    def metric_sums(self, out, batch):
        return token_sums(out, batch["targets"], self.accuracy)

    def sample_sums(self, out, batch):
        return token_sums(out, batch["targets"], self.accuracy, per_sample=True)

    def derived(self, metrics):
        if "loss" not in metrics:
            return {}
        loss = metrics["loss"]
        return {"perplexity": math.exp(loss) if loss < 700 else math.inf}
