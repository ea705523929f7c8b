"""``cluttered_digits``: seeded, split before rendering, and really harder than 8x8 digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raynas.errors import ConfigError
from raynas.tasks import load_task_data
from raynas.tasks.classification import Classification
from raynas.tasks.cluttered import render


def _task(size: int = 16, channels: int = 1) -> Classification:
    return Classification({"in_channels": channels, "image_size": size, "num_classes": 10})


def _load(task=None, **options):
    return load_task_data(task or _task(), {"name": "cluttered_digits", "options": options,
                                            "val_fraction": 0.2, "test_fraction": 0.2})


def _nearest_centroid_accuracy(train, test) -> float:
    """A fixed, training-free baseline: the class whose mean training image is closest."""
    x, y = train.tensors["images"].flatten(1), train.tensors["labels"]
    centroids = torch.stack([x[y == c].mean(0) for c in range(10)])
    xt = test.tensors["images"].flatten(1)
    guess = torch.cdist(xt, centroids).argmin(1)
    return float((guess == test.tensors["labels"]).float().mean())


def test_same_seed_same_images_other_seed_other_images():
    a, b = _load(copies=1), _load(copies=1)
    assert torch.equal(a.train.tensors["images"], b.train.tensors["images"])
    other = load_task_data(_task(), {"name": "cluttered_digits", "options": {"copies": 1},
                                     "val_fraction": 0.2, "test_fraction": 0.2, "seed": 1})
    assert not torch.equal(a.test.tensors["images"], other.test.tensors["images"])


def test_copies_of_one_source_stay_in_one_split_and_differ():
    data = _load(copies=3)
    sizes = [len(d) for d in (data.train, data.val, data.test)]
    assert sum(sizes) == 1797 * 3 and all(s % 3 == 0 for s in sizes)
    y = data.test.tensors["labels"].view(-1, 3)
    assert torch.equal(y, y[:, :1].expand(-1, 3))  # rows 3i..3i+2 render one source digit
    imgs = data.test.tensors["images"].view(-1, 3, 16 * 16)
    assert (imgs[:, 0] - imgs[:, 1]).abs().amax(1).min() > 0.1  # new place, clutter, noise


def test_the_digit_moves_and_scales_within_the_canvas():
    digit = torch.zeros(1, 8, 8)
    digit[0, 2:6, 2:6] = 1.0
    imgs = render(digit, 16, 200, np.random.default_rng(0), clutter=0, occlusion=0.0,
                  noise=0.0)
    rows, cols = torch.arange(16.0).view(16, 1), torch.arange(16.0).view(1, 16)
    mass = imgs.sum((1, 2))
    cy, cx = (imgs * rows).sum((1, 2)) / mass, (imgs * cols).sum((1, 2)) / mass
    assert float(cy.max() - cy.min()) > 4 and float(cx.max() - cx.min()) > 4
    assert float(mass.max() / mass.min()) > 1.5  # the scale varies too
    assert float(imgs.max()) <= 1.0 and float(imgs.min()) >= 0.0


def test_harder_than_the_plain_digits_for_a_fixed_baseline():
    # Nearest centroid reads plain 8x8 digits well (~0.9). On cluttered digits, where the
    # digit moves, it falls to near chance (0.1): a model has to find the digit first, which
    # is what leaves room for subnets to differ (the tiny jobs' nets reach ~0.75).
    plain = load_task_data(_task(8), {"name": "digits", "val_fraction": 0.2,
                                      "test_fraction": 0.2})
    hard = _load(copies=2)
    assert _nearest_centroid_accuracy(plain.train, plain.test) > 0.85
    assert _nearest_centroid_accuracy(hard.train, hard.test) < 0.3


def test_three_channels_repeat_the_grey_image():
    data = _load(_task(16, 3), copies=1)
    x = data.val.tensors["images"]
    assert x.shape[1:] == (3, 16, 16)
    assert torch.equal(x[:, 0], x[:, 2])


@pytest.mark.parametrize("options, field", [
    ({"copies": 0}, "copies"), ({"scale": [0.9, 0.5]}, "scale"), ({"scale": 0.5}, "scale"),
    ({"clutter": -1}, "clutter"), ({"occlusion": 1.5}, "occlusion"), ({"noise": "x"}, "noise"),
])
def test_bad_options_name_the_field(options, field):
    with pytest.raises(ConfigError, match=f"data.options.{field} = "):
        _load(**options)


def test_a_canvas_too_small_is_refused():
    with pytest.raises(ConfigError, match="model.image_size = 8.*12 or more"):
        _load(_task(8))
