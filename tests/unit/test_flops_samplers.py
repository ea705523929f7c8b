"""raynas.training.flops_samplers and level_samplers: BestUp, complexity-aware and
performance-aware sampling (no Ray, no process group), the gradient-cosine diagnostic and the
sampler's place in a step."""

from __future__ import annotations

import pytest
import torch

from raynas.config import TrainConfig
from raynas.errors import ConfigError
from raynas.supernets import create_supernet
from raynas.training.diagnostics import GradientCosine
from raynas.training.flops_samplers import BestUpSampler
from raynas.training.flops_table import counted_flops
from raynas.training.level_samplers import ComplexityAwareSampler, PerformanceAwareSampler
from raynas.training.loop import train_epoch
from raynas.training.losses import DISTILLERS
from raynas.training.optim import build_optimizer
from raynas.training.samplers import SAMPLERS, DrawLog, SandwichSampler


def _fake_losses(archs):
    """A deterministic 'loss' per arch, as every worker would see it after the all-reduce."""
    return [int(a.key[:6], 16) / 2**24 for a in archs]


def test_registered():
    assert {"bestup", "worstup", "complexity_aware", "performance_aware"} <= set(
        SAMPLERS.names())


def test_sandwich_always_has_both_ends(digits_space):
    s = SandwichSampler(digits_space, 4, seed=3)
    for step in range(50):
        archs = s.sample(step)
        assert archs[0] == digits_space.largest() and archs[-1] == digits_space.smallest()


# ---- BestUp ------------------------------------------------------------------------------------
def test_bestup_picks_the_argmin_loss_candidate_of_the_target_bucket(tiny_space):
    s = BestUpSampler(tiny_space, 4, seed=0, candidates=3, buckets=6, table_size=300)
    seen: list[list] = []

    def score(archs):
        seen.append(list(archs))
        return _fake_losses(archs)

    for step in range(20):
        archs = s.sample(step, score=score)
        assert archs[0] == tiny_space.largest() and archs[-1] == tiny_space.smallest()
        cands = seen[-1]
        assert len(cands) == 2 * 3  # two middle subnets, three candidates each
        for k, pick in enumerate(archs[1:3]):
            group = cands[3 * k:3 * k + 3]
            assert len({s.bucket_of(a) for a in group}) == 1  # candidates hit one bucket
            assert pick == min(group, key=lambda a: _fake_losses([a])[0])
    worst = SAMPLERS.create("worstup", {"buckets": 6, "table_size": 300}, space=tiny_space,
                            num_subnets=3, seed=0)
    pick = worst.sample(0, score=score)[1]
    assert pick == max(seen[-1], key=lambda a: _fake_losses([a])[0])


def test_bestup_bucket_prior_follows_the_table(tiny_space):
    s = BestUpSampler(tiny_space, 3, seed=1, buckets=4, table_size=400)
    flops = counted_flops(tiny_space)
    buckets = s._prior()
    assert sum(len(b) for b in buckets) == 400
    edges = [(min(map(flops, b)), max(map(flops, b))) for b in buckets if b]
    assert all(a[1] <= b[0] for a, b in zip(edges, edges[1:]))  # buckets ordered by FLOPs


# ---- complexity-aware ---------------------------------------------------------------------------
def test_complexity_aware_keeps_the_flops_step_bound_and_covers_every_level(tiny_space):
    s = ComplexityAwareSampler(tiny_space, 4, seed=0, levels=4, table_size=50)
    flops = counted_flops(tiny_space)
    levels, previous, visited = s.levels, None, set()
    assert [lv.target for lv in levels] == sorted(lv.target for lv in levels)
    for step in range(200):
        archs = s.sample(step)
        lv = levels[s.level]
        if previous is not None:
            assert abs(s.level - previous) <= 1
        previous = s.level
        visited.add(s.level)
        for a in archs:  # every subnet within its level's bound of the level's target
            assert abs(flops(a) - lv.target) <= lv.bound
        assert archs[-1] == lv.smallest and flops(archs[-1]) == min(lv.flops)
    assert visited == set(range(4))


