"""raynas.export: extracted static subnets compute what the supernet computes; serialisation."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from raynas.errors import RaynasError
from raynas.export import active_state_dict, extract, max_abs_diff
from raynas.export.serialize import ExportCheckError, export_subnet, load_subnet
from raynas.latency import count_flops, count_params
from raynas.space import Arch
from raynas.supernets import build_static, create_supernet, family_names, get_family
from raynas.supernets.cnn import StaticCNN

N_ARCHS = 50

# raynas/export/serialize.py uses torch.jit.trace / torch.jit.load, deprecated in torch 2.13.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


def _supernet(space, randomise_bn_stats, seed=0):
    torch.manual_seed(seed)
    net = create_supernet(space)
    randomise_bn_stats(net, seed)
    return net.eval()


@pytest.fixture(scope="module")
def digits_net(digits_space, randomise_bn_stats):
    return _supernet(digits_space, randomise_bn_stats, 1)


@pytest.fixture(scope="module")
def tiny_net(tiny_space, randomise_bn_stats):
    return _supernet(tiny_space, randomise_bn_stats, 2)


def _inputs(n=8, seed=0):
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("which", ["digits", "tiny"])
def test_extract_equals_supernet(which, request):
    space = request.getfixturevalue(f"{which}_space")
    net = request.getfixturevalue(f"{which}_net")
    rng = random.Random(11)
    archs = [space.largest(), space.smallest()]
    archs += [space.sample(rng) for _ in range(N_ARCHS)]
    assert len(set(archs)) > 40
    x = _inputs()
    outputs = set()
    for arch in archs:
        with torch.no_grad():
            net.set_arch(arch)
            ref = net(x)
        static = extract(net, space, arch)
        assert not static.training
        assert net.arch == arch  # left set to arch
        with torch.no_grad():
            got = static(x)
        assert got.shape == (8, 10)
        assert (ref - got).abs().max().item() <= 1e-5, arch
        outputs.add(round(float(got.abs().sum()), 4))
    assert len(outputs) > 40  # the archs really compute different functions


def test_bn_stats_matter(tiny_space, tiny_net):
    """Guard for the test above: with BN stats reset the outputs change."""
    arch = tiny_space.largest()
    static = extract(tiny_net, tiny_space, arch)
    x = _inputs()
    before = static(x).detach()
    for m in static.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
    assert (static(x) - before).abs().max() > 1e-3


def test_extracted_model_is_independent(tiny_space, randomise_bn_stats):
    net = _supernet(tiny_space, randomise_bn_stats, 3)
    arch = Arch({"s1_depth": 2, "s1_width": 8, "s1_kernel": [3, 5], "s2_depth": 1,
                 "s2_width": 16, "s2_kernel": [3]})
    static = extract(net, tiny_space, arch)
    x = _inputs()
    with torch.no_grad():
        ref = net(x).clone()
        supernet_state = {k: v.clone() for k, v in net.state_dict().items()}
        for p in static.parameters():
            p.add_(1.0)
        for b in static.buffers():
            if b.is_floating_point():
                b.mul_(3.0)
        assert (static(x) - ref).abs().max() > 1e-3  # the mutation did something
        net.set_arch(arch)
        assert torch.equal(net(x), ref)
    for k, v in net.state_dict().items():
        assert torch.equal(v, supernet_state[k]), k
    # and the other way round: training the supernet does not move the export
    static2 = extract(net, tiny_space, arch)
    out2 = static2(x).detach()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(0.5)
    assert torch.equal(static2(x).detach(), out2)


@pytest.mark.parametrize("which", ["digits", "tiny"])
def test_param_count_matches_static(which, request):
    space = request.getfixturevalue(f"{which}_space")
    net = request.getfixturevalue(f"{which}_net")
    rng = random.Random(5)
    for arch in [space.largest(), space.smallest(), *(space.sample(rng) for _ in range(10))]:
        static = extract(net, space, arch)
        direct = StaticCNN(dict(space.model), arch)
        assert count_params(static) == count_params(direct)
        assert count_params(build_static(space, arch)) == count_params(direct)
        assert set(static.state_dict()) == set(direct.state_dict())
        assert set(static.state_dict()) <= set(active_state_dict(net))


def test_param_count_by_hand(tiny_space, tiny_net):
    # smallest tiny_cnn: stem 1->8 3x3 conv + BN, one 8->8 3x3 layer + BN per stage, 8->10 head
    conv_bn = lambda cin, cout: cin * cout * 9 + 2 * cout  # noqa: E731
    expected = conv_bn(1, 8) + conv_bn(8, 8) + conv_bn(8, 8) + 8 * 10 + 10
    assert count_params(extract(tiny_net, tiny_space, tiny_space.smallest())) == expected


@pytest.mark.parametrize("which", ["digits", "tiny"])
def test_largest_costs_more_than_smallest(which, request):
    space = request.getfixturevalue(f"{which}_space")
    net = request.getfixturevalue(f"{which}_net")
    big = extract(net, space, space.largest())
    small = extract(net, space, space.smallest())
    x = _inputs(1)
    assert count_params(big) > count_params(small)
    assert count_flops(big, x) > count_flops(small, x) > 0


def test_max_abs_diff(tiny_space, tiny_net):
    a = extract(tiny_net, tiny_space, tiny_space.largest())
    b = extract(tiny_net, tiny_space, tiny_space.largest())
    x = _inputs()
    assert max_abs_diff(a, b, x) == 0.0
    with torch.no_grad():
        b.head.bias.add_(0.25)
    assert max_abs_diff(a, b, x) == pytest.approx(0.25, abs=1e-6)


def test_family_registry(tiny_space):
    assert "cnn" in family_names()
    fam = get_family("cnn")
    assert fam.tasks == ("classification",)
    with pytest.raises(RaynasError,
                       match="'nope': unknown supernet family; choose one of bert, cnn"):
        get_family("nope")


# ---- export_subnet / load_subnet -------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_space, tiny_net):
    arch = Arch({"s1_depth": 2, "s1_width": 16, "s1_kernel": [5, 3], "s2_depth": 2,
                 "s2_width": 8, "s2_kernel": [3, 5]})
    static = extract(tiny_net, tiny_space, arch)
    directory = tmp_path_factory.mktemp("export") / "subnet"
    x = _inputs(6, seed=9)
    result = export_subnet(tiny_net, static, tiny_space, arch, {"images": x}, directory,
                           formats=("torchscript", "onnx"), atol=1e-4)
    return result, static, arch, x


def test_export_files_and_checks(exported):
    result, _, arch, _ = exported
    d = result.directory
    for name in ("arch.json", "model.pt", "model.torchscript.pt", "model.onnx", "export.json"):
        assert (d / name).is_file(), name
    assert set(result.checks) == {"static", "state_dict", "torchscript", "onnx"}
    assert all(0 <= v <= 1e-4 for v in result.checks.values()), result.checks
    assert result.files == {"state_dict": "model.pt", "torchscript": "model.torchscript.pt",
                            "onnx": "model.onnx"}
    meta = json.loads((d / "arch.json").read_text())
    assert meta["arch_key"] == arch.key and Arch(meta["arch"]) == arch
    assert meta["space"]["name"] == "tiny_cnn"
    report = json.loads((d / "export.json").read_text())
    assert report["arch_key"] == arch.key and report["max_abs_diff"] == result.checks


def test_load_subnet_matches(exported):
    result, static, arch, x = exported
    loaded = load_subnet(result.directory)
    assert not loaded.training
    assert isinstance(loaded, StaticCNN) and loaded.depths == [2, 2]
    with torch.no_grad():
        assert (loaded(x) - static(x)).abs().max().item() <= 1e-6


def test_serialised_formats_run_standalone(exported):
    result, static, _, _ = exported
    x = _inputs(3, seed=4)  # a batch size the export never saw
    with torch.no_grad():
        ref = static(x)
        scripted = torch.jit.load(str(result.directory / "model.torchscript.pt"))
        assert (scripted(x) - ref).abs().max().item() <= 1e-5
    import onnxruntime as ort

    session = ort.InferenceSession(str(result.directory / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert out.shape == (3, 10)
    assert np.abs(out - ref.numpy()).max() <= 1e-4


def test_tampered_static_model_fails_check(tmp_path, tiny_space, tiny_net):
    arch = tiny_space.smallest()
    static = extract(tiny_net, tiny_space, arch)
    with torch.no_grad():
        static.stages[0][0].conv.weight.add_(0.05)
    with pytest.raises(ExportCheckError) as e:
        export_subnet(tiny_net, static, tiny_space, arch, {"images": _inputs()},
                      tmp_path / "out", formats=("torchscript",), atol=1e-4)
    msg = str(e.value)
    assert "static output differs" in msg and "export.atol = 0.0001" in msg
    assert isinstance(e.value, RaynasError)
    assert not (tmp_path / "out" / "model.pt").exists()  # nothing half-exported


def test_export_check_uses_supernet_arch(tmp_path, tiny_space, tiny_net):
    """The reference is the supernet set to ``arch``, whatever it was set to before."""
    arch = tiny_space.smallest()
    static = extract(tiny_net, tiny_space, arch)
    tiny_net.set_arch(tiny_space.largest())
    result = export_subnet(tiny_net, static, tiny_space, arch, {"images": _inputs()},
                           tmp_path / "o", formats=())
    assert result.checks["static"] <= 1e-5 and set(result.files) == {"state_dict"}
    assert not (tmp_path / "o" / "model.onnx").exists()


def test_flop_count_matches_torch_flop_counter(digits_space):
    from raynas.latency.measure import count_flops_reference

    torch.manual_seed(0)
    net = create_supernet(digits_space).eval()
    x = torch.randn(1, 1, 8, 8)
    rng = random.Random(5)
    for arch in [digits_space.largest(), digits_space.smallest(),
                 *(digits_space.sample(rng) for _ in range(5))]:
        static = extract(net, digits_space, arch)
        assert count_flops(static, x) == count_flops_reference(static, x) > 0
