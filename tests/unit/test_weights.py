"""Weight schemes: the math of each, the export contract for every family x scheme, the
checkpoint round trip, and training that steps only what a scheme trained."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from torch import nn

from raynas.checkpoint import load_checkpoint, save_checkpoint
from raynas.errors import CheckpointError, ConfigError
from raynas.export import extract
from raynas.nn import ElasticLinear
from raynas.space import SearchSpace
from raynas.supernets import create_supernet, family_names
from raynas.tasks import build_task, example_args
from raynas.weights import WEIGHT_SCHEMES, SchemeSupernet
from raynas.weights.balanced import BalancedMixture, balance, marginal_kl
from raynas.weights.mos import ExpertMixer

SCHEMES = {
    "shared": {},
    "mos_layer": {"experts": 3, "hidden": 16},
    "mos_neuron": {"experts": 2, "hidden": 16},
    "balanced_mixture": {"supernets": 3},
}


def _small(space: SearchSpace) -> SearchSpace:
    """``space`` cut to the end values of each dim (the balanced mixture enumerates)."""
    if (space.size() or 10**12) <= 2_000:
        return space
    doc = space.to_dict()
    for dim in doc["dims"].values():
        if "values" in dim:
            dim["values"] = [dim["values"][0], dim["values"][-1]]
        if dim.get("type") == "int":
            dim["high"] = min(dim["high"], dim["low"] + 1)
    return SearchSpace.from_dict(doc)


def _perturbed(net: nn.Module) -> nn.Module:
    # Away from the init (routers start near-uniform, biases at zero): a wrong mix shows.
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    return net.eval()


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("family", family_names())
def test_every_family_exports_under_every_scheme(family, scheme, space_of):
    space = _small(space_of(family))
    torch.manual_seed(0)
    net = _perturbed(create_supernet(space, {"name": scheme, "options": SCHEMES[scheme]}))
    inputs = example_args(space, 4, build_task(space))
    rng = random.Random(0)
    outputs = []
    for arch in [space.largest(), space.smallest(), space.sample(rng), space.sample(rng)]:
        static = extract(net, space, arch)
        assert not any(isinstance(m, (ExpertMixer, SchemeSupernet)) for m in static.modules())
        with torch.no_grad():
            net.set_arch(arch)
            ref = net(*inputs)
            assert (ref - static(*inputs)).abs().max() < 1e-4, arch
        outputs.append(ref)
    assert not torch.allclose(outputs[0], outputs[1])


def test_mixing_weights_sum_to_one_per_layer_and_per_neuron(tiny_space):
    for scheme, shape in (("mos_layer", (3,)), ("mos_neuron", None)):
        net = _perturbed(create_supernet(tiny_space, {"name": scheme, "options":
                                                      {"experts": 3}}))
        net.set_arch(tiny_space.sample(2))
        mixers = [m for m in net.modules() if isinstance(m, ExpertMixer)]
        assert mixers
        for mixer in mixers:
            alpha = mixer.alphas()
            assert alpha.shape == (shape or (mixer.rows, 3))
            assert torch.allclose(alpha.sum(-1), torch.ones(alpha.shape[:-1]))
            assert alpha.min() > 0


def test_one_expert_is_exactly_shared(tiny_space):
    torch.manual_seed(0)
    shared = create_supernet(tiny_space).eval()
    for scheme in ("mos_layer", "mos_neuron"):
        torch.manual_seed(0)
        mos = create_supernet(tiny_space, {"name": scheme, "options": {"experts": 1}}).eval()
        inputs = example_args(tiny_space, 4)
        for arch in (tiny_space.largest(), tiny_space.smallest(), tiny_space.sample(3)):
            shared.set_arch(arch)
            mos.set_arch(arch)
            with torch.no_grad():
                assert torch.equal(shared(*inputs), mos(*inputs))


def test_mixtures_depend_on_the_arch(tiny_space):
    net = _perturbed(create_supernet(tiny_space, {"name": "mos_layer"}))
    mixer = next(m for m in net.modules() if isinstance(m, ExpertMixer))
    net.set_arch(tiny_space.largest())
    a = mixer.alphas().detach().clone()
    net.set_arch(tiny_space.smallest())
    assert not torch.allclose(a, mixer.alphas())


def test_neuron_routing_is_the_papers_front_sliced_router():
    """A width-w slice of a neuron-wise mixed weight equals mixing with the router's last
    layer cut to its first E * w outputs (MoS's LinearSuper router): routing is nested."""
    torch.manual_seed(0)
    op = ElasticLinear(6, 8)
    mixer = ExpertMixer(op, encoding_size=4, experts=3, per_neuron=True, hidden=5, dropout=0)
    op.weight_provider = mixer
    mixer.code.copy_(torch.rand(1, 4))
    op.configure(4, 5)
    hidden = mixer.router[:3](mixer.code)
    last = mixer.router[3]
    logits = nn.functional.linear(hidden, last.weight[:15], last.bias[:15]).view(5, 3)
    alpha = logits.softmax(-1)
    experts = torch.stack([op.weight, *mixer.extra["weight"]])[:, :5, :4]
    expected = torch.einsum("re,eri->ri", alpha, experts)
    assert torch.allclose(op.active_weight(), expected, atol=1e-6)
    assert op.active_weight().shape == (5, 4)


def test_router_and_experts_learn_by_backprop(tiny_space):
    net = create_supernet(tiny_space, {"name": "mos_neuron"})
    net.set_arch(tiny_space.sample(0))
    net(*example_args(tiny_space, 4)).sum().backward()
    mixer = next(m for m in net.modules() if isinstance(m, ExpertMixer))
    assert mixer.router[0].weight.grad.abs().sum() > 0
    assert mixer.extra["weight"].grad.abs().sum() > 0


def test_scheme_options_are_checked_with_the_field_named(tiny_space):
    with pytest.raises(ConfigError, match=r"weights.options.experts = 0"):
        create_supernet(tiny_space, {"name": "mos_layer", "options": {"experts": 0}})
    with pytest.raises(ConfigError, match=r"weights.options.layers .* matches none"):
        create_supernet(tiny_space, {"name": "mos_layer", "options": {"layers": ["*nope*"]}})
    with pytest.raises(ConfigError, match=r"unknown option .* allowed: "):
        create_supernet(tiny_space, {"name": "mos_neuron", "options": {"expert": 2}})
    with pytest.raises(ConfigError, match=r"weights = 'nope': unknown weight scheme"):
        create_supernet(tiny_space, {"name": "nope"})
    with pytest.raises(ConfigError, match=r"max_archs = 10"):
        create_supernet(tiny_space, {"name": "balanced_mixture", "options": {"max_archs": 10}})
    assert {"shared", "mos_layer", "mos_neuron", "balanced_mixture"} <= set(
        WEIGHT_SCHEMES.names())


def test_only_the_layers_asked_for_get_experts(tiny_space):
    net = create_supernet(tiny_space, {"name": "mos_layer", "options": {"layers": ["head"]}})
    assert net.routed == ["head"]
    assert sum(isinstance(m, ExpertMixer) for m in net.modules()) == 1


# ---- balanced mixture ---------------------------------------------------------------------
def test_balancing_reaches_a_uniform_supernet_marginal():
    gen = torch.Generator().manual_seed(0)
    probs = (torch.randn(36, 4, generator=gen) * 3 + torch.tensor([4.0, 0, 0, 0])).softmax(1)
    assert marginal_kl(probs) > 0.1
    out = balance(probs)
    assert marginal_kl(out) < 1e-4
    assert torch.allclose(out.sum(1), torch.ones(36), atol=1e-5)


class _Stub(nn.Module):
    def set_arch(self, arch):
        self.arch = arch


def _simulate(space: SearchSpace, balanced: bool, epochs: int = 30, steps: int = 40):
    """A rich-get-richer world: a supernet scores better the more steps it has trained, and
    supernet 0 starts ahead."""
    mix = BalancedMixture(_Stub, space, 4, 0.9, (1.0, 100.0), 1e-4, balanced, seed=0)
    rng = random.Random(0)
    archs = list(space.enumerate())
    for epoch in range(epochs):
        mix.start_epoch(epoch, epochs)
        for s in range(steps):
            step = epoch * steps + s
            arch = rng.choice(archs)
            mix.set_training_arch(arch, step)
            trained = mix.steps.sum(0)
            mix.after_step(step, [arch], lambda net, t=trained: 0.3 + 0.1 * (net.active == 0)
                           + 0.5 * float(t[net.active]) / (epochs * steps))
    return mix.steps.sum(0).float() / mix.steps.sum()


def test_balanced_assignment_stays_balanced_and_collapses_without_it(repo_root):
    space = SearchSpace.load(repo_root / "search_spaces" / "resnet20_pool_tiny.yaml")
    shares = _simulate(space, balanced=True)
    assert ((shares - 0.25).abs() <= 0.05).all(), shares
    unbalanced = _simulate(space, balanced=False)
    assert unbalanced.max() > 0.5, unbalanced


def test_assignment_specialises_and_evaluation_uses_the_assigned_supernet(repo_root):
    space = SearchSpace.load(repo_root / "search_spaces" / "resnet20_pool_tiny.yaml")
    mix = create_supernet(space, {"name": "balanced_mixture", "options": {"supernets": 2}})
    archs = list(space.enumerate())
    # Supernet 1 is better on the first half of the archs, supernet 0 on the rest.
    mix.scores[:5, 1], mix.scores[5:, 0] = 2.0, 2.0
    mix._assigned = None
    for i, arch in enumerate(archs):
        mix.set_arch(arch)
        assert mix.active == (1 if i < 5 else 0)
        assert mix.active_net() is mix.nets[mix.active]


def test_balanced_training_steps_only_the_drawn_supernet(repo_root):
    """One optimizer over K supernets is K optimizers: a supernet that got no gradient this
    step is skipped, with no weight decay or momentum on it."""
    from raynas.config import TrainConfig
    from raynas.training.loop import train_step
    from raynas.training.losses import DISTILLERS
    from raynas.training.optim import build_optimizer
    from raynas.training.samplers import SAMPLERS

    space = SearchSpace.load(repo_root / "search_spaces" / "resnet20_pool_tiny.yaml")
    torch.manual_seed(0)
    net = create_supernet(space, {"name": "balanced_mixture", "options": {"supernets": 3}})
    task = build_task(space)
    cfg = TrainConfig(optimizer={"name": "adamw"}, weight_decay=0.1, num_subnets=1,
                      sampler={"name": "uniform"}, distill={"name": "none"})
    opt = build_optimizer(net, cfg)
    sampler = SAMPLERS.create("uniform", {}, space=space, num_subnets=1, seed=0)
    batch = {k: v for k, v in zip(task.input_names, example_args(space, 8, task))}
    batch["labels"] = torch.randint(0, 10, (8,))
    net.start_epoch(0, 1)
    before = copy.deepcopy(net.nets.state_dict())
    scores = []
    train_step(net, task, opt, sampler, DISTILLERS.create("none", {}), batch, 0, cfg, 1,
               score=lambda n: scores.append(n.active) or 0.5)
    drawn = int(net.steps.sum(0).argmax())
    assert scores == [drawn] and int(net.steps.sum()) == 1
    after = net.nets.state_dict()
    for key, value in before.items():
        m = int(key.split(".")[0])
        changed = not torch.equal(value, after[key])
        if m != drawn:
            assert not changed, key
    assert any(not torch.equal(before[k], after[k]) for k in before
               if k.startswith(f"{drawn}.") and k.endswith("weight"))
    row = net.index[next(a for a in space.enumerate() if net.steps[net.index[a.key]].sum()).key]
    assert net.scores[row, drawn] == pytest.approx(0.9 + 0.1 * 0.5)


def test_only_supernets_that_trained_an_arch_judge_it(tiny_space):
    """An untrained (arch, supernet) pair keeps the optimistic initial score 1.0, above any
    trained pair's; evaluation must not pick it. The archs no supernet trained all go to the
    supernet with the best mean score over what it trained."""
    mix = BalancedMixture(_Stub, tiny_space, 3, 0.9, (1.0, 100.0), 1e-4, True, seed=0)
    a, b = tiny_space.smallest(), tiny_space.largest()
    ra, rb = mix.index[a.key], mix.index[b.key]
    mix.steps[ra, 1], mix.scores[ra, 1] = 5, 0.6  # only supernet 1 trained the smallest
    mix.steps[rb, 2], mix.scores[rb, 2] = 5, 0.7  # supernets 2 and 0 the largest
    mix.steps[rb, 0], mix.scores[rb, 0] = 5, 0.4
    mix._assigned = None
    assigned = mix.assignment()
    assert int(assigned[ra]) == 1 and int(assigned[rb]) == 2  # not 0, still at 1.0
    others = [r for r in range(len(mix.archs)) if r not in (ra, rb)]
    assert others and all(int(assigned[r]) == 2 for r in others)  # mean 0.7 > 0.6 > 0.4


def test_balanced_draws_follow_the_job_seed(repo_root):
    """Without a ``seed`` option the draws come from the seed the training sets before it
    builds the supernet: the same job seed draws the same supernets on every worker, another
    draws others; an explicit seed overrides it."""
    space = SearchSpace.load(repo_root / "search_spaces" / "resnet20_pool_tiny.yaml")

    def draws(job_seed, **options):
        torch.manual_seed(job_seed)
        net = create_supernet(space, {"name": "balanced_mixture", "options": options})
        net.start_epoch(0, 1)
        picked = []
        for step, arch in enumerate(list(space.enumerate()) * 4):
            net.set_training_arch(arch, step)
            picked.append(net.active)
        return picked

    assert draws(0) == draws(0)
    assert draws(0) != draws(1)
    assert draws(0, seed=7) == draws(1, seed=7)
    with torch.device("meta"):  # as a job checks its scheme when it loads
        create_supernet(space, {"name": "balanced_mixture", "options": {}})


# ---- checkpoints --------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["mos_neuron", "balanced_mixture"])
def test_checkpoint_round_trip_and_a_scheme_mismatch_is_refused(repo_root, tmp_path, scheme):
    space = SearchSpace.load(repo_root / "search_spaces" / "resnet20_pool_tiny.yaml")
    spec = {"name": scheme, "options": {"hidden": 8} if scheme == "mos_neuron" else {}}
    net = _perturbed(create_supernet(space, spec))
    if scheme == "balanced_mixture":
        net.scores.uniform_(0, 1)
        net._assigned = None
    save_checkpoint(tmp_path, space, net.state_dict(), 0, {"weights": spec})
    state = load_checkpoint(tmp_path, expected=space, weights=spec)
    assert state["weights"] == spec
    again = create_supernet(space, state["weights"])
    again.load_state_dict(state["model"])
    again.eval()
    inputs = example_args(space, 4)
    for arch in space.enumerate():
        net.set_arch(arch)
        again.set_arch(arch)
        with torch.no_grad():
            assert torch.equal(net(*inputs), again(*inputs))
    with pytest.raises(CheckpointError, match=rf"trained with weights = '{scheme}'.*this job "
                                              r"uses weights = 'shared'"):
        load_checkpoint(tmp_path, weights={"name": "shared"})
    other = {"name": scheme, "options": {"hidden": 9} if scheme == "mos_neuron"
             else {"supernets": 2}}
    with pytest.raises(CheckpointError, match="with options"):
        load_checkpoint(tmp_path, weights=other)


def test_checkpoints_without_a_scheme_are_shared(tmp_path, tiny_space):
    save_checkpoint(tmp_path, tiny_space, create_supernet(tiny_space).state_dict(), 0)
    assert load_checkpoint(tmp_path, weights={"name": "shared"})["weights"] == {
        "name": "shared", "options": {}}
