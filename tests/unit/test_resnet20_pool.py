"""The ``resnet20_pool`` family beyond the shared contract: the paper's full-size space,
layouts in order of compute, strided downsampling, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from raynas.errors import ConfigError
from raynas.export import extract
from raynas.latency import count_flops, count_params
from raynas.space import SearchSpace
from raynas.supernets import build_static, create_supernet
from raynas.supernets.resnet20_pool import downsample_at, plan

SPACES_DIR = Path(__file__).resolve().parents[2] / "search_spaces"
FULL = SPACES_DIR / "resnet20_pool.yaml"
TINY = SPACES_DIR / "resnet20_pool_tiny.yaml"


def _space(**overrides) -> SearchSpace:
    doc = SearchSpace.load(TINY).to_dict()
    for key, value in overrides.items():
        if key == "dims":
            doc["dims"] = {**doc["dims"], **value}
        else:
            doc["model"] = {**doc["model"], key: value}
    return SearchSpace.from_dict(doc)


def test_layout_names_where_the_network_downsamples():
    assert downsample_at("4-3-3") == (4, 7)  # ResNet-20: pools before layers 4 and 7
    assert downsample_at("7-1-2") == (7, 8)
    steps = plan({"channels": [16] * 10}, {"layout": "4-3-3"})
    assert [i for i, s in enumerate(steps) if s] == [4, 7] and set(steps) == {None, "pool"}


def test_full_space_is_the_papers_36_paths_and_its_resnet20_has_its_parameters():
    space = SearchSpace.load(FULL)
    assert space.size() == 36  # C(9, 2), the paper's Table 1
    with torch.device("meta"):
        net = create_supernet(space)
    assert all(p.is_meta for p in net.parameters())
    # He et al.'s CIFAR ResNet-20 has 0.27M parameters; with the paper's affine-free BN and
    # 1x1 projections where the channels grow, exactly these:
    assert count_params(net) == 270_906
    default = build_static(space, space.validate({"layout": "4-3-3"}))
    flops = count_flops(default.eval(), (torch.randn(1, 3, 32, 32),))
    assert flops == 81_626_368  # 2 x 40.81M multiply-accumulates: ResNet-20 as usually cited


@pytest.mark.parametrize("path", [FULL, TINY])
def test_layouts_are_listed_from_least_to_most_compute(path):
    space = SearchSpace.load(path)
    m = space.model
    x = (torch.randn(1, m["in_channels"], m["image_size"], m["image_size"]),)
    flops = [count_flops(build_static(space, space.validate({"layout": v})).eval(), x)
             for v in space.dim("layout").values]
    assert flops == sorted(flops)
    assert flops[-1] > 3 * flops[0]


def test_strided_downsampling_is_extracted_exactly_and_differs_from_pooling(
        randomise_bn_stats):
    space = _space(dims={"down1": {"type": "choice", "values": ["pool", "stride"]},
                         "down2": {"type": "choice", "values": ["pool", "stride"]}})
    torch.manual_seed(0)
    net = create_supernet(space)
    randomise_bn_stats(net)
    net.eval()
    x = torch.randn(4, 1, 16, 16)
    outs = {}
    for down in ("pool", "stride"):
        arch = space.validate({"layout": "2-3-2", "down1": down, "down2": "stride"})
        static = extract(net, space, arch)
        with torch.no_grad():
            net.set_arch(arch)
            outs[down] = net(x)
            assert torch.allclose(static(x), outs[down], atol=1e-5)
    assert not torch.allclose(outs["pool"], outs["stride"])
    # Odd sizes: a stride-2 conv and a ceil-mode pool both give ceil(n / 2).
    odd = torch.randn(2, 1, 15, 15)
    with torch.no_grad():
        for down in ("pool", "stride"):
            net.set_arch(space.validate({"layout": "1-1-5", "down1": down, "down2": down}))
            assert net(odd).shape == (2, 10)


@pytest.mark.parametrize("overrides, match", [
    ({"dims": {"layout": {"type": "choice", "values": ["3-3"]}}},
     "layout value '3-3': must be a string of layer counts.*adding up to 7"),
    ({"dims": {"layout": {"type": "choice", "values": ["0-3-4"]}}}, "each >= 1"),
    ({"dims": {"layout": {"type": "choice", "values": ["3-4", "2-2-3"]}}},
     "all must have the same number of resolutions"),
    ({"dims": {"down3": {"type": "choice", "values": ["pool"]}}},
     "dimension 'down3': layouts downsample 2 times"),
    ({"dims": {"down1": {"type": "choice", "values": ["avg"]}}},
     "down1 must be a choice of pool, stride"),
    ({"downsample": "avg"}, "model.downsample = 'avg'"),
    ({"channels": [8]}, "model.channels = \\[8\\]"),
])
def test_bad_spaces_name_what_is_wrong(overrides, match):
    with pytest.raises(ConfigError, match=match):
        create_supernet(_space(**overrides))


def test_lookup_table_ops_add_up_to_the_subnet():
    """Per-op latency tables: the ops of a layout are its layers, FLOPs for FLOPs, and a
    key always names the same computation."""
    from raynas.supernets import subnet_ops

    space = _space(dims={"down1": {"type": "choice", "values": ["pool", "stride"]}})
    seen = {}
    for arch in space.enumerate():
        ops = subnet_ops(space, arch)
        assert len(ops) == 1 + len(space.model["channels"])
        total = sum(count_flops(op.build().eval(), torch.randn(1, *op.input_shape))
                    for op in ops)
        assert total == count_flops(build_static(space, arch).eval(), torch.randn(1, 1, 16, 16))
        for op in ops:
            assert seen.setdefault(op.key, (op.input_shape, str(op.build()))) == (
                op.input_shape, str(op.build()))
    assert len(seen) < 2 * len(list(space.enumerate()))  # shared ops: a table stays small
