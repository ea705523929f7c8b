"""raynas.training: schedule, samplers, losses and one training step (no Ray, no dist)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from raynas.config import TrainConfig
from raynas.supernets import create_supernet
from raynas.tasks import build_task, make_loader, sample_batches
from raynas.training.loop import quick_metric, train_step
from raynas.training.losses import DISTILLERS, kd_kl
from raynas.training.optim import build_optimizer, lr_at, restore_optimizer
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
        assert {"sandwich", "uniform", "largest_first"} <= set(SAMPLERS.names())


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
    cfg = TrainConfig(lr=0.3, weight_decay=1e-3, optimizer={"name": "sgd",
                                                            "options": {"momentum": 0.8}})
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
    plain = build_optimizer(net, TrainConfig(optimizer={"name": "sgd",
                                                        "options": {"momentum": 0.0}}))
    assert plain.param_groups[0]["nesterov"] is False


def test_a_restored_optimizer_keeps_this_jobs_hyperparameters_and_the_saved_moments(tiny_space):
    """A checkpoint saved with weight decay 1e-2 and momentum 0.5, resumed by a job that asks
    for 1e-4 and 0.9 (a new train.weight_decay, a population-based-training trial on its
    donor's weights): the job's values are used, the saved momentum buffers are kept."""
    net = create_supernet(tiny_space)
    old = build_optimizer(net, TrainConfig(lr=0.2, weight_decay=1e-2, optimizer={
        "name": "sgd", "options": {"momentum": 0.5}}))
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    old.step()
    saved = old.state_dict()
    new = build_optimizer(net, TrainConfig(lr=0.05, weight_decay=1e-4, optimizer={
        "name": "sgd", "options": {"momentum": 0.9}}))
    plain = build_optimizer(net, TrainConfig(lr=0.05, weight_decay=1e-4))
    plain.load_state_dict(saved)
    assert plain.param_groups[0]["weight_decay"] == 1e-2  # what load_state_dict alone does
    restore_optimizer(new, saved)
    decay, no_decay = new.param_groups
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert decay["momentum"] == 0.9 and decay["lr"] == 0.05
    first = next(p for p in net.parameters() if p.dim() > 1)
    assert torch.equal(new.state[first]["momentum_buffer"], old.state[first]["momentum_buffer"])


# ---- one training step -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def batch(digits_data):
    task, data = digits_data
    first = next(iter(make_loader(data.train, 64)))
    return (task, data), first["images"], first["labels"]


def _train(space, x, y, cfg, steps=20, seed=0, sampler=None):
    torch.manual_seed(seed)
    task = build_task(space)
    net = create_supernet(space).train()
    opt = build_optimizer(net, cfg)
    sampler = sampler or SandwichSampler(space, cfg.num_subnets, seed)
    distiller = DISTILLERS.create(cfg.distill.name, cfg.distill.options)
    b = {"images": x, "labels": y}
    history = [train_step(net, task, opt, sampler, distiller, b, s, cfg, world_size=1)
               for s in range(steps)]
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
    train_step(net, build_task(tiny_space), build_optimizer(net, cfg),
               SandwichSampler(tiny_space, 1), DISTILLERS.create("kl"),
               {"images": x, "labels": y}, 0, cfg, 1)
    after = net.state_dict()
    assert not torch.equal(after["head.weight"], before["head.weight"])
    assert not torch.equal(after["stages.0.0.conv.weight"], before["stages.0.0.conv.weight"])


def test_quick_metric(tiny_space, batch):
    (task, data), x, y = batch
    torch.manual_seed(0)
    net = create_supernet(tiny_space).train()
    calib = sample_batches(data.train, 1, 64)
    val = list(make_loader(data.val, 512))
    before = quick_metric(net, task, tiny_space.largest(), calib, val)
    assert 0.02 < before < 0.3  # untrained: about chance (0.1) on 10 classes
    cfg = TrainConfig(lr=0.05, num_subnets=1)
    opt = build_optimizer(net, cfg)
    for step, b in zip(range(40), make_loader(data.train, 64, shuffle=True)):
        train_step(net, task, opt, SandwichSampler(tiny_space, 1), DISTILLERS.create("none"),
                   b, step, cfg, 1)
    after = quick_metric(net, task, tiny_space.largest(), calib, val)
    assert after > before + 0.3  # 40 steps of the largest subnet learn digits
    assert net.training and net.arch == tiny_space.largest()


def test_uniform_sampler_never_distils_from_a_random_subnet(tiny_space, batch):
    # With uniform sampling no subnet of a step is the largest, so KL distillation would
    # teach from a random subnet: the config refuses the pair.
    from raynas.config import build_config
    from raynas.errors import ConfigError

    doc = {"name": "j", "space": "tiny_cnn", "train": {"sampler": "uniform", "distill": "kl"}}
    with pytest.raises(ConfigError, match="train.distill = 'kl' distils from the largest "
                                          "subnet, but train.sampler = 'uniform'"):
        build_config(doc)
    build_config({**doc, "train": {"sampler": "uniform", "distill": "none"}})
    build_config({**doc, "train": {"sampler": "largest_first", "distill": "kl"}})


def test_largest_first_teaches_from_the_largest(tiny_space, batch):
    _, x, y = batch
    cfg = TrainConfig(lr=0.05, sampler="largest_first", num_subnets=3)
    sampler = SAMPLERS.create("largest_first", space=tiny_space, num_subnets=3, seed=0)
    _, history = _train(tiny_space, x, y, cfg, steps=1, sampler=sampler)
    assert set(history[0]) == {"loss_largest", "loss_smallest"}
    # The first loss is the largest subnet's cross-entropy (about log 10, untrained).
    assert history[0]["loss_largest"] == pytest.approx(2.3, abs=0.3)
    assert all(a == tiny_space.largest() for a in [sampler.sample(s)[0] for s in range(5)])


def test_uniform_sampler_losses_are_not_called_largest(tiny_space, batch):
    _, x, y = batch
    cfg = TrainConfig(lr=0.05, sampler="uniform", distill="none", num_subnets=2)
    sampler = UniformSampler(tiny_space, 2, 0)
    _, history = _train(tiny_space, x, y, cfg, steps=1, sampler=sampler)
    assert set(history[0]) == {"loss_first", "loss_last"}


def test_sampler_feedback_and_state_reach_the_sampler(tiny_space, batch):
    _, x, y = batch

    class Recording(UniformSampler):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.seen = []

        def feedback(self, step, archs, losses):
            self.seen.append((step, len(archs), losses))

    sampler = Recording(tiny_space, 2, 0)
    cfg = TrainConfig(lr=0.05, distill="none", num_subnets=2)
    _train(tiny_space, x, y, cfg, steps=3, sampler=sampler)
    assert [s for s, _, _ in sampler.seen] == [0, 1, 2]
    assert all(n == 2 and len(losses) == 2 and all(v > 0 for v in losses)
               for _, n, losses in sampler.seen)


def test_the_controller_polls_often_unless_the_user_says_otherwise(monkeypatch):
    # A worker's report waits for the controller's next poll: at Ray Train's default (2 s)
    # every sub-second epoch took 2 s. The interval is set for fit() only, and a user's own
    # setting is kept.
    import os

    from raynas.training.trainer import _POLL_ENV, POLL_INTERVAL_S, _controller_poll

    monkeypatch.delenv(_POLL_ENV, raising=False)
    with _controller_poll(POLL_INTERVAL_S):
        assert float(os.environ[_POLL_ENV]) == POLL_INTERVAL_S < 2.0
    assert _POLL_ENV not in os.environ
    monkeypatch.setenv(_POLL_ENV, "5")
    with _controller_poll(POLL_INTERVAL_S):
        assert os.environ[_POLL_ENV] == "5"
    assert os.environ[_POLL_ENV] == "5"
