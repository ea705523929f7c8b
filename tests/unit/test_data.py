"""Classification datasets (raynas.tasks.classification): digits, Parquet and image-folder
loading, stratified seeded splits."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from raynas.config import DataConfig
from raynas.errors import ConfigError
from raynas.tasks import TASKS, load_task_data
from raynas.tasks.classification import read_parquet


class Splits:
    """The three splits as tensors, for assertions."""

    def __init__(self, data):
        for part in ("train", "val", "test"):
            tensors = getattr(data, part).tensors
            setattr(self, f"x_{part}", tensors["images"])
            setattr(self, f"y_{part}", tensors["labels"])
        self.num_classes = int(torch.cat([self.y_train, self.y_val, self.y_test]).max()) + 1


def load_data(cfg: DataConfig, shape: tuple[int, int, int], num_classes: int = 10) -> Splits:
    task = TASKS.create("classification", model={"in_channels": shape[0],
                                                 "image_size": shape[1],
                                                 "num_classes": num_classes})
    return Splits(load_task_data(task, cfg.model_dump()))


DIGITS_PER_CLASS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]  # sklearn's digits


@pytest.fixture(scope="module")
def digits():
    return load_data(DataConfig(), (1, 8, 8))


def _rows(x: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in x.reshape(len(x), -1)}


class TestDigits:
    def test_shapes_and_types(self, digits):
        s = digits
        assert s.x_train.shape[1:] == s.x_val.shape[1:] == s.x_test.shape[1:] == (1, 8, 8)
        assert s.x_train.dtype == torch.float32 and s.y_train.dtype == torch.int64
        assert len(s.x_train) == len(s.y_train) and len(s.x_test) == len(s.y_test)
        assert len(s.x_train) + len(s.x_val) + len(s.x_test) == sum(DIGITS_PER_CLASS) == 1797
        assert 0.0 <= float(s.x_train.min()) and float(s.x_train.max()) <= 1.0
        assert s.num_classes == 10

    def test_disjoint(self, digits):
        train, val, test = _rows(digits.x_train), _rows(digits.x_val), _rows(digits.x_test)
        # every digits image is unique, so equal rows would mean a leaked sample
        assert len(train) == len(digits.x_train)
        assert not train & val and not train & test and not val & test
        assert len(train | val | test) == 1797

    def test_stratified_sizes(self, digits):
        for y, frac in ((digits.y_test, 0.2), (digits.y_val, 0.15)):
            counts = Counter(y.tolist())
            for c, n in enumerate(DIGITS_PER_CLASS):
                assert counts[c] == int(round(n * frac)), (c, frac)
            assert abs(len(y) - frac * 1797) <= 5
        train_counts = Counter(digits.y_train.tolist())
        for c, n in enumerate(DIGITS_PER_CLASS):
            assert train_counts[c] == n - round(n * 0.2) - round(n * 0.15)

    def test_labels_follow_images(self, digits):
        from sklearn.datasets import load_digits

        bunch = load_digits()
        label_of = {(img.astype(np.float32) / 16.0).tobytes(): int(t)
                    for img, t in zip(bunch.images, bunch.target)}
        for x, y in ((digits.x_train, digits.y_train), (digits.x_test, digits.y_test)):
            for img, label in zip(x[:, 0], y):
                assert label_of[img.numpy().tobytes()] == int(label)

    def test_deterministic_per_seed(self, digits):
        again = load_data(DataConfig(), (1, 8, 8))
        for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
            assert torch.equal(getattr(again, name), getattr(digits, name))
        other = load_data(DataConfig(seed=1), (1, 8, 8))
        assert _rows(other.x_test) != _rows(digits.x_test)
        assert Counter(other.y_test.tolist()) == Counter(digits.y_test.tolist())

    def test_other_fractions(self):
        s = load_data(DataConfig(val_fraction=0.1, test_fraction=0.3), (1, 8, 8))
        assert abs(len(s.x_test) - 0.3 * 1797) <= 5 and abs(len(s.x_val) - 0.1 * 1797) <= 5

    def test_upsampled_to_model_size(self):
        s = load_data(DataConfig(), (1, 16, 16))
        assert s.x_train.shape[1:] == (1, 16, 16) and s.x_train.is_contiguous()

    def test_wrong_channels(self):
        with pytest.raises(ConfigError, match="has 1 channels, model wants 3"):
            load_data(DataConfig(), (3, 8, 8))


# ---- parquet -----------------------------------------------------------------------------------
N_PER_CLASS, N_CLASSES = 20, 3


def _write_parquet(path, label_column="label", n_pixels=64):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(N_CLASSES), N_PER_CLASS)
    pixels = rng.random((len(labels), n_pixels)).astype(np.float32)
    pixels[:, 0] = np.arange(len(labels))  # row id, to trace samples through the split
    columns = {label_column: pa.array(labels.astype(np.int32))}
    columns.update({f"p{i}": pa.array(pixels[:, i]) for i in range(n_pixels)})
    pq.write_table(pa.table(columns), path)
    return pixels, labels


def test_parquet_loader(tmp_path):
    path = tmp_path / "d.parquet"
    pixels, labels = _write_parquet(path)
    x, y = read_parquet(path, "label")
    assert x.shape == (60, 64) and x.dtype == np.float32 and y.dtype == np.int64
    assert np.array_equal(x, pixels) and np.array_equal(y, labels)

    cfg = DataConfig(name="parquet", path=str(path), val_fraction=0.2, test_fraction=0.25)
    s = load_data(cfg, (1, 8, 8))
    assert s.x_train.shape[1:] == (1, 8, 8)
    assert len(s.x_train) + len(s.x_val) + len(s.x_test) == 60
    assert Counter(s.y_test.tolist()) == {c: 5 for c in range(N_CLASSES)}
    assert Counter(s.y_val.tolist()) == {c: 4 for c in range(N_CLASSES)}
    assert s.num_classes == N_CLASSES
    seen = []
    for xs, ys in ((s.x_train, s.y_train), (s.x_val, s.y_val), (s.x_test, s.y_test)):
        for img, label in zip(xs, ys):
            row = int(img[0, 0, 0])  # pixel 0 -> top-left: row-major reshape
            assert np.allclose(img.reshape(-1).numpy(), pixels[row])
            assert int(label) == labels[row]
            seen.append(row)
    assert sorted(seen) == list(range(60))


def test_parquet_custom_label_column(tmp_path):
    path = tmp_path / "d.parquet"
    _, labels = _write_parquet(path, label_column="target")
    _, y = read_parquet(path, "target")
    assert np.array_equal(y, labels)


def test_parquet_missing_file(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_data(DataConfig(name="parquet", path=str(tmp_path / "nope.parquet")), (1, 8, 8))
    assert "data.path" in str(e.value) and "nope.parquet" in str(e.value)


def test_parquet_missing_label_column(tmp_path):
    path = tmp_path / "d.parquet"
    _write_parquet(path, label_column="target")
    with pytest.raises(ConfigError) as e:
        read_parquet(path, "label")
    m = str(e.value)
    assert "data.options.label_column = 'label'" in m and "target" in m and "p0" in m


def test_parquet_bad_feature_count(tmp_path):
    path = tmp_path / "d.parquet"
    _write_parquet(path, n_pixels=63)
    cfg = DataConfig(name="parquet", path=str(path))
    with pytest.raises(ConfigError, match="63 features cannot form 1 square"):
        load_data(cfg, (1, 8, 8))


def test_parquet_label_only(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"label": [0, 1]}), path)
    with pytest.raises(ConfigError, match="no feature columns"):
        read_parquet(path, "label")


def test_parquet_label_column_option(tmp_path):
    path = tmp_path / "d.parquet"
    _, labels = _write_parquet(path, label_column="target")
    cfg = DataConfig(name="parquet", path=str(path), options={"label_column": "target"})
    s = load_data(cfg, (1, 8, 8), num_classes=N_CLASSES)
    assert sorted(torch.cat([s.y_train, s.y_val, s.y_test]).tolist()) == sorted(labels)


def test_unknown_dataset_option_lists_the_allowed(tmp_path):
    path = tmp_path / "d.parquet"
    _write_parquet(path)
    cfg = DataConfig(name="parquet", path=str(path), options={"label": "x"})
    with pytest.raises(ConfigError, match=r"data.options.label = 'x'.*allowed: label_column"):
        load_data(cfg, (1, 8, 8))


def test_labels_beyond_the_models_classes(tmp_path):
    path = tmp_path / "d.parquet"
    _write_parquet(path)  # labels 0..2
    with pytest.raises(ConfigError, match="labels span 0..2 but the space's model.num_classes"):
        load_data(DataConfig(name="parquet", path=str(path)), (1, 8, 8), num_classes=2)


def test_dataset_of_another_task():
    with pytest.raises(ConfigError, match="data.name = 'generated_tagging': a dataset of task "
                                          "'tagging'; task 'classification' takes "
                                          "cluttered_digits, digits"):
        load_data(DataConfig(name="generated_tagging"), (1, 8, 8))


# ---- image folder ------------------------------------------------------------------------------
def _write_images(root, n_per_class=6, size=12, mode="L"):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(["cat", "dog", "emu"]):
        (root / name).mkdir(parents=True)
        for i in range(n_per_class):
            # Each class has its own brightness, so the label is visible in the pixels.
            a = np.clip(rng.normal(60 + 70 * c, 5, (size, size)), 0, 255).astype(np.uint8)
            im = Image.fromarray(a, "L").convert(mode)
            im.save(root / name / f"{i}.png")
    (root / "cat" / "notes.txt").write_text("not an image")


def test_image_folder(tmp_path):
    _write_images(tmp_path / "imgs")
    cfg = DataConfig(name="image_folder", path=str(tmp_path / "imgs"), val_fraction=1 / 6,
                     test_fraction=1 / 6)
    s = load_data(cfg, (1, 8, 8), num_classes=3)
    assert s.x_train.shape[1:] == (1, 8, 8)  # resized from 12x12
    assert len(s.x_train) + len(s.x_val) + len(s.x_test) == 18
    assert Counter(s.y_test.tolist()) == {0: 1, 1: 1, 2: 1}  # stratified
    # classes in sorted folder order: cat 0 (darkest) < dog 1 < emu 2
    x, y = torch.cat([s.x_train, s.x_val, s.x_test]), torch.cat([s.y_train, s.y_val, s.y_test])
    means = [float(x[y == c].mean()) for c in range(3)]
    assert means[0] < means[1] < means[2]
    assert means[0] == pytest.approx(60 / 255, abs=0.03)


def test_image_folder_rgb(tmp_path):
    _write_images(tmp_path / "imgs", mode="RGB")
    s = load_data(DataConfig(name="image_folder", path=str(tmp_path / "imgs")), (3, 8, 8), 3)
    assert s.x_train.shape[1:] == (3, 8, 8)


def test_image_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no class folders"):
        load_data(DataConfig(name="image_folder", path=str(tmp_path / "empty")), (1, 8, 8))
    (tmp_path / "empty" / "cat").mkdir()
    with pytest.raises(ConfigError, match="no image files"):
        load_data(DataConfig(name="image_folder", path=str(tmp_path / "empty")), (1, 8, 8))
    with pytest.raises(ConfigError, match="data.path is required"):
        load_data(DataConfig(name="image_folder"), (1, 8, 8))
