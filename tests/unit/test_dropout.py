"""Dropout per subnet (``train.dropout``): the policies, the rate the loop sets during a step
for every family, and no dropout in evaluation or export; the loop's schedule choice."""

from __future__ import annotations

import pytest
import torch

from raynas.config import TrainConfig
from raynas.errors import ConfigError
from raynas.export import extract
from raynas.latency.measure import count_params
from raynas.latency.models import flops_of
from raynas.nn import SubnetDropout, dropout_rates, set_dropout
from raynas.supernets import build_static, create_supernet, family_names
from raynas.tasks import build_task, example_args, make_loader
from raynas.training.dropout import DROPOUTS
from raynas.training.loop import quick_metric, train_epoch, train_step
from raynas.training.losses import DISTILLERS
from raynas.training.optim import build_optimizer, lr_at
from raynas.training.samplers import SandwichSampler
from raynas.training.scaled_adam import Eden

BUILTIN = ["cnn", "resnet20_pool", "seq_conv", "vit"]


def _params(space, arch) -> int:
    return count_params(build_static(space, arch))


def _recorder(net):
    """Record (rate, training) of every SubnetDropout call, in call order."""
    seen: list[tuple[float, bool]] = []
    for m in net.modules():
        if isinstance(m, SubnetDropout):
            m.register_forward_pre_hook(lambda mod, _: seen.append((mod.p, mod.training)))
    return seen


# ---- policies ------------------------------------------------------------------------------
def test_fixed_and_adaptive_rates(tiny_space):
    assert DROPOUTS.create("fixed", {}, space=tiny_space).rate(tiny_space.smallest()) == 0.0
    assert not DROPOUTS.create("fixed", {}, space=tiny_space).active
    assert DROPOUTS.create("fixed", {"p": 0.3}, space=tiny_space).rate(
        tiny_space.smallest()) == 0.3
    big, small = tiny_space.largest(), tiny_space.smallest()
    adaptive = DROPOUTS.create("adaptive", {"p_max": 0.2}, space=tiny_space)
    assert adaptive.rate(big) == pytest.approx(0.2)
    expected = 0.2 * _params(tiny_space, small) / _params(tiny_space, big)
    assert adaptive.rate(small) == pytest.approx(expected)
    assert 0 < adaptive.rate(small) < 0.1  # the smallest has far fewer parameters
    by_flops = DROPOUTS.create("adaptive", {"p_max": 0.2, "measure": "flops"}, space=tiny_space)
    flops = flops_of(tiny_space)
    assert by_flops.rate(small) == pytest.approx(0.2 * flops(small) / flops(big))


@pytest.mark.parametrize("options, needle", [
    ({"p_max": 1.5}, "train.dropout.options.p_max = 1.5: must be a number in [0, 1)"),
    ({"measure": "width"}, "train.dropout.options.measure = 'width': choose one of params"),
])
def test_adaptive_options_checked(options, needle):
    with pytest.raises(ConfigError) as info:
        DROPOUTS.create("adaptive", options, space=None)
    assert needle in str(info.value)