def test_complexity_aware_modes_and_errors(tiny_space):
    s = ComplexityAwareSampler(tiny_space, 3, seed=0, table_size=20,
                               modes=["max", "uniform", "min"])
    assert s.teacher_first and s.sample(0)[0] == tiny_space.largest()
    assert ComplexityAwareSampler.teaches_first({"modes": ["max", "min"]})
    assert not ComplexityAwareSampler.teaches_first({})
    with pytest.raises(ConfigError, match=r"train.sampler.options.modes = \['min'\].*"
                                          r"train.num_subnets = 2"):
        ComplexityAwareSampler(tiny_space, 2, modes=["min"])
    with pytest.raises(ConfigError, match=r"'max' only first"):
        ComplexityAwareSampler(tiny_space, 2, modes=["uniform", "max"])
    with pytest.raises(ConfigError, match=r"train.sampler.options.levels = 0: must be an "
                                          r"integer >= 1"):
        SAMPLERS.create("complexity_aware", {"levels": 0}, space=tiny_space, num_subnets=4,
                        seed=0)


def test_complexity_aware_resume_continues_identically(tiny_space):
    a = ComplexityAwareSampler(tiny_space, 4, seed=5, table_size=20)
    straight = [a.sample(s) for s in range(30)]
    b = ComplexityAwareSampler(tiny_space, 4, seed=5, table_size=20)
    first = [b.sample(s) for s in range(12)]
    c = ComplexityAwareSampler(tiny_space, 4, seed=5, table_size=20)
    c.load_state_dict(b.state_dict())
    assert first + [c.sample(s) for s in range(12, 30)] == straight


# ---- performance-aware --------------------------------------------------------------------------
def _perf(space, **kw):
    opts = {"levels": 2, "table_size": 60, "bank_size": 4, "seed": 0, **kw}
    return PerformanceAwareSampler(space, 4, **opts)


def _run(s, steps, losses=_fake_losses, start=0):
    out = []
    for step in range(start, start + steps):
        archs = s.sample(step, score=losses)
        s.feedback(step, archs, losses(archs))
        out.append(archs)
    return out


def test_performance_aware_bank_fills_and_replaces_the_worst(tiny_space):
    s = _perf(tiny_space)
    _run(s, 40)
    for bank in s.banks:
        assert 0 < len(bank) <= 4
        assert len({a for a, _ in bank}) == len(bank)  # no arch twice
    bank = s.banks[0]
    if len(bank) < 4:  # fill it by hand to test the replacement
        bank.extend((tiny_space.sample(i), -10.0 - i) for i in range(4 - len(bank)))
    worst = min(bank, key=lambda e: e[1])
    new = next(a for a in s.levels[0].archs if a not in {x for x, _ in bank})
    s._remember(0, new, worst[1] + 100)
    assert (new, worst[1] + 100) in bank and worst not in bank and len(bank) == 4
    other = next(a for a in s.levels[0].archs if a not in {x for x, _ in bank})
    s._remember(0, other, -1e9)  # worse than all: not taken
    assert other not in {x for x, _ in bank} and len(bank) == 4
    s._remember(0, new, -5.0)  # one already there gets its new score
    assert (new, -5.0) in bank and len(bank) == 4


def test_performance_aware_exploits_high_scores_more_often(tiny_space):
    s = _perf(tiny_space, levels=1, p_bank=1.0, p_bank_max=1.0)
    s.start_epoch(0, 1)
    distinct = list(dict.fromkeys(s.levels[0].archs))
    best, others = distinct[0], distinct[1:4]
    s.banks = [[(best, 0.0)] + [(a, -3.0) for a in others]]
    counts = {a: 0 for a in [best, *others]}
    for step in range(300):
        for a in s.sample(step)[:3]:
            counts[a] += 1
    assert s.metrics()["sampler.exploit_share"] == 1.0
    assert counts[best] > 3 * max(counts[a] for a in others)  # e^3 = 20x as likely


