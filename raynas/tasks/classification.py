"""``classification``: images in, one class out. Metrics: ``accuracy`` (max), ``loss`` (min).

Batches: ``images`` (float32, ``(n, in_channels, image_size, image_size)``) and ``labels``
(int64, ``(n,)``). Model settings read: ``in_channels``, ``image_size``, ``num_classes``.

Datasets:
- ``digits``: scikit-learn's 8x8 handwritten digits (shipped with scikit-learn).
- ``parquet``: a Parquet file with one integer label column (``options.label_column``,
  default ``label``) and numeric feature columns, one per pixel: ``in_channels`` square
  channels, row-major (64 features -> one 8x8 channel).
- ``image_folder``: ``path/<class name>/<image>`` (PNG, JPEG, ...), classes in sorted order;
  images are converted to grey (1 channel) or RGB (3) and resized to ``image_size``.

Splits are stratified and seeded: every class keeps its share in every split. Images of
another size are resized (bilinear) once, at load time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from raynas.errors import ConfigError
from raynas.tasks import DATASETS, TASKS, DatasetEntry
from raynas.tasks.base import Metric, Task, TaskData, TensorDictDataset

_MODEL_KEYS = ("in_channels", "image_size", "num_classes")


@TASKS.register("classification")
class Classification(Task):
    name = "classification"
    input_names = ("images",)
    metrics = (Metric("accuracy", "max", "share of samples whose top class is right"),
               Metric("loss", "min", "cross-entropy"))

    def __init__(self, model):
        super().__init__(model)
        missing = [k for k in _MODEL_KEYS if k not in self.model]
        if missing:
            raise ConfigError(f"task 'classification' needs model.{missing[0]} in the space")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        m = self.model
        return (m["in_channels"], m["image_size"], m["image_size"])

    def loss(self, out, batch, label_smoothing: float = 0.0):
        return F.cross_entropy(out, batch["labels"], label_smoothing=label_smoothing)

    def metric_sums(self, out, batch):
        y = batch["labels"]
        n = float(len(y))
        return {"accuracy": (float((out.argmax(-1) == y).sum()), n),
                "loss": (float(F.cross_entropy(out.float(), y, reduction="sum")), n)}

    def sample_sums(self, out, batch):
        y = batch["labels"]
        ones = torch.ones(len(y), dtype=torch.float64)
        right = (out.argmax(-1) == y).double().cpu()
        ce = F.cross_entropy(out.float(), y, reduction="none").double().cpu()
        return {"accuracy": (right, ones), "loss": (ce, ones)}

    def example_inputs(self, batch_size: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        return {"images": torch.randn(batch_size, *self.image_shape, generator=g)}

    def check_data(self, data: TaskData) -> None:
        labels = torch.cat([d.tensors["labels"] for d in (data.train, data.val, data.test)])
        top = int(labels.max())
        if top >= self.model["num_classes"] or int(labels.min()) < 0:
            raise ConfigError(f"data: labels span 0..{top} but the space's model.num_classes "
                              f"is {self.model['num_classes']}")


def split_stratified(tensors: dict[str, torch.Tensor], labels: np.ndarray, val_fraction: float,
                     test_fraction: float, seed: int) -> TaskData:
    """Seeded split in which every class keeps its share in every part."""
    g = np.random.default_rng(seed)
    parts: list[list[int]] = [[], [], []]
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        g.shuffle(idx)
        n_test = int(round(len(idx) * test_fraction))
        n_val = int(round(len(idx) * val_fraction))
        parts[2].extend(idx[:n_test])
        parts[1].extend(idx[n_test:n_test + n_val])
        parts[0].extend(idx[n_test + n_val:])
    sets = []
    for p in parts:
        i = torch.from_numpy(np.sort(np.array(p, dtype=np.int64)))
        sets.append(TensorDictDataset({k: v[i] for k, v in tensors.items()}))
    return TaskData(*sets)


def _images(task: Classification, x: np.ndarray, y: np.ndarray, source: str, val_fraction,
            test_fraction, seed) -> TaskData:
    images = to_image_shape(torch.from_numpy(x.astype(np.float32)), task.image_shape, source)
    return split_stratified({"images": images, "labels": torch.from_numpy(y.astype(np.int64))},
                            y, val_fraction, test_fraction, seed)


def load_digits(task, path, val_fraction, test_fraction, seed) -> TaskData:
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    return _images(task, bunch.images / 16.0, bunch.target, "digits", val_fraction,
                   test_fraction, seed)


def read_parquet(path: Path, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    """Features (float32, one row per sample) and integer labels from a Parquet file."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if label_column not in table.column_names:
        raise ConfigError(f"data.options.label_column = {label_column!r}: not a column of "
                          f"{path}; columns: {', '.join(table.column_names[:20])}")
    y = table.column(label_column).to_numpy().astype(np.int64)
    features = [c for c in table.column_names if c != label_column]
    if not features:
        raise ConfigError(f"data.path = {str(path)!r}: no feature columns besides the label")
    x = np.stack([table.column(c).to_numpy().astype(np.float32) for c in features], axis=1)
    return x, y