# ---- every family has a dropout site the loop drives ---------------------------------------
@pytest.mark.parametrize("family", BUILTIN)
def test_family_dropout_site(family, space_of):
    assert family in family_names()
    space = space_of(family)
    task = build_task(space)
    torch.manual_seed(0)
    net = create_supernet(space).train()
    assert len(dropout_rates(net)) >= 1 and set(dropout_rates(net)) == {0.0}
    inputs = example_args(space, 4, task)
    net.set_arch(space.largest())
    state = torch.random.get_rng_state()
    with torch.no_grad():
        plain = net(*inputs)
        assert torch.equal(torch.random.get_rng_state(), state)  # rate 0 draws nothing
        set_dropout(net, 0.5)
        dropped = net(*inputs)
        set_dropout(net, 0.0)
        again = net(*inputs)
        net.eval()  # eval mode: no dropout even at rate 0.5
        evaluated = net(*inputs)
        set_dropout(net, 0.5)
        assert torch.equal(net(*inputs), evaluated)
    assert not torch.allclose(plain, dropped)  # the rate changes what the net computes
    assert torch.equal(plain, again)
    # export: the static model computes the supernet's eval output, and has no dropout
    set_dropout(net, 0.5)
    static = extract(net, space, space.largest())
    assert not any(isinstance(m, SubnetDropout) for m in static.modules())
    with torch.no_grad():
        torch.testing.assert_close(static(*inputs), evaluated, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def digits_batch(digits_data):
    task, data = digits_data
    return task, data, next(iter(make_loader(data.train, 64)))


def test_training_step_sets_each_subnets_rate(tiny_space, digits_batch):
    task, data, batch = digits_batch
    torch.manual_seed(0)
    net = create_supernet(tiny_space).train()
    cfg = TrainConfig(lr=0.05, num_subnets=2, dropout={"name": "adaptive",
                                                       "options": {"p_max": 0.3}})
    policy = DROPOUTS.create(cfg.dropout.name, cfg.dropout.options, space=tiny_space)
    seen = _recorder(net)
    train_step(net, task, build_optimizer(net, cfg), SandwichSampler(tiny_space, 2, 0),
               DISTILLERS.create("kl", {}), batch, 0, cfg, 1, dropout=policy)
    small = 0.3 * _params(tiny_space, tiny_space.smallest()) / _params(
        tiny_space, tiny_space.largest())
    assert [r for r, _ in seen] == pytest.approx([0.3, small])  # largest, then smallest
    assert all(training for _, training in seen)
    assert set(dropout_rates(net)) == {0.0}  # reset after the step
    # Evaluation runs in eval mode: the modules see training=False.
    seen.clear()
    calib = [batch]
    quick_metric(net, task, tiny_space.largest(), calib, list(make_loader(data.val, 256)))
    assert any(not training for _, training in seen)
    assert all(rate == 0.0 for rate, training in seen if training)  # BN recalibration


def test_no_dropout_is_bit_identical(tiny_space, digits_batch):
    task, _, batch = digits_batch

    def run(dropout):
        torch.manual_seed(0)
        net = create_supernet(tiny_space).train()
        cfg = TrainConfig(lr=0.05)
        opt = build_optimizer(net, cfg)
        for s in range(2):
            train_step(net, task, opt, SandwichSampler(tiny_space, 4, 0),
                       DISTILLERS.create("kl", {}), batch, s, cfg, 1, dropout=dropout)
        return [p.detach().clone() for p in net.parameters()], torch.random.get_rng_state()

    (before, rng_before), (fixed, rng_fixed) = run(None), run(
        DROPOUTS.create("fixed", {}, space=tiny_space))
    assert all(torch.equal(a, b) for a, b in zip(before, fixed))
    assert torch.equal(rng_before, rng_fixed)
    adaptive, _ = run(DROPOUTS.create("adaptive", {"p_max": 0.2}, space=tiny_space))
    assert not all(torch.equal(a, b) for a, b in zip(before, adaptive))


# ---- the loop's learning-rate schedule -----------------------------------------------------
@pytest.mark.parametrize("schedule", ["warmup_cosine", "eden"])
def test_train_epoch_follows_the_schedule(tiny_space, digits_batch, schedule):
    task, _, batch = digits_batch
    torch.manual_seed(0)
    net = create_supernet(tiny_space).train()
    cfg = TrainConfig(lr=0.045, epochs=3, warmup_epochs=1, num_subnets=1,
                      optimizer="scaled_adam" if schedule == "eden" else "sgd",
                      schedule={"name": schedule, "options": {"lr_batches": 4, "lr_epochs": 1}}
                      if schedule == "eden" else schedule)
    opt = build_optimizer(net, cfg)
    seen: list[float] = []
    hook = lambda step, losses: seen.append(opt.param_groups[0]["lr"])  # noqa: E731
    for epoch in range(2):
        train_epoch(net, task, [batch] * 3, opt, SandwichSampler(tiny_space, 1, 0),
                    DISTILLERS.create("none", {}), cfg, epoch, 3, hooks=[hook])
    if schedule == "eden":
        eden = Eden(0.045, lr_batches=4, lr_epochs=1)
        assert seen == pytest.approx([eden(s, s // 3) for s in range(6)])
    else:
        assert seen == [lr_at(cfg, s, 3) for s in range(6)]


def test_a_family_without_a_dropout_site_is_refused_when_the_job_loads(monkeypatch, repo_root):
    """The plugin family has no SubnetDropout: asking it to drop out is a ConfigError before
    any work (not a failure in every training worker), while the default (rate 0) loads."""
    import sys

    from raynas.config import load_config
    from raynas.pipeline.job import Job
    from raynas.supernets import FAMILIES

    FAMILIES.names()
    monkeypatch.syspath_prepend(str(repo_root / "tests" / "plugin"))
    monkeypatch.setattr(FAMILIES, "_loaded", False)
    monkeypatch.setattr(FAMILIES, "_items", dict(FAMILIES._items))
    try:
        job = repo_root / "tests" / "plugin" / "plugin_job.yaml"
        Job(load_config(job))
        with pytest.raises(ConfigError, match="train.dropout = 'adaptive': family 'plugin_mlp' "
                                              "has no dropout site"):
            Job(load_config(job, ["train.dropout.name=adaptive"]))
    finally:
        sys.modules.pop("raynas_plugin_mlp", None)
