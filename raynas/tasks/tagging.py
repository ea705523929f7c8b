"""``tagging``: a token sequence in, one class per token out (sequences of varying length).

Batches: ``tokens`` (int64, ``(n, max_len)``, padded with 0), ``lengths`` (int64, ``(n,)``)
and ``tags`` (int64, ``(n, max_len)``, ``-100`` at padding). The model takes ``tokens`` and
``lengths`` and returns logits ``(n, max_len, num_classes)``; padding counts in no loss and no
metric. Model settings read: ``vocab_size``, ``num_classes``, ``max_len``.
Metrics: ``token_accuracy`` (max), ``loss`` (min, per-token cross-entropy).

Datasets:
- ``generated_tagging``: a generated task with real structure. Tokens follow a random walk
  over ``1..vocab_size-1`` (steps of -2..2), and a token's tag says whether it is a strict
  local peak (``2``), rises above one neighbour only (``1``) or neither (``0``): a model must
  see one token either side to tag it. Lengths are uniform in ``[min_len, max_len]``.
- ``parquet_tagging``: a Parquet file with list<int> columns ``tokens`` and ``tags`` of equal
  length per row (``options.tokens_column``, ``options.tags_column``); rows longer than
  ``max_len`` are an error, token ids must be below ``vocab_size`` (0 is padding).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from raynas.errors import ConfigError
from raynas.tasks import DATASETS, TASKS, DatasetEntry
from raynas.tasks.base import Metric, Task, TaskData, TensorDictDataset, token_sums

IGNORE = -100
_MODEL_KEYS = ("vocab_size", "num_classes", "max_len")


@TASKS.register("tagging")
class Tagging(Task):
    name = "tagging"
    input_names = ("tokens", "lengths")
    metrics = (Metric("token_accuracy", "max", "share of (non-padding) tokens tagged right"),
               Metric("loss", "min", "per-token cross-entropy"))

    def __init__(self, model):
        super().__init__(model)
        missing = [k for k in _MODEL_KEYS if k not in self.model]
        if missing:
            raise ConfigError(f"task 'tagging' needs model.{missing[0]} in the space")

    def loss(self, out, batch, label_smoothing: float = 0.0):
        return F.cross_entropy(out.flatten(0, 1), batch["tags"].flatten(),
                               ignore_index=IGNORE, label_smoothing=label_smoothing)

    def distill_mask(self, batch):
        return batch["tags"] != IGNORE

    def metric_sums(self, out, batch):
        return token_sums(out, batch["tags"], "token_accuracy")

    def sample_sums(self, out, batch):
        return token_sums(out, batch["tags"], "token_accuracy", per_sample=True)

    def example_inputs(self, batch_size: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        t = self.model["max_len"]
        tokens = torch.randint(1, self.model["vocab_size"], (batch_size, t), generator=g)
        return {"tokens": tokens, "lengths": torch.full((batch_size,), t, dtype=torch.long)}

    def dynamic_axes(self):
        return {"tokens": {0: "batch", 1: "time"}, "lengths": {0: "batch"}}

    def check_data(self, data: TaskData) -> None:
        for split in (data.train, data.val, data.test):
            tokens, tags = split.tensors["tokens"], split.tensors["tags"]
            if tokens.shape[1] != self.model["max_len"]:
                raise ConfigError(f"data: sequences padded to {tokens.shape[1]}, the space's "
                                  f"model.max_len is {self.model['max_len']}")
            if int(tokens.max()) >= self.model["vocab_size"]:
                raise ConfigError(f"data: token id {int(tokens.max())} >= the space's "
                                  f"model.vocab_size {self.model['vocab_size']}")
            if int(tags.max()) >= self.model["num_classes"]:
                raise ConfigError(f"data: tag {int(tags.max())} >= the space's "
                                  f"model.num_classes {self.model['num_classes']}")


def peak_tags(seq: np.ndarray) -> np.ndarray:
    """2 where a token is above both neighbours, 1 where above one, 0 otherwise (the ends
    compare with a 0 outside the sequence)."""
    padded = np.concatenate([[0], seq, [0]])
    left = (padded[1:-1] > padded[:-2]).astype(np.int64)
    right = (padded[1:-1] > padded[2:]).astype(np.int64)
    return left + right


def _pack(seqs: list[np.ndarray], tags: list[np.ndarray], max_len: int) -> dict:
    n = len(seqs)
    tokens = torch.zeros(n, max_len, dtype=torch.long)
    out_tags = torch.full((n, max_len), IGNORE, dtype=torch.long)
    lengths = torch.zeros(n, dtype=torch.long)
    for i, (s, t) in enumerate(zip(seqs, tags)):
        tokens[i, :len(s)] = torch.from_numpy(np.asarray(s, dtype=np.int64))
        out_tags[i, :len(t)] = torch.from_numpy(np.asarray(t, dtype=np.int64))
        lengths[i] = len(s)
    return {"tokens": tokens, "lengths": lengths, "tags": out_tags}


def _split(tensors: dict, val_fraction: float, test_fraction: float, seed: int) -> TaskData:
    n = len(tensors["tokens"])
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test, n_val = int(round(n * test_fraction)), int(round(n * val_fraction))
    cuts = (order[n_test + n_val:], order[n_test:n_test + n_val], order[:n_test])
    return TaskData(*(TensorDictDataset({k: v[i.sort().values] for k, v in tensors.items()})
                      for i in cuts))


def load_generated(task, path, val_fraction, test_fraction, seed, n: int = 2000,
                   min_len: int = 4) -> TaskData:
    vocab, max_len = task.model["vocab_size"], task.model["max_len"]
    if not 1 <= min_len <= max_len:
        raise ConfigError(f"data.options.min_len = {min_len}: must be in 1..{max_len} "
                          "(model.max_len)")
    if vocab < 3:
        raise ConfigError(f"model.vocab_size = {vocab}: generated_tagging needs at least 3")
    rng = np.random.default_rng(seed + 7919)  # the data's own stream, apart from the split's
    seqs, tags = [], []
    for _ in range(n):
        length = int(rng.integers(min_len, max_len + 1))
        steps = rng.integers(-2, 3, size=length)
        walk = np.clip(int(rng.integers(1, vocab)) + np.cumsum(steps), 1, vocab - 1)
        seqs.append(walk)
        tags.append(peak_tags(walk))
    return _split(_pack(seqs, tags, max_len), val_fraction, test_fraction, seed)


def load_parquet_tagging(task, path, val_fraction, test_fraction, seed,
                         tokens_column: str = "tokens", tags_column: str = "tags") -> TaskData:
    import pyarrow.parquet as pq

    table = pq.read_table(Path(path))
    for col, key in ((tokens_column, "tokens_column"), (tags_column, "tags_column")):
        if col not in table.column_names:
            raise ConfigError(f"data.options.{key} = {col!r}: not a column of {path}; "
                              f"columns: {', '.join(table.column_names[:20])}")
    seqs = table.column(tokens_column).to_pylist()
    tags = table.column(tags_column).to_pylist()
    max_len = task.model["max_len"]
    for i, (s, t) in enumerate(zip(seqs, tags)):
        if s is None or t is None or len(s) != len(t) or not 1 <= len(s) <= max_len:
            raise ConfigError(f"data.path = {str(path)!r}: row {i} has {len(s or [])} tokens "
                              f"and {len(t or [])} tags; each row needs 1..{max_len} "
                              "(model.max_len) of each, equally many")
    return _split(_pack(seqs, tags, max_len), val_fraction, test_fraction, seed)


DATASETS.register("generated_tagging", DatasetEntry("tagging", load_generated))
DATASETS.register("parquet_tagging", DatasetEntry("tagging", load_parquet_tagging,
                                                  needs_path=True))
