"""Users' own images feed the vision families: an image folder and a Parquet file, read at the
tiny spaces' 16x16, train a step of each supernet and run its extracted subnet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from raynas.export import extract
from raynas.space import SearchSpace
from raynas.supernets import create_supernet
from raynas.tasks import build_task, load_task_data, make_loader

SPACES = Path(__file__).resolve().parents[2] / "search_spaces"


def _image_folder(root: Path) -> Path:
    """3 classes x 6 RGB PNGs of 20x20 (the loader resizes and greys them): a bar whose
    position is the class."""
    rng = np.random.default_rng(0)
    for label in range(3):
        (root / f"class_{label}").mkdir(parents=True)
        for i in range(6):
            a = (rng.random((20, 20, 3)) * 40).astype(np.uint8)
            a[label * 6:label * 6 + 5] = 250
            Image.fromarray(a).save(root / f"class_{label}" / f"{i}.png")
    return root


def _parquet(path: Path) -> Path:
    """18 rows of 256 pixel columns (one 16x16 channel) and a label column."""
    rng = np.random.default_rng(1)
    columns = {f"p{i}": rng.random(18).astype(np.float32) for i in range(256)}
    columns["label"] = np.repeat(np.arange(3), 6)
    pq.write_table(pa.table(columns), path)
    return path


@pytest.mark.parametrize("space_file", ["resnet20_pool_tiny.yaml", "vit_tiny.yaml"])
@pytest.mark.parametrize("source", ["image_folder", "parquet"])
def test_users_images_train_and_run_the_vision_families(space_file, source, tmp_path):
    space = SearchSpace.load(SPACES / space_file)
    task = build_task(space)
    path = (_image_folder(tmp_path / "images") if source == "image_folder"
            else _parquet(tmp_path / "d.parquet"))
    data = load_task_data(task, {"name": source, "path": str(path), "val_fraction": 0.2,
                                 "test_fraction": 0.2})
    batch = next(iter(make_loader(data.train, 8, shuffle=True)))
    assert batch["images"].shape == (8, 1, 16, 16)
    torch.manual_seed(0)
    net = create_supernet(space).train()
    for arch in (space.largest(), space.smallest()):
        net.set_arch(arch)
        net.zero_grad()
        F.cross_entropy(net(batch["images"]), batch["labels"]).backward()
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
    net.eval()
    static = extract(net, space, space.smallest())
    with torch.no_grad():
        assert torch.allclose(static(batch["images"]), net(batch["images"]), atol=1e-5)
