"""Datasets: tensors in memory, split into train / validation / test.

``digits``: scikit-learn's 8x8 handwritten digits (shipped with scikit-learn, no download).
``parquet``: a local Parquet file with one label column and numeric feature columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from raynas.errors import ConfigError


@dataclass(frozen=True)
class Splits:
    """Input tensors ``(n, *input_shape)`` float32 and integer labels ``(n,)`` per split."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def num_classes(self) -> int:
        return int(torch.cat([self.y_train, self.y_val, self.y_test]).max()) + 1


def load_data(cfg, input_shape: tuple[int, ...]) -> Splits:
    """Build the splits described by a ``DataConfig`` for a model taking ``input_shape``."""
    if cfg.name == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = bunch.images.astype(np.float32) / 16.0
        y = bunch.target.astype(np.int64)
    elif cfg.name == "parquet":
        x, y = read_parquet(Path(cfg.path), cfg.label_column)
    else:  # the config model rejects other names first
        raise ConfigError(f"data.name = {cfg.name!r}: unknown dataset")
    x = _to_shape(torch.from_numpy(x), input_shape, cfg.name)
    return _split(x, torch.from_numpy(y), cfg.val_fraction, cfg.test_fraction, cfg.seed)


def read_parquet(path: Path, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    """Features (float32, one row per sample) and integer labels from a Parquet file."""
    import pyarrow.parquet as pq

    if not path.is_file():
        raise ConfigError(f"data.path = {str(path)!r}: file does not exist")
    table = pq.read_table(path)
    if label_column not in table.column_names:
        raise ConfigError(f"data.label_column = {label_column!r}: not a column of {path}; "
                          f"columns: {', '.join(table.column_names[:20])}")
    y = table.column(label_column).to_numpy().astype(np.int64)
    features = [c for c in table.column_names if c != label_column]
    if not features:
        raise ConfigError(f"data.path = {str(path)!r}: no feature columns besides the label")
    x = np.stack([table.column(c).to_numpy().astype(np.float32) for c in features], axis=1)
    return x, y


def _to_shape(x: torch.Tensor, shape: tuple[int, ...], source: str) -> torch.Tensor:
    n = x.shape[0]
    if len(shape) == 3 and x.dim() == 2:
        channels, side = shape[0], int(round((x.shape[1] / shape[0]) ** 0.5))
        if channels * side * side != x.shape[1]:
            raise ConfigError(f"data {source!r}: {x.shape[1]} features cannot form "
                              f"{channels} square image channel(s)")
        x = x.reshape(n, channels, side, side)
    elif len(shape) == 3 and x.dim() == 3:
        x = x.unsqueeze(1)
    if len(shape) == 3 and x.shape[1:] != shape:
        if x.shape[1] != shape[0]:
            raise ConfigError(f"data {source!r}: has {x.shape[1]} channels, model wants "
                              f"{shape[0]}")
        # Upsample small images once (bilinear) instead of on every batch.
        x = F.interpolate(x, size=shape[1:], mode="bilinear", align_corners=False)
    return x.contiguous()


def _split(x, y, val_fraction: float, test_fraction: float, seed: int) -> Splits:
    # Stratified, seeded split: every class keeps its share in every split.
    g = np.random.default_rng(seed)
    train_idx, val_idx, test_idx = [], [], []
    for c in np.unique(y.numpy()):
        idx = np.flatnonzero(y.numpy() == c)
        g.shuffle(idx)
        n_test = int(round(len(idx) * test_fraction))
        n_val = int(round(len(idx) * val_fraction))
        test_idx.extend(idx[:n_test])
        val_idx.extend(idx[n_test:n_test + n_val])
        train_idx.extend(idx[n_test + n_val:])
    parts = [np.sort(np.array(i, dtype=np.int64)) for i in (train_idx, val_idx, test_idx)]
    return Splits(*(t for i in parts for t in (x[i], y[i])))
