"""raynas.training: schedule, samplers, losses and one training step (no Ray, no dist)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from raynas.config import DataConfig, TrainConfig
from raynas.data import load_data
from raynas.supernets import create_supernet
from raynas.training.loop import build_optimizer, lr_at, quick_accuracy, train_step
from raynas.training.losses import kd_kl
from raynas.training.samplers import SAMPLERS, SandwichSampler, UniformSampler


# ---- learning-rate schedule --------------------------------------------------------------------
class TestLr:
    CFG = TrainConfig(lr=0.1, epochs=10, warmup_epochs=2)
    SPE = 5  # steps per epoch: warm-up 10 steps, 50 in all

    def test_warmup(self):
        lrs = [lr_at(self.CFG, s, self.SPE) for s in range(10)]
        assert lrs[0] == pytest.approx(0.1 / 10)
        assert lrs[9] == pytest.approx(0.1)
        assert all(a < b for a, b in zip(lrs, lrs[1:]))
        assert lrs[4] == pytest.approx(0.05)

    def test_cosine(self):
        assert lr_at(self.CFG, 10, self.SPE) == pytest.approx(0.1)  # peak right after warm-up
        assert lr_at(self.CFG, 30, self.SPE) == pytest.approx(0.05)  # half-way: cos(pi/2)
        assert lr_at(self.CFG, 20, self.SPE) == pytest.approx(
            0.05 * (1 + math.cos(math.pi * 0.25)))
        assert lr_at(self.CFG, 50, self.SPE) == pytest.approx(0.0, abs=1e-12)
        assert lr_at(self.CFG, 80, self.SPE) == pytest.approx(0.0, abs=1e-12)  # clamped
        lrs = [lr_at(self.CFG, s, self.SPE) for s in range(10, 51)]
        assert all(a >= b for a, b in zip(lrs, lrs[1:]))
        assert lr_at(self.CFG, 49, self.SPE) > 0

    def test_no_warmup(self):
        cfg = TrainConfig(lr=0.2, epochs=4, warmup_epochs=0)
        assert lr_at(cfg, 0, 10) == pytest.approx(0.2)
        assert lr_at(cfg, 40, 10) == pytest.approx(0.0, abs=1e-12)


# ---- samplers ----------------------------------------------------------------------------------
class TestSamplers:
    def test_sandwich_order(self, digits_space):
        sampler = SandwichSampler(digits_space, num_subnets=5, seed=0)
        for step in range(20):
            archs = sampler.sample(step)
            assert len(archs) == 5
            assert archs[0] == digits_space.largest()
            assert archs[-1] == digits_space.smallest()
            assert all(digits_space.contains(a) for a in archs)

    def test_sandwich_deterministic_per_step(self, digits_space):
        a = SandwichSampler(digits_space, 4, seed=1)
        b = SandwichSampler(digits_space, 4, seed=1)
        assert [a.sample(s) for s in range(10)] == [b.sample(s) for s in range(10)]
        assert a.sample(3) == a.sample(3)  # no hidden state between calls
        middles = {tuple(a.sample(s)[1:3]) for s in range(10)}
        assert len(middles) > 5  # different steps, different random subnets
        c = SandwichSampler(digits_space, 4, seed=2)
        assert [a.sample(s) for s in range(5)] != [c.sample(s) for s in range(5)]

    def test_sandwich_small_n(self, tiny_space):
        assert SandwichSampler(tiny_space, 1).sample(0) == [tiny_space.largest()]
        assert SandwichSampler(tiny_space, 2).sample(7) == [tiny_space.largest(),
                                                            tiny_space.smallest()]

    def test_uniform(self, digits_space):
        s = UniformSampler(digits_space, 3, seed=0)
        archs = s.sample(4)
        assert len(archs) == 3 and all(digits_space.contains(a) for a in archs)
        assert s.sample(4) == archs and s.sample(5) != archs
        assert set(SAMPLERS) == {"sandwich", "uniform"}


# ---- losses ------------------------------------------------------------------------------------
def test_kd_kl():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 10, generator=g)
    assert kd_kl(logits, F.softmax(logits, dim=-1)).abs().item() < 1e-6
    other = torch.randn(6, 10, generator=g)
    teacher = F.softmax(other, dim=-1)
    expected = (teacher * (teacher.log() - F.log_softmax(logits, -1))).sum(-1).mean()
    got = kd_kl(logits, teacher)
    assert got.item() > 0.01
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


# ---- optimizer ---------------------------------------------------------------------------------
def test_build_optimizer(tiny_space):
    net = create_supernet(tiny_space)
    cfg = TrainConfig(lr=0.3, weight_decay=1e-3, momentum=0.8)
    opt = build_optimizer(net, cfg)
    assert isinstance(opt, torch.optim.SGD)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 1e-3 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() > 1 for p in decay["params"])
    assert all(p.dim() <= 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(net.parameters()))
    assert decay["lr"] == 0.3 and decay["momentum"] == 0.8 and decay["nesterov"] is True
    adam = build_optimizer(net, TrainConfig(optimizer="adamw", lr=0.01))
    assert isinstance(adam, torch.optim.AdamW) and adam.param_groups[0]["lr"] == 0.01
    plain = build_optimizer(net, TrainConfig(momentum=0.0))
    assert plain.param_groups[0]["nesterov"] is False


# ---- one training step -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def batch():
    splits = load_data(DataConfig(), (1, 8, 8))
    return splits, splits.x_train[:64], splits.y_train[:64]


def _train(space, x, y, cfg, steps=20, seed=0):
    torch.manual_seed(seed)
    net = create_supernet(space).train()
    opt = build_optimizer(net, cfg)
    sampler = SandwichSampler(space, cfg.num_subnets, seed)
    history = [train_step(net, opt, sampler, x, y, s, cfg, world_size=1) for s in range(steps)]
    return net, history


def test_train_step_reduces_loss(tiny_space, batch):
    _, x, y = batch
    net, history = _train(tiny_space, x, y, TrainConfig(lr=0.05))
    assert set(history[0]) == {"loss_largest", "loss_smallest"}
    first, last = history[0]["loss_largest"], history[-1]["loss_largest"]
    assert first > 2.0  # about log(10): untrained
    assert last < 0.8 * first
    # the final supernet's largest subnet fits the batch better than a fresh one
    with torch.no_grad():
        net.set_arch(tiny_space.largest())
        trained = F.cross_entropy(net(x), y).item()
        torch.manual_seed(0)
        fresh = create_supernet(tiny_space).train()
        assert trained < F.cross_entropy(fresh(x), y).item()


def test_train_step_is_deterministic(tiny_space, batch):
    _, x, y = batch
    cfg = TrainConfig(lr=0.05)
    _, h1 = _train(tiny_space, x, y, cfg, steps=3)
    _, h2 = _train(tiny_space, x, y, cfg, steps=3)
    assert h1 == h2


def test_train_step_without_distillation(tiny_space, batch):
    _, x, y = batch
    _, kd = _train(tiny_space, x, y, TrainConfig(lr=0.05, distill="kl"), steps=1)
    _, ce = _train(tiny_space, x, y, TrainConfig(lr=0.05, distill="none"), steps=1)
    assert kd[0]["loss_largest"] == pytest.approx(ce[0]["loss_largest"])
    # KL to a near-uniform teacher is tiny; CE of an untrained net is about log(10)
    assert kd[0]["loss_smallest"] < 0.5 < ce[0]["loss_smallest"]


def test_train_step_single_subnet(tiny_space, batch):
    _, x, y = batch
    _, history = _train(tiny_space, x, y, TrainConfig(lr=0.05, num_subnets=1), steps=2)
    assert set(history[0]) == {"loss_largest"}


def test_train_step_moves_shared_weights(tiny_space, batch):
    _, x, y = batch
    torch.manual_seed(0)
    net = create_supernet(tiny_space).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    cfg = TrainConfig(lr=0.05, num_subnets=1)  # largest subnet only
    train_step(net, build_optimizer(net, cfg), SandwichSampler(tiny_space, 1), x, y, 0, cfg, 1)
    after = net.state_dict()
    assert not torch.equal(after["head.weight"], before["head.weight"])
    assert not torch.equal(after["stages.0.0.conv.weight"], before["stages.0.0.conv.weight"])


def test_quick_accuracy(tiny_space, batch):
    splits, _, _ = batch
    net = create_supernet(tiny_space).train()
    acc = quick_accuracy(net, tiny_space.smallest(), splits, calib_batches=1, batch=64)
    assert 0.0 <= acc <= 1.0
    assert net.training and net.arch == tiny_space.smallest()
