"""``cluttered_digits``: scikit-learn's digits made hard enough to rank subnets.

On the native 8x8 digits every reasonable subnet scores 0.96-0.99, so a search's ranking is
noise. Here each digit is drawn on a ``model.image_size`` canvas (16 or more) the way cluttered
MNIST is: at a random scale and position, among fragments of other digits (clutter), with
part of the canvas sometimes erased (occlusion) and Gaussian pixel noise. A model must find
the digit before reading it, which wants receptive field, resolution and capacity: small
subnets lose points that large ones keep.

The source digits are split first (stratified, seeded), then rendered: the ``copies``
renderings of one source digit, and the fragments drawn into a canvas, always come from the
same split, so no test digit is seen in training. Options (``data.options``):

- ``copies`` (4): renderings per source digit (1,797 sources; 4 copies: 7,188 images);
- ``scale`` ([0.4, 0.65]): the digit's side as a share of the canvas, uniform in the range;
- ``clutter`` (3): fragments of other digits (a quarter of the canvas wide) per image;
- ``occlusion`` (0.5): the chance that a random rectangle of the canvas is erased;
- ``noise`` (0.1): standard deviation of the Gaussian noise added to every pixel.

Images are grey (``in_channels`` 1) or the grey image repeated (3); pixel values ~0..1.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from raynas.errors import ConfigError
from raynas.tasks import DATASETS, DatasetEntry
from raynas.tasks.base import TaskData, TensorDictDataset
from raynas.tasks.classification import split_stratified

MIN_SIZE = 12


def _check(size: int, channels: int, copies, scale, clutter, occlusion, noise) -> tuple:
    if channels not in (1, 3):
        raise ConfigError(f"data.name = 'cluttered_digits': model.in_channels = {channels}; "
                          "allowed: 1 or 3")
    if size < MIN_SIZE:
        raise ConfigError(f"data.name = 'cluttered_digits': model.image_size = {size}; "
                          f"allowed: {MIN_SIZE} or more (the canvas holds a scaled digit)")
    if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
        raise ConfigError(f"data.options.copies = {copies!r}: allowed: an integer >= 1")
    if (not isinstance(scale, (list, tuple)) or len(scale) != 2
            or not all(isinstance(s, (int, float)) for s in scale)
            or not 0 < scale[0] <= scale[1] <= 1):
        raise ConfigError(f"data.options.scale = {scale!r}: allowed: [low, high] with "
                          "0 < low <= high <= 1 (shares of the canvas side)")
    if isinstance(clutter, bool) or not isinstance(clutter, int) or clutter < 0:
        raise ConfigError(f"data.options.clutter = {clutter!r}: allowed: an integer >= 0")
    for name, value in (("occlusion", occlusion), ("noise", noise)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 \
                or (name == "occlusion" and value > 1):
            allowed = "a probability in [0, 1]" if name == "occlusion" else "a number >= 0"
            raise ConfigError(f"data.options.{name} = {value!r}: allowed: {allowed}")
    return float(scale[0]), float(scale[1])


def _paste(canvas: torch.Tensor, rows: np.ndarray, pieces: torch.Tensor, ys: np.ndarray,
           xs: np.ndarray, combine) -> None:
    """Write ``pieces`` (``(len(rows), h, w)``) into ``canvas[rows]`` at ``(ys, xs)``;
    ``combine(old, new)`` gives the pixels (one piece per row: no two writes collide)."""
    h, w = pieces.shape[1:]
    r = torch.as_tensor(rows)[:, None, None]
    y = torch.as_tensor(ys)[:, None, None] + torch.arange(h)[None, :, None]
    x = torch.as_tensor(xs)[:, None, None] + torch.arange(w)[None, None, :]
    canvas[r, y, x] = combine(canvas[r, y, x], pieces)


def render(digits: torch.Tensor, size: int, copies: int, rng: np.random.Generator, *,
           scale: tuple[float, float] = (0.4, 0.65), clutter: int = 3,
           occlusion: float = 0.5, noise: float = 0.1) -> torch.Tensor:
    """``copies`` cluttered renderings of each of ``digits`` (``(n, h, w)``, values 0..1)
    on a ``size`` x ``size`` canvas: ``(n * copies, size, size)``, the copies of digit ``i``
    at rows ``i * copies ...``. Fragments come from ``digits`` too."""
    n = len(digits)
    total = n * copies
    source = np.repeat(np.arange(n), copies)
    lo, hi = max(2, round(scale[0] * size)), max(2, round(scale[1] * size))
    sides = rng.integers(lo, hi + 1, size=total)
    canvas = torch.zeros(total, size, size)
    src = digits.unsqueeze(1).float()
    for side in np.unique(sides):
        rows = np.flatnonzero(sides == side)
        scaled = F.interpolate(src[source[rows]], size=(int(side), int(side)), mode="bilinear",
                               align_corners=False).squeeze(1).clamp(0, 1)
        ys, xs = rng.integers(0, size - side + 1, size=(2, len(rows)))
        _paste(canvas, rows, scaled, ys, xs, lambda old, new: new)
    if clutter and n > 1:
        frag = max(2, size // 4)
        mid = round((lo + hi) / 2)
        pool = F.interpolate(src, size=(mid, mid), mode="bilinear",
                             align_corners=False).squeeze(1).clamp(0, 1)
        rows = np.arange(total)
        span = torch.arange(frag)
        for _ in range(clutter):
            other = rng.integers(0, n - 1, size=total)
            other += other >= source  # never a piece of the image's own digit
            fy, fx, y, x = (rng.integers(0, limit - frag + 1, size=total)
                            for limit in (mid, mid, size, size))
            pieces = pool[torch.as_tensor(other)[:, None, None],
                          torch.as_tensor(fy)[:, None, None] + span[None, :, None],
                          torch.as_tensor(fx)[:, None, None] + span[None, None, :]]
            _paste(canvas, rows, pieces, y, x, torch.maximum)
    if occlusion:
        small, large = max(1, size // 8), max(2, size // 3)
        hit = torch.as_tensor(rng.random(total) < occlusion)
        h, w = (torch.as_tensor(rng.integers(small, large + 1, size=total)) for _ in range(2))
        y = torch.as_tensor(rng.integers(0, size - h.numpy() + 1))
        x = torch.as_tensor(rng.integers(0, size - w.numpy() + 1))
        grid = torch.arange(size)
        inside_y = (grid[None] >= y[:, None]) & (grid[None] < (y + h)[:, None])
        inside_x = (grid[None] >= x[:, None]) & (grid[None] < (x + w)[:, None])
        erased = hit[:, None, None] & inside_y[:, :, None] & inside_x[:, None, :]
        canvas[erased] = 0.0
    if noise:
        g = torch.Generator().manual_seed(int(rng.integers(2**62)))
        canvas += noise * torch.randn(canvas.shape, generator=g)
    return canvas


def load_cluttered_digits(task, path, val_fraction, test_fraction, seed, copies: int = 4,
                          scale: list[float] | tuple[float, float] = (0.4, 0.65),
                          clutter: int = 3, occlusion: float = 0.5,
                          noise: float = 0.1) -> TaskData:
    from sklearn.datasets import load_digits

    channels, size, _ = task.image_shape
    low_high = _check(size, channels, copies, scale, clutter, occlusion, noise)
    bunch = load_digits()
    digits = torch.from_numpy(bunch.images.astype(np.float32) / 16.0)
    labels = bunch.target.astype(np.int64)
    split = split_stratified({"index": torch.arange(len(labels))}, labels, val_fraction,
                             test_fraction, seed)
    rng = np.random.default_rng([seed, 104729])  # the rendering's own stream
    parts = []
    for part in (split.train, split.val, split.test):
        idx = part.tensors["index"]
        images = render(digits[idx], size, copies, rng, scale=low_high, clutter=clutter,
                        occlusion=float(occlusion), noise=float(noise))
        images = images.unsqueeze(1).expand(-1, channels, -1, -1).contiguous()
        ys = torch.from_numpy(labels[idx.numpy()]).repeat_interleave(copies)
        parts.append(TensorDictDataset({"images": images, "labels": ys}))
    return TaskData(*parts)


DATASETS.register("cluttered_digits", DatasetEntry("classification", load_cluttered_digits))
