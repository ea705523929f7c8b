"""The contract every supernet family keeps, parametrized over the family registry (a new
family is covered the moment it registers and ships a space in search_spaces/):

- for random, largest and smallest archs, the supernet's output equals the extracted static
  model's, and TorchScript and ONNX exports compute the same;
- FLOPs (forward hooks) equal torch's FlopCounterMode on the static model, and the static
  model's parameters are exactly the supernet's active slice;
- latency timing runs on the task's example inputs.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from raynas.export import extract
from raynas.export.extract import active_state_dict
from raynas.export.serialize import export_subnet
from raynas.latency import MeasuredLatency, count_flops, count_params
from raynas.latency.measure import count_flops_reference
from raynas.space import SearchSpace
from raynas.supernets import create_supernet, family_names
from raynas.tasks import build_task, example_args

SPACES_DIR = Path(__file__).resolve().parents[2] / "search_spaces"
# Spaces covered besides each family's smallest: a layer a family builds only on a model
# setting (the MoE feed-forwards of bert and transformer_mt with model.moe), and conformer_tiny
# (the smallest conformer space is conformer_moe_tiny): chunked, streaming decoding.
EXTRA_SPACES = ("bert_moe_tiny", "transformer_mt_moe_tiny", "conformer_tiny")


def _archs(space: SearchSpace):
    rng = random.Random(0)
    return {"largest": space.largest(), "smallest": space.smallest(),
            **{f"random{i}": space.sample(rng) for i in range(3)}}


@pytest.fixture(scope="module", params=[*family_names(), *EXTRA_SPACES])
def family_setup(request, randomise_bn_stats, space_of):
    space = (SearchSpace.load(SPACES_DIR / f"{request.param}.yaml")
             if request.param in EXTRA_SPACES else space_of(request.param))
    torch.manual_seed(0)
    net = create_supernet(space)
    randomise_bn_stats(net)  # BatchNorm must matter in eval-mode comparisons
    net.eval()
    task = build_task(space)
    inputs = example_args(space, 8, task)
    return space, net, task, inputs


def test_extracted_subnet_computes_what_the_supernet_computes(family_setup):
    space, net, task, inputs = family_setup
    for name, arch in _archs(space).items():
        static = extract(net, space, arch)
        with torch.no_grad():
            net.set_arch(arch)
            want, got = net(*inputs), static(*inputs)
        assert got.shape == want.shape, name
        assert torch.allclose(got, want, atol=1e-5), (name, float((got - want).abs().max()))


def test_largest_and_smallest_differ(family_setup):
    space, net, task, inputs = family_setup
    with torch.no_grad():
        net.set_arch(space.largest())
        a = net(*inputs)
        net.set_arch(space.smallest())
        b = net(*inputs)
    assert not torch.allclose(a, b)  # the arch really changes the computation


def test_flops_and_params_match_the_static_model(family_setup):
    space, net, task, inputs = family_setup
    sizes = []
    for name, arch in _archs(space).items():
        static = extract(net, space, arch)
        flops = count_flops(static, inputs)
        assert flops == count_flops_reference(static, inputs), name
        params = count_params(static)
        net.set_arch(arch)
        active = active_state_dict(net)
        assert params == sum(active[k].numel() for k, _ in static.named_parameters()), name
        sizes.append((name, flops, params))
    by = {n: (f, p) for n, f, p in sizes}
    # More compute, never fewer weights (a space may move compute without adding weights:
    # resnet20_pool's layouts all hold the same parameters).
    assert by["largest"][0] > by["smallest"][0] and by["largest"][1] >= by["smallest"][1]


def test_exports_match_the_supernet(family_setup, tmp_path):
    space, net, task, _ = family_setup
    arch = space.sample(random.Random(1))
    batch = task.example_inputs(5, seed=3)
    result = export_subnet(net, extract(net, space, arch), space, arch, batch, tmp_path,
                           ("torchscript", "onnx"), atol=1e-4, task=task)
    assert set(result.checks) == {"static", "state_dict", "torchscript", "onnx"}
    assert max(result.checks.values()) <= 1e-4
    import onnxruntime as ort

    names = [i.name for i in ort.InferenceSession(
        str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"]).get_inputs()]
    assert names == list(task.input_names)  # the task's named inputs


def test_latency_runs_on_the_task_inputs(family_setup):
    space, net, task, _ = family_setup
    meter = MeasuredLatency(batch_size=2, min_run_time_s=0.002)
    args = example_args(space, meter.batch_size, task)
    assert all(len(a) == 2 for a in args)
    small = meter.measure_ms(extract(net, space, space.smallest()), args)
    assert 0 < small < 1000
