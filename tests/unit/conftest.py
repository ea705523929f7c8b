"""Shared fixtures for the fast unit suite (no Ray, no network, CPU only)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from raynas.space import SearchSpace

REPO = Path(__file__).resolve().parents[2]
SPACES_DIR = REPO / "search_spaces"
JOBS_DIR = REPO / "jobs"
QUICKSTART = JOBS_DIR / "quickstart.yaml"


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # Two cores on CI: keep torch from oversubscribing them.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def quickstart_job() -> Path:
    return QUICKSTART


@pytest.fixture(scope="session")
def digits_space() -> SearchSpace:
    return SearchSpace.load(SPACES_DIR / "digits_cnn.yaml")


def _elastic(dim) -> bool:
    n = dim.cardinality() if hasattr(dim, "cardinality") else len(dim.values)  # per-layer
    return n is None or n > 1  # None: a float range


def smallest_space(family: str) -> SearchSpace:
    """The smallest space a family ships in search_spaces/ (each family must ship one) in
    which every dimension is elastic (a corner that pins some, like vit_tiny_small, would
    leave them untested)."""
    spaces = [s for s in (SearchSpace.load(p) for p in sorted(SPACES_DIR.glob("*.yaml")))
              if s.family == family and all(_elastic(d) for d in s.dims)]
    assert spaces, f"family {family!r} ships no space in search_spaces/"
    return min(spaces, key=lambda s: s.size() or 10**12)


@pytest.fixture(scope="session")
def space_of():
    return smallest_space


@pytest.fixture(scope="session")
def tiny_space() -> SearchSpace:
    return SearchSpace.load(SPACES_DIR / "tiny_cnn.yaml")


@pytest.fixture
def rng() -> random.Random:
    return random.Random(1234)


def _randomise_bn_stats(module: torch.nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial affine parameters and running statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if hasattr(m, "running_mean") and m.running_mean is not None:
                n = m.running_mean.numel()
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)


def _make_checkpoint(directory: Path, space: SearchSpace, seed: int = 0) -> Path:
    """Save an untrained supernet of ``space`` as a raynas checkpoint directory."""
    from raynas.checkpoint import save_checkpoint
    from raynas.supernets import create_supernet

    torch.manual_seed(seed)
    net = create_supernet(space)
    return save_checkpoint(directory, space, net.state_dict(), epoch=0)


@pytest.fixture(scope="session")
def randomise_bn_stats():
    """``randomise_bn_stats(module, seed)``: make BatchNorm matter in eval-mode comparisons."""
    return _randomise_bn_stats


@pytest.fixture(scope="session")
def make_checkpoint():
    """``make_checkpoint(directory, space, seed=0)``: an untrained supernet checkpoint."""
    return _make_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_space) -> Path:
    return _make_checkpoint(tmp_path_factory.mktemp("ckpt_tiny"), tiny_space)


@pytest.fixture(scope="session")
def digits_checkpoint(tmp_path_factory, digits_space) -> Path:
    return _make_checkpoint(tmp_path_factory.mktemp("ckpt_digits"), digits_space)


@pytest.fixture(scope="session")
def digits_data(tiny_space):
    """``(task, data)``: the tiny space's task and the digits splits (the default data
    section), loaded once; tests take batches of their own size from ``data.train``."""
    from raynas.config import DataConfig
    from raynas.tasks import build_task, load_task_data

    task = build_task(tiny_space)
    return task, load_task_data(task, DataConfig().model_dump())

