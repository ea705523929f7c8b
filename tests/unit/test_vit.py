"""The vit family beyond the family contract: ElasticViT's full-size space and its published
models, configuration errors, every optional part of the family on a small CPU space, and the
hand-written model of benchmarks/elastic_overhead.py."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pytest
import torch

from raynas.errors import ConfigError
from raynas.export import extract
from raynas.export.serialize import export_subnet
from raynas.latency import count_flops, count_params
from raynas.latency.measure import count_flops_reference
from raynas.space import SearchSpace
from raynas.supernets import build_static, create_supernet
from raynas.tasks import build_task, example_args

REPO = Path(__file__).resolve().parents[2]
SPACES = REPO / "search_spaces"
MODELS = json.loads((SPACES / "vit_elasticvit_models.json").read_text())["models"]

# Parameters of ElasticViT's published models as this family builds them (at each model's
# input resolution, which sizes the relative-position tables), for regression. The paper's
# table of parameters was not found; its abstract gives FLOPs, checked below.
PARAMS = {"ElasticViT-T1": 8_905_832, "ElasticViT-T2": 9_300_065,
          "ElasticViT-S1": 10_836_592, "ElasticViT-S2": 10_231_654,
          "ElasticViT-M": 12_016_968, "ElasticViT-L1": 12_764_996,
          "ElasticViT-L1.5": 14_706_044, "ElasticViT-L2": 14_901_060,
          "ElasticViT-L3": 15_344_982}


@pytest.fixture(scope="module")
def elasticvit() -> SearchSpace:
    return SearchSpace.load(SPACES / "vit_elasticvit.yaml")


def _at(space: SearchSpace, image_size: int) -> SearchSpace:
    return SearchSpace(space.name, space.family, space.dims,
                       {**space.model, "image_size": image_size}, space.description)


def test_full_space_builds_on_the_meta_device(elasticvit):
    with torch.device("meta"):
        net = create_supernet(elasticvit)
        largest = build_static(elasticvit, elasticvit.largest())
        smallest = build_static(elasticvit, elasticvit.smallest())
    assert all(p.is_meta for p in net.parameters())
    assert count_params(largest) == count_params(net)  # the largest subnet uses every weight
    assert count_params(smallest) < count_params(largest) / 5


@pytest.mark.parametrize("name", list(MODELS))
def test_published_models_are_archs_of_the_space(elasticvit, name):
    model = MODELS[name]
    space = _at(elasticvit, model["image_size"])
    with torch.device("meta"):
        static = build_static(space, space.validate(model["arch"]))
    assert count_params(static) == PARAMS[name]


@pytest.mark.parametrize("name,paper_mmacs", [("ElasticViT-T1", 60), ("ElasticViT-L3", 800)])
def test_published_models_flops_match_the_paper(elasticvit, name, paper_mmacs):
    # Abstract of arXiv 2303.09730: "from 60M to 800M FLOPs" (ElasticViT counts a
    # multiply-accumulate as one FLOP; count_flops counts two).
    model = MODELS[name]
    space = _at(elasticvit, model["image_size"])
    static = build_static(space, space.validate(model["arch"])).eval()
    macs = count_flops(static, example_args(space, 1)) / 2e6
    assert abs(macs - paper_mmacs) / paper_mmacs < 0.1, macs


# ---- configuration errors ------------------------------------------------------------------------
def _tiny_doc() -> dict:
    return SearchSpace.load(SPACES / "vit_tiny.yaml").to_dict()


def _build(doc: dict) -> None:
    create_supernet(SearchSpace.from_dict(doc))


@pytest.mark.parametrize("edit,message", [
    (lambda d: d["model"].pop("head_dim"), "model.head_dim is required"),
    (lambda d: d["model"].update(attention="swin"), "model.attention = 'swin'"),
    (lambda d: d["model"].update(stem_block=True), "model.stem_block is not a setting"),
    (lambda d: d["model"].update(transformer_strides=[]), "model.transformer_strides"),
    (lambda d: d["model"].update(conv_strides=[2], conv_se=[True, False]), "model.conv_se"),
    (lambda d: d["dims"].pop("t2_mlp_ratio"), "needs dimension 't2_mlp_ratio'"),
    (lambda d: d["dims"].update(t1_embed={"type": "choice", "values": [16, 20]}),
     "'t1_embed'.*multiple of model.head_dim"),
    (lambda d: d["dims"].update(t1_mlp_ratio={"type": "per_layer", "depth": "t2_depth",
                                              "values": [2, 3]}), "'t1_mlp_ratio'"),
    (lambda d: d["dims"].update(t3_depth={"type": "int", "low": 1, "high": 2}),
     "'t3_depth' is not read by family 'vit'"),
    (lambda d: d["model"].update(stem_blocks=True), "needs dimension 'stem_depth'"),
])
def test_config_errors_name_the_field(edit, message):
    doc = _tiny_doc()
    edit(doc)
    with pytest.raises(ConfigError, match=message):
        _build(doc)


# ---- every optional part, small enough for the CPU -----------------------------------------------
MINI = {
    "name": "vit_mini", "family": "vit",
    "model": {"in_channels": 3, "num_classes": 5, "image_size": 14, "activation": "hardswish",
              "stem_stride": 2, "stem_blocks": True, "conv_strides": [2], "conv_se": [True],
              "transformer_strides": [1, 2], "entry": "mbconv", "entry_expand": 2,
              "head_dim": 4, "attention": "elasticvit", "head": "mbv3", "head_expand": 2,
              "head_hidden": 24},
    "dims": {  # 14 -> stem 7 -> conv stage 4 (odd: padded pool) -> 4x4 tokens -> 2x2 tokens
        "stem_width": {"type": "choice", "values": [4, 8]},
        "stem_depth": {"type": "int", "low": 1, "high": 2},
        "stem_kernel": {"type": "per_layer", "depth": "stem_depth", "values": [3, 5]},
        "c1_depth": {"type": "int", "low": 1, "high": 2},
        "c1_width": {"type": "choice", "values": [8, 12]},
        "c1_expand": {"type": "per_layer", "depth": "c1_depth", "values": [2, 3]},
        "c1_kernel": {"type": "choice", "values": [3, 5]},
        "t1_depth": {"type": "int", "low": 1, "high": 2},
        "t1_embed": {"type": "choice", "values": [8, 16]},
        "t1_mlp_ratio": {"type": "choice", "values": [1, 2]},
        "t1_heads": {"type": "per_layer", "depth": "t1_depth", "values": [1, 2, 3]},
        "t1_v_scale": {"type": "per_layer", "depth": "t1_depth", "values": [1, 2]},
        "t2_depth": {"type": "int", "low": 1, "high": 2},
        "t2_embed": {"type": "choice", "values": [12, 16]},
        "t2_mlp_ratio": {"type": "per_layer", "depth": "t2_depth", "values": [1.5, 2]},
        "t2_v_scale": {"type": "choice", "values": [1, 2]},
    },
}


@pytest.fixture(scope="module")
def mini(randomise_bn_stats):
    space = SearchSpace.from_dict(MINI)
    torch.manual_seed(0)
    net = create_supernet(space)
    randomise_bn_stats(net)
    return space, net.eval()


def _archs(space: SearchSpace):
    rng = random.Random(0)
    return [space.largest(), space.smallest(), *(space.sample(rng) for _ in range(6))]


def test_every_part_extracts_exactly(mini):
    space, net = mini
    x = example_args(space, 4)
    for arch in _archs(space):
        static = extract(net, space, arch)
        with torch.no_grad():
            net.set_arch(arch)
            want, got = net(*x), static(*x)
        assert torch.allclose(got, want, atol=1e-5), (arch, float((got - want).abs().max()))
        assert count_flops(static, x) == count_flops_reference(static, x)


def test_every_part_exports(mini, tmp_path):
    space, net = mini
    arch = space.sample(random.Random(3))
    task = build_task(space)
    result = export_subnet(net, extract(net, space, arch), space, arch,
                           task.example_inputs(3, seed=1), tmp_path, ("torchscript", "onnx"),
                           task=task)
    assert max(result.checks.values()) <= 1e-4


def test_supernet_trains_every_part(mini):
    space, net = mini
    net.train()
    net.set_arch(space.sample(random.Random(5)))
    net(*example_args(space, 4)).sum().backward()
    net.zero_grad()
    net.eval()


# ---- the hand-written benchmark model ------------------------------------------------------------
def _hand_vit():
    path = REPO / "benchmarks" / "_hand_vit.py"
    spec = importlib.util.spec_from_file_location("_hand_vit", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.HandViT


def test_hand_vit_computes_what_the_extracted_subnet_computes(randomise_bn_stats):
    space = SearchSpace.load(SPACES / "vit_tiny.yaml")
    torch.manual_seed(0)
    net = create_supernet(space)
    randomise_bn_stats(net)
    static = extract(net.eval(), space, space.largest())
    hand = _hand_vit().from_static(static).eval()
    assert count_params(hand) == count_params(static)
    x = example_args(space, 8)
    with torch.no_grad():
        assert torch.allclose(hand(*x), static(*x), atol=1e-5)


# ---- per-op latency lookup tables ----------------------------------------------------------------
@pytest.mark.parametrize("which", ["tiny", "mini"])
def test_lookup_table_ops_add_up_to_the_subnet(which):
    """The ops of an arch are the subnet, FLOPs for FLOPs (attention's matmuls included), and
    a key always names the same computation on the same input shape."""
    from raynas.supernets import subnet_ops

    space = (SearchSpace.load(SPACES / "vit_tiny.yaml") if which == "tiny"
             else SearchSpace.from_dict(MINI))
    x = example_args(space, 1)
    seen = {}
    for arch in _archs(space):
        ops = subnet_ops(space, arch)
        total = sum(count_flops(op.build().eval(), torch.randn(1, *op.input_shape))
                    for op in ops)
        assert total == count_flops(build_static(space, arch).eval(), x)
        for op in ops:
            sig = (op.input_shape, str(op.build()))
            assert seen.setdefault(op.key, sig) == sig, op.key
