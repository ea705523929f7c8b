"""Every shipped YAML file is valid: search spaces build their supernet, jobs load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from raynas.config import load_config
from raynas.space import SearchSpace
from raynas.space.registry import load_space
from raynas.supernets import check_space, create_supernet
from raynas.tasks import example_args

REPO = Path(__file__).resolve().parents[2]
SPACE_FILES = sorted((REPO / "search_spaces").rglob("*.yaml"))
JOB_FILES = sorted(p for p in (REPO / "jobs").rglob("*.yaml")
                   if not p.name.startswith("runtime_env"))


def test_files_found():
    names = {p.stem for p in SPACE_FILES}
    assert {"digits_cnn", "tiny_cnn"} <= names
    assert any(p.stem == "quickstart" for p in JOB_FILES)


@pytest.mark.parametrize("path", SPACE_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_space_file(path):
    space = SearchSpace.load(path)
    assert space.name == path.stem  # `raynas spaces show NAME` finds it by file stem
    net = create_supernet(space).eval()
    x = example_args(space, 2)
    for arch in (space.largest(), space.smallest(), space.sample(0)):
        net.set_arch(arch)
        with torch.no_grad():
            out = net(*x)
        classes = space.model.get("num_classes", space.model.get("vocab_size"))  # or tokens
        assert out.shape[0] == 2 and out.shape[-1] == classes
    size = space.size()
    if size is not None and space.description:
        assert f"{size:,}" in space.description  # descriptions quote the size


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_job_file(path):
    cfg = load_config(path)
    assert cfg.name
    space = load_space(cfg.space, base=Path(cfg.base_dir))  # the job's space resolves
    check_space(space)