def test_performance_aware_prefers_width_over_depth(tiny_space):
    s = _perf(tiny_space, candidates=5)
    deep = tiny_space.validate({"s1_depth": 2, "s1_width": 8, "s1_kernel": [3, 3],
                                "s2_depth": 2, "s2_width": 8, "s2_kernel": [3, 3]})
    wide = tiny_space.validate({"s1_depth": 1, "s1_width": 16, "s1_kernel": [3],
                                "s2_depth": 1, "s2_width": 16, "s2_kernel": [3]})
    assert s._depths == {"s1_depth", "s2_depth"}
    assert s._wide_first([deep, wide]) == wide and s._wide_first([wide, deep]) == wide


def test_performance_aware_p_bank_schedule_and_state_round_trip(tiny_space):
    s = _perf(tiny_space)
    ps = []
    for epoch in range(8):
        s.start_epoch(epoch, 8)
        ps.append(round(s.p_bank, 6))
    assert ps == [0.2, 0.2, 0.35, 0.35, 0.5, 0.5, 0.65, 0.65]
    a, b = _perf(tiny_space), _perf(tiny_space)
    straight = _run(a, 40)
    first = _run(b, 15)
    c = _perf(tiny_space)
    c.load_state_dict(b.state_dict())
    assert c.banks == b.banks and c.level == b.level
    assert first + _run(c, 25, start=15) == straight


def test_same_scores_same_draws_on_every_worker(tiny_space):
    """Two "workers": same seed, same (all-reduced) scores -> the same subnets every step."""
    for name, opts in (("bestup", {"table_size": 100}),
                       ("complexity_aware", {"table_size": 20}),
                       ("performance_aware", {"table_size": 20, "bank_size": 4})):
        w0, w1 = (SAMPLERS.create(name, opts, space=tiny_space, num_subnets=4, seed=7)
                  for _ in range(2))
        assert _run(w0, 30) == _run(w1, 30), name


# ---- in a training step ------------------------------------------------------------------------
def _tiny_train(space, batch, sampler, steps, hooks=()):
    torch.manual_seed(0)
    (task, _), x, y = batch
    net = create_supernet(space).train()
    cfg = TrainConfig(lr=0.05, distill="none", num_subnets=sampler.n)
    opt = build_optimizer(net, cfg)
    batches = [{"images": x, "labels": y}] * steps
    train_epoch(net, task, batches, opt, sampler, DISTILLERS.create("none"), cfg, 0, steps,
                hooks=hooks)
    return net


@pytest.fixture(scope="module")
def batch(digits_data):
    from raynas.tasks import make_loader

    task, data = digits_data
    first = next(iter(make_loader(data.train, 32)))
    return (task, data), first["images"], first["labels"]


def test_bestup_in_a_step_scores_with_the_live_model(tiny_space, batch):
    s = DrawLog(BestUpSampler(tiny_space, 3, seed=0, table_size=100))
    _tiny_train(tiny_space, batch, s, 3)
    assert s.metrics()["sampler.pick_gain"] > 0  # the pick beat the candidates' mean
    assert len(s.digest()) == 40


def test_grad_cosine_matches_a_reference(tiny_space, batch):
    flats = []

    def record(step, losses):
        flats.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p))
                                .reshape(-1).double() for p in params]))

    torch.manual_seed(0)
    net = create_supernet(tiny_space).train()
    params = [p for p in net.parameters() if p.requires_grad]
    probe = GradientCosine(params)
    (task, _), x, y = batch
    cfg = TrainConfig(lr=0.05, distill="none", num_subnets=2)
    opt = build_optimizer(net, cfg)
    train_epoch(net, task, [{"images": x, "labels": y}] * 4, opt,
                SAMPLERS.create("uniform", {}, space=tiny_space, num_subnets=2, seed=0),
                DISTILLERS.create("none"), cfg, 0, 4, hooks=[record, probe])
    ref = [float(torch.dot(a, b) / (a.norm() * b.norm())) for a, b in zip(flats, flats[1:])]
    got = probe.metrics()
    assert got["grad_cosine"] == pytest.approx(sum(ref) / 3, rel=1e-9)
    assert -1 <= got["grad_cosine"] <= 1 and probe.metrics() == {}  # reset after reading
    assert TrainConfig().grad_cosine is False
