"""raynas.nn.elastic: elastic ops equal plain torch ops built from the sliced weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from raynas.nn import ElasticBatchNorm2d, ElasticConv2d, ElasticLinear, recalibrate_batchnorm

ATOL = 1e-5


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, atol=ATOL, rtol=1e-5)


# ---- conv --------------------------------------------------------------------------------------
@pytest.mark.parametrize("stride", [1, 2])
def test_conv_full_size_equals_conv2d(stride):
    torch.manual_seed(0)
    el = ElasticConv2d(6, 10, 5, stride)
    ref = nn.Conv2d(6, 10, 5, stride, padding=2, bias=False)
    with torch.no_grad():
        ref.weight.copy_(el.weight)
    x = torch.randn(3, 6, 9, 9)
    out = el(x)
    assert out.shape == ref(x).shape == (3, 10, 9 if stride == 1 else 5, 9 if stride == 1 else 5)
    assert _close(out, ref(x))


@pytest.mark.parametrize("cin, cout, k, stride", [
    (6, 10, 5, 1), (4, 10, 5, 1), (6, 3, 5, 2), (2, 7, 3, 1), (1, 1, 1, 2), (5, 4, 3, 2),
])
def test_conv_slice_equals_conv_from_sliced_weights(cin, cout, k, stride):
    torch.manual_seed(1)
    el = ElasticConv2d(6, 10, 5, stride)
    el.configure(cin, cout, k)
    start = {5: 0, 3: 1, 1: 2}[k]  # centre crop of the 5x5 kernel, worked out by hand
    expected_w = el.weight.detach()[:cout, :cin, start:start + k, start:start + k]
    ref = nn.Conv2d(cin, cout, k, stride, padding=k // 2, bias=False)
    with torch.no_grad():
        ref.weight.copy_(expected_w)
    x = torch.randn(2, cin, 8, 8)
    assert _close(el(x), ref(x))
    assert torch.equal(el.active_state()["weight"], expected_w)
    assert set(el.active_state()) == set(ref.state_dict())


def test_conv_centre_crop_of_7x7():
    el = ElasticConv2d(1, 1, 7)
    with torch.no_grad():
        el.weight.copy_(torch.arange(49.0).reshape(1, 1, 7, 7))
    el.configure(1, 1, 3)
    # rows/cols 2..4 of a 7x7 grid numbered row-major
    assert el.active_weight()[0, 0].tolist() == [[16, 17, 18], [23, 24, 25], [30, 31, 32]]


def test_conv_gradient_only_reaches_active_slice():
    el = ElasticConv2d(4, 6, 5)
    el.configure(2, 3, 3)
    el(torch.randn(2, 2, 6, 6)).sum().backward()
    grad = el.weight.grad
    assert grad[:3, :2, 1:4, 1:4].abs().sum() > 0
    mask = torch.ones_like(grad, dtype=torch.bool)
    mask[:3, :2, 1:4, 1:4] = False
    assert grad[mask].abs().max() == 0


def test_conv_even_kernel_rejected():
    with pytest.raises(ValueError, match="odd"):
        ElasticConv2d(1, 1, 4)


# ---- linear ------------------------------------------------------------------------------------
def test_linear_full_and_sliced():
    torch.manual_seed(2)
    el = ElasticLinear(12, 5)
    x = torch.randn(4, 12)
    ref = nn.Linear(12, 5)
    ref.load_state_dict({"weight": el.weight.detach(), "bias": el.bias.detach()})
    assert _close(el(x), ref(x))

    el.configure(7, 3)
    ref = nn.Linear(7, 3)
    ref.load_state_dict({"weight": el.weight.detach()[:3, :7], "bias": el.bias.detach()[:3]})
    assert _close(el(x[:, :7]), ref(x[:, :7]))
    state = el.active_state()
    assert state["weight"].shape == (3, 7) and state["bias"].shape == (3,)


def test_linear_without_bias():
    el = ElasticLinear(6, 4, bias=False)
    el.configure(3, 4)
    assert set(el.active_state()) == {"weight"}
    x = torch.randn(2, 3)
    assert _close(el(x), x @ el.weight.detach()[:, :3].T)


# ---- batch norm --------------------------------------------------------------------------------
def _bn_pair(active: int, max_features: int = 8, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    el = ElasticBatchNorm2d(max_features)
    with torch.no_grad():
        el.weight.copy_(torch.rand(max_features, generator=g) + 0.5)
        el.bias.copy_(torch.randn(max_features, generator=g))
        el.running_mean.copy_(torch.randn(max_features, generator=g))
        el.running_var.copy_(torch.rand(max_features, generator=g) + 0.5)
    el.configure(active)
    ref = nn.BatchNorm2d(active)
    ref.load_state_dict({"weight": el.weight.detach()[:active].clone(),
                         "bias": el.bias.detach()[:active].clone(),
                         "running_mean": el.running_mean[:active].clone(),
                         "running_var": el.running_var[:active].clone(),
                         "num_batches_tracked": torch.tensor(0)})
    return el, ref


@pytest.mark.parametrize("active", [8, 5, 1])
@pytest.mark.parametrize("training", [False, True])
def test_bn_equals_batchnorm2d(active, training):
    el, ref = _bn_pair(active)
    el.train(training)
    ref.train(training)
    x = torch.randn(6, active, 4, 4) * 2 + 1
    assert _close(el(x), ref(x))
    # running statistics moved (or not) identically
    assert _close(el.running_mean[:active], ref.running_mean)
    assert _close(el.running_var[:active], ref.running_var)


def test_bn_training_updates_only_active_slice():
    el, _ = _bn_pair(8)
    before_mean, before_var = el.running_mean.clone(), el.running_var.clone()
    el.configure(5)
    el.train()
    x = torch.randn(4, 5, 3, 3) * 3 + 2
    el(x)
    assert torch.equal(el.running_mean[5:], before_mean[5:])
    assert torch.equal(el.running_var[5:], before_var[5:])
    batch_mean = x.mean(dim=(0, 2, 3))
    batch_var = x.transpose(0, 1).reshape(5, -1).var(dim=1)  # unbiased, as torch's BN
    assert _close(el.running_mean[:5], 0.9 * before_mean[:5] + 0.1 * batch_mean)
    assert _close(el.running_var[:5], 0.9 * before_var[:5] + 0.1 * batch_var)
    assert int(el.num_batches_tracked) == 1
    state = el.active_state()
    assert state["running_mean"].shape == (5,)
    assert state["running_mean"].data_ptr() == el.running_mean.data_ptr()  # a view


def test_bn_eval_does_not_touch_stats():
    el, _ = _bn_pair(6)
    el.eval()
    before = el.running_mean.clone()
    el(torch.randn(2, 6, 3, 3) + 5)
    assert torch.equal(el.running_mean, before) and int(el.num_batches_tracked) == 0


# ---- recalibration -----------------------------------------------------------------------------
class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = ElasticConv2d(3, 8, 3)
        self.ebn = ElasticBatchNorm2d(8, momentum=0.3)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        return self.ebn(self.conv(self.bn(x)))


def _stats(t: torch.Tensor):
    c = t.shape[1]
    flat = t.transpose(0, 1).reshape(c, -1)
    return flat.mean(dim=1), flat.var(dim=1)


@pytest.mark.parametrize("start_training", [False, True])
def test_recalibrate_is_cumulative_average(start_training):
    torch.manual_seed(4)
    net = _Net()
    net.conv.configure(3, 5, 3)
    net.ebn.configure(5)
    with torch.no_grad():  # stale statistics that must be thrown away
        for bn in (net.ebn, net.bn):
            bn.running_mean.fill_(7.0)
            bn.running_var.fill_(9.0)
    net.train(start_training)
    batches = [torch.randn(5, 3, 6, 6) * (i + 1) + i for i in range(4)]

    # Expected statistics, computed independently: means over per-batch statistics. The
    # plain BN normalises with batch statistics in train mode, so feed the conv with those.
    plain_means, plain_vars, el_means, el_vars = [], [], [], []
    with torch.no_grad():
        for b in batches:
            m, v = _stats(b)
            plain_means.append(m)
            plain_vars.append(v)
            normed = nn.functional.batch_norm(b, None, None, net.bn.weight, net.bn.bias,
                                              True, 0.0, net.bn.eps)
            m, v = _stats(net.conv(normed))
            el_means.append(m)
            el_vars.append(v)

    calls = []

    def forward(model, batch):
        calls.append(batch.shape)
        model(batch)

    recalibrate_batchnorm(net, batches, forward)
    assert len(calls) == 4
    assert net.ebn.momentum == 0.3 and net.bn.momentum == 0.1  # restored
    assert net.training is start_training
    assert _close(net.bn.running_mean, torch.stack(plain_means).mean(0))
    assert _close(net.bn.running_var, torch.stack(plain_vars).mean(0))
    assert torch.allclose(net.ebn.running_mean[:5], torch.stack(el_means).mean(0), atol=1e-4)
    assert torch.allclose(net.ebn.running_var[:5], torch.stack(el_vars).mean(0), atol=1e-4,
                          rtol=1e-4)
    # inactive channels were reset, not left stale
    assert torch.equal(net.ebn.running_mean[5:], torch.zeros(3))
    assert torch.equal(net.ebn.running_var[5:], torch.ones(3))
    assert int(net.ebn.num_batches_tracked) == 4


def test_recalibrate_single_batch_equals_batch_stats():
    bn = ElasticBatchNorm2d(4)
    x = torch.randn(8, 4, 2, 2) * 3 - 1
    recalibrate_batchnorm(nn.Sequential(bn), [x], lambda m, b: m(b))
    m, v = _stats(x)
    assert _close(bn.running_mean, m) and _close(bn.running_var, v)
    assert bn.momentum == 0.1