def load_parquet(task, path, val_fraction, test_fraction, seed,
                 label_column: str = "label") -> TaskData:
    x, y = read_parquet(Path(path), label_column)
    return _images(task, x, y, str(path), val_fraction, test_fraction, seed)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def load_image_folder(task, path, val_fraction, test_fraction, seed) -> TaskData:
    from PIL import Image

    root = Path(path)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise ConfigError(f"data.path = {str(root)!r}: no class folders (expected "
                          "<path>/<class name>/<image files>)")
    channels, size = task.image_shape[0], task.image_shape[1]
    if channels not in (1, 3):
        raise ConfigError(f"data.name = 'image_folder': model.in_channels must be 1 or 3, "
                          f"not {channels}")
    mode = "L" if channels == 1 else "RGB"
    xs, ys = [], []
    for label, name in enumerate(classes):
        for f in sorted((root / name).iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(f) as im:
                    im = im.convert(mode).resize((size, size), Image.BILINEAR)
                    a = np.asarray(im, dtype=np.float32) / 255.0
            except OSError as exc:
                raise ConfigError(f"data.path: {f} cannot be read as an image ({exc})") \
                    from None
            xs.append(a[None] if channels == 1 else a.transpose(2, 0, 1))
            ys.append(label)
    if not xs:
        raise ConfigError(f"data.path = {str(root)!r}: no image files in its class folders "
                          f"({', '.join(IMAGE_SUFFIXES)})")
    return _images(task, np.stack(xs), np.array(ys), str(root), val_fraction, test_fraction,
                   seed)


def to_image_shape(x: torch.Tensor, shape: tuple[int, int, int], source: str) -> torch.Tensor:
    """Rows of features, or images, as ``(n, *shape)`` (resized once if the size differs)."""
    n = x.shape[0]
    if x.dim() == 2:
        channels, side = shape[0], int(round((x.shape[1] / shape[0]) ** 0.5))
        if channels * side * side != x.shape[1]:
            raise ConfigError(f"data {source!r}: {x.shape[1]} features cannot form "
                              f"{channels} square image channel(s)")
        x = x.reshape(n, channels, side, side)
    elif x.dim() == 3:
        x = x.unsqueeze(1)
    if x.shape[1:] != shape:
        if x.shape[1] != shape[0]:
            raise ConfigError(f"data {source!r}: has {x.shape[1]} channels, model wants "
                              f"{shape[0]}")
        x = F.interpolate(x, size=shape[1:], mode="bilinear", align_corners=False)
    return x.contiguous()


DATASETS.register("digits", DatasetEntry("classification", load_digits))
DATASETS.register("parquet", DatasetEntry("classification", load_parquet, needs_path=True))
DATASETS.register("image_folder", DatasetEntry("classification", load_image_folder,
                                               needs_path=True))
