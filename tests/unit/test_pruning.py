"""raynas.training.pruning and raynas.weights.masks: SuperTickets' progressive pruning."""

from __future__ import annotations

import math

import pytest
import torch

from raynas.checkpoint import load_checkpoint, save_checkpoint
from raynas.errors import ConfigError
from raynas.supernets import create_supernet, family_names
from raynas.tasks import build_task
from raynas.training.pruning import (
    FixedMasks,
    SuperTickets,
    agree_across_workers,
    channel_penalties,
    check_prune_site,
    drop_channels,
    global_magnitude_prune,
)
from raynas.weights.masks import (
    install_masks,
    mask_state,
    norm_ops,
    prunable_ops,
    subnet_sparsity,
    weight_counts,
)


def _net(space, seed=0):
    torch.manual_seed(seed)
    return create_supernet(space)


def _inputs(space, n=4, seed=0):
    task = build_task(space)
    ex = task.example_inputs(n, seed=seed)
    return [ex[k] for k in task.input_names]


def _masks(net):
    return {name: op.weight_provider.weight.clone() for name, op in prunable_ops(net)}


def test_masked_weights_contribute_nothing(tiny_space):
    net = _net(tiny_space)
    install_masks(net)
    global_magnitude_prune(net, 0.6, keep_pruned=False)
    x = _inputs(tiny_space)
    net.eval()
    before = net(*x)
    with torch.no_grad():  # whatever a masked weight holds, the output is the same
        for _, op in prunable_ops(net):
            masked = op.weight_provider.weight == 0
            op.weight[masked] = torch.randn(int(masked.sum())) * 100
    torch.testing.assert_close(net(*x), before)
    # ... and equals the dense net with those weights written as zeros.
    dense = _net(tiny_space)
    with torch.no_grad():
        for (_, op), (_, ref) in zip(prunable_ops(net), prunable_ops(dense)):
            ref.weight.mul_(op.weight_provider.weight)
    torch.testing.assert_close(dense.eval()(*x), before)


def test_gradients_do_not_revive_pruned_weights_without_regrow(tiny_space):
    net = _net(tiny_space)
    pruner = SuperTickets(tiny_space, target=0.5, interval=1, step=0.5, regrow=False)
    pruner.setup(net, _inputs(tiny_space), tiny_space, steps_per_epoch=1)
    pruner.end_epoch(net, 0, 3)
    masks = _masks(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    x, y = _inputs(tiny_space, 16)[0], torch.arange(16) % 10
    for _ in range(4):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        for name, op in prunable_ops(net):
            assert (op.weight.grad[masks[name] == 0] == 0).all()
        opt.step()
        pruner.after_step(net)
        for name, op in prunable_ops(net):
            assert (op.weight[masks[name] == 0] == 0).all()
            assert (op.weight[masks[name] == 1] != 0).all()


@pytest.mark.parametrize("family", family_names())
@pytest.mark.parametrize("ratio", [0.1, 0.37, 0.9])
def test_global_magnitude_pruning_is_exact(space_of, family, ratio):
    space = space_of(family)
    net = _net(space)
    install_masks(net)
    with torch.no_grad():  # ties: a block of equal magnitudes straddles the threshold
        _, op = next(iter(prunable_ops(net)))
        op.weight.view(-1)[: op.weight.numel() // 2] = 0.01
    n = global_magnitude_prune(net, ratio, keep_pruned=False)
    masked, total = weight_counts(net)
    assert masked == n == round(ratio * total)
    kept = torch.cat([op.weight.detach().abs()[op.weight_provider.weight == 1]
                      for _, op in prunable_ops(net)])
    pruned = torch.cat([op.weight.detach().abs()[op.weight_provider.weight == 0]
                        for _, op in prunable_ops(net)])
    assert pruned.max() <= kept.min()  # global: one threshold across all ops


def test_min_keep_spares_an_op_that_global_ranking_would_empty(tiny_space):
    net = _net(tiny_space)
    install_masks(net)
    (_, small), *_ = prunable_ops(net)
    with torch.no_grad():  # one op's weights far below every other's, as a depthwise conv's
        small.weight.mul_(1e-3)
    global_magnitude_prune(net, 0.5, keep_pruned=False)
    assert int(small.weight_provider.weight.sum()) == 0  # the reference's rule empties it
    for keep_pruned in (False, True):  # spared again when it was emptied before
        n = global_magnitude_prune(net, 0.5, keep_pruned=keep_pruned, min_keep=0.1)
        masked, total = weight_counts(net)
        assert masked == n == round(0.5 * total)  # still exact
        mask = small.weight_provider.weight
        assert int(mask.sum()) == math.ceil(0.1 * mask.numel())
        kept = small.weight.detach().abs()[mask == 1]  # the op's largest weights
        assert kept.min() >= small.weight.detach().abs()[mask == 0].max()
    net = _net(tiny_space)
    (_, small), *_ = prunable_ops(net)
    with torch.no_grad():
        small.weight.mul_(1e-3)
    p = SuperTickets(tiny_space, target=0.5, interval=1, step=0.5, min_keep=0.1)
    p.setup(net, _inputs(tiny_space), tiny_space, 1)
    p.end_epoch(net, 0, 1)
    assert int(small.weight_provider.weight.sum()) == math.ceil(0.1 * small.weight.numel())


def test_schedule_is_min_target_step_k():
    p = SuperTickets(None, target=0.25, interval=2, step=0.1)
    assert [p.ratio_at(e) for e in range(8)] == pytest.approx(
        [0, 0.1, 0.1, 0.2, 0.2, 0.25, 0.25, 0.25])
    assert [e for e in range(7) if p.prunes_at(e, 7)] == [1, 3, 5, 6]  # and the last epoch
    p.check_schedule(6)
    with pytest.raises(ConfigError, match=r"7 epochs \(train.epochs\) reach only 0.3; "
                                          r"train 10 epochs or more"):
        SuperTickets(None, target=0.5, interval=2, step=0.1).check_schedule(7)


def test_sparsity_follows_the_schedule_without_regrow(tiny_space):
    net = _net(tiny_space)
    p = SuperTickets(tiny_space, target=0.25, interval=2, step=0.1)
    p.setup(net, _inputs(tiny_space), tiny_space, 1)
    _, total = weight_counts(net)
    seen = []
    for epoch in range(6):
        seen.append(p.end_epoch(net, epoch, 6)["prune.masked_weights"])
        p.after_checkpoint(net, epoch, 6)
    assert seen == [0, round(0.1 * total), round(0.1 * total), round(0.2 * total),
                    round(0.2 * total), round(0.25 * total)]


def test_regrow_reactivates_and_no_regrow_keeps_out(tiny_space):
    nets = {}
    for regrow in (False, True):
        net = _net(tiny_space)
        p = SuperTickets(tiny_space, target=0.4, interval=1, step=0.2, regrow=regrow)
        p.setup(net, _inputs(tiny_space), tiny_space, 1)
        p.end_epoch(net, 0, 3)
        first = _masks(net)
        p.after_checkpoint(net, 0, 3)
        after = _masks(net)
        name, op = next(iter(prunable_ops(net)))
        pruned = first[name] == 0
        if regrow:  # masks reset to 1; the pruned weights keep their values and rejoin
            assert all((m == 1).all() for m in after.values())
            assert (op.weight[pruned] != 0).all()
        else:  # masks stay; the pruned weights are zero
            assert all(torch.equal(after[k], first[k]) for k in first)
            assert (op.weight[pruned] == 0).all()
        with torch.no_grad():  # a pruned weight that grew large (stale, or trained)
            op.weight[pruned] = 0.0
            op.weight.view(-1)[pruned.view(-1).nonzero()[0]] = 100.0
        p.end_epoch(net, 1, 3)
        nets[regrow] = (first[name], op.weight_provider.weight.clone(), pruned)
    first, second, pruned = nets[True]
    assert (second.view(-1)[pruned.view(-1).nonzero()[0]] == 1).all()  # re-selected
    first, second, pruned = nets[False]
    assert (second[pruned] == 0).all()  # never returns


def test_regrow_stops_reactivating_once_the_target_is_reached(tiny_space):
    """Reactivation while the schedule rises; at target the masks stay and the pruned weights
    are zero, so the ticket trains at its sparsity (a resumed run knows it from its epoch)."""
    net = _net(tiny_space)
    p = SuperTickets(tiny_space, target=0.4, interval=1, step=0.2, regrow=True)
    p.setup(net, _inputs(tiny_space), tiny_space, 1)
    p.end_epoch(net, 0, 5)
    p.after_checkpoint(net, 0, 5)  # 0.2 < 0.4: reactivated
    assert all((m == 1).all() for m in _masks(net).values())
    metrics = p.end_epoch(net, 1, 5)  # reaches 0.4
    p.after_checkpoint(net, 1, 5)
    at_target = _masks(net)
    assert metrics["prune.sparsity"] == pytest.approx(0.4, abs=1e-4)
    assert any((m == 0).any() for m in at_target.values())  # not reset
    name, op = next(iter(prunable_ops(net)))
    pruned = at_target[name] == 0
    assert (op.weight[pruned] == 0).all()
    with torch.no_grad():  # a step would move nothing the masks hide, but say one did
        op.weight.add_(0.5)
    p.after_step(net)
    assert (op.weight[pruned] == 0).all()
    p.end_epoch(net, 2, 5)
    assert all(torch.equal(_masks(net)[k], at_target[k]) for k in at_target)
    resumed = SuperTickets(tiny_space, target=0.4, interval=1, step=0.2, regrow=True)
    resumed.after_checkpoint(net, 2, 5)
    assert resumed.settled and not resumed.reactivating
    early = SuperTickets(tiny_space, target=0.4, interval=1, step=0.2, regrow=True)
    early.after_checkpoint(net, 0, 5)
    assert early.reactivating


def test_last_epoch_prunes_and_keeps_masks_with_regrow(tiny_space):
    net = _net(tiny_space)
    p = SuperTickets(tiny_space, target=0.3, interval=2, step=0.3, regrow=True)
    p.setup(net, _inputs(tiny_space), tiny_space, 1)
    metrics = p.end_epoch(net, 2, 3)  # not an interval boundary, but the last epoch
    p.after_checkpoint(net, 2, 3)
    assert metrics["prune.sparsity"] == pytest.approx(0.3, abs=1e-4)
    assert weight_counts(net)[0] == metrics["prune.masked_weights"]


def test_resource_weighted_penalties_by_hand(tiny_space):
    # tiny_cnn, largest: stage 1 (8x8): conv 8->16 k5, conv 16->16 k5; stage 2 (4x4):
    # conv 16->16 k5 stride 2, conv 16->16 k5; head 16->10. FLOPs = 2 x outputs x weights
    # per output; a BN channel costs its producer's + its consumer's FLOPs / 16.
    s1a, s1b = 2 * 16 * 64 * (8 * 25), 2 * 16 * 64 * (16 * 25)
    s2a = s2b = 2 * 16 * 16 * (16 * 25)
    head = 2 * 10 * 16
    cost = {"stages.0.0.bn": (s1a + s1b) / 16, "stages.0.1.bn": (s1b + s2a) / 16,
            "stages.1.0.bn": (s2a + s2b) / 16, "stages.1.1.bn": (s2b + head) / 16}
    mean = sum(cost.values()) / 4  # every BN has 16 channels
    net = _net(tiny_space)
    net.set_arch(tiny_space.largest())
    got = channel_penalties(net, _inputs(tiny_space))
    assert set(got) == set(cost)
    for name, value in cost.items():
        torch.testing.assert_close(got[name], torch.full((16,), value / mean))
    # The gradient added per step: rho(t) x penalty x sign(gamma), rho warming up per step.
    p = SuperTickets(tiny_space, target=0.1, interval=1, step=0.1, rho=1e-3, rho_warmup=2)
    p.setup(net, _inputs(tiny_space), tiny_space, steps_per_epoch=5)
    bn = dict(norm_ops(net))["stages.1.0.bn"]
    with torch.no_grad():
        bn.weight[:8] *= -1
    bn.weight.grad = None
    p.before_step(net, 4)  # step 5 of a 10-step warm-up
    expect = 1e-3 * 0.5 * (cost["stages.1.0.bn"] / mean) * torch.sign(bn.weight.detach())
    torch.testing.assert_close(bn.weight.grad, expect)
    assert p.rho_at(9) == p.rho_at(50) == 1e-3


def test_channel_drops_are_masks(tiny_space):
    net = _net(tiny_space)
    p = SuperTickets(tiny_space, target=0.1, interval=1, step=0.1, rho=1e-4)
    p.setup(net, _inputs(tiny_space), tiny_space, 1)
    bns = dict(norm_ops(net))
    with torch.no_grad():
        bns["stages.0.0.bn"].weight[[1, 5]] = 1e-4
        bns["stages.1.1.bn"].weight.fill_(1e-5)  # all small: the largest one survives
        bns["stages.1.1.bn"].weight[3] = 2e-4
    metrics = p.end_epoch(net, 0, 2)
    assert metrics["prune.channels_dropped"] == 2 + 15
    mask = bns["stages.1.1.bn"].weight_provider.weight
    assert mask.sum() == 1 and mask[3] == 1
    bn = bns["stages.0.0.bn"]
    assert (bn.weight[[1, 5]] == 0).all() and (bn.bias[[1, 5]] == 0).all()
    assert bn.weight.shape == (16,)  # not shrunk physically
    seen = {}
    bn.register_forward_hook(lambda m, a, out: seen.update(out=out))
    net.set_arch(tiny_space.largest())
    net(*_inputs(tiny_space))
    assert (seen["out"][:, [1, 5]] == 0).all()
    assert drop_channels(net, 1e-3) == 0  # dropped channels stay dropped, none added


def test_masks_round_trip_through_a_checkpoint(tiny_space, tmp_path):
    net = _net(tiny_space)
    p = SuperTickets(tiny_space, target=0.5, interval=1, step=0.5, rho=1e-4)
    p.setup(net, _inputs(tiny_space), tiny_space, 1)
    with torch.no_grad():
        dict(norm_ops(net))["stages.0.1.bn"].weight[2] = 0.0
    p.end_epoch(net, 0, 1)
    save_checkpoint(tmp_path, tiny_space, net.state_dict(), 0, {"masks": mask_state(net)})
    state = load_checkpoint(tmp_path, expected=tiny_space)
    assert not any("weight_provider" in k for k in state["model"])  # masks travel apart
    back = create_supernet(tiny_space)
    back.load_state_dict(state["model"])
    install_masks(back, state["masks"]["weights"], state["masks"]["channels"])
    for a, b in zip(_masks(net).values(), _masks(back).values()):
        assert torch.equal(a, b)
    assert state["masks"]["channels"]["stages.0.1.bn"].sum() == 15
    x = _inputs(tiny_space)
    for arch in (tiny_space.largest(), tiny_space.smallest()):
        net.set_arch(arch)
        back.set_arch(arch)
        torch.testing.assert_close(back.eval()(*x), net.eval()(*x))


def test_masks_of_another_space_are_refused(tiny_space, digits_space):
    net = _net(tiny_space)
    install_masks(net)
    other = _net(digits_space)
    install_masks(other)
    with pytest.raises(ConfigError, match="shape"):
        install_masks(other, mask_state(net)["weights"])


def test_subnet_sparsity_and_ticket_masks(tiny_space):
    net = _net(tiny_space)
    install_masks(net)
    global_magnitude_prune(net, 0.5, keep_pruned=False)
    net.set_arch(tiny_space.largest())  # the largest subnet holds every prunable weight
    assert subnet_sparsity(net)["sparsity"] == pytest.approx(0.5, abs=1e-4)
    assert subnet_sparsity(_net(tiny_space)) is None  # no masks: nothing to report
    fresh = _net(tiny_space, seed=3)
    masks = mask_state(net)
    FixedMasks(masks["weights"], masks["channels"]).setup(fresh, (), tiny_space, 1)
    for name, op in prunable_ops(fresh):
        assert (op.weight[~masks["weights"][name]] == 0).all()


def test_prune_site_and_workers(space_of):
    pruner = SuperTickets(None, rho=1e-4)
    for family in ("resnet20_pool", "seq_conv"):
        space = space_of(family)
        with pytest.raises(ConfigError, match=f"family '{family}' has no elastic batch norm"):
            check_prune_site(pruner, _net(space), space)
        check_prune_site(SuperTickets(None), _net(space), space)  # weights only: fine
    assert agree_across_workers(_net(space_of("cnn")), world=1)


@pytest.mark.parametrize("options, needle", [
    ({"target": 1.0}, "target = 1.0: must be below 1"),
    ({"target": 0}, "target = 0: must be a number in (0, 1]"),
    ({"interval": 0}, "interval = 0: must be an integer number of epochs >= 1"),
    ({"regrow": "yes"}, "regrow = 'yes': must be true or false"),
    ({"rho": -1}, "rho = -1: must be a number in [0, 1]"),
    ({"target": 0.9, "min_keep": 0.2}, "min_keep = 0.2: must be at most 1 - target = 0.1"),
])
def test_option_values(options, needle):
    with pytest.raises(ConfigError) as exc:
        SuperTickets(None, **options)
    assert needle in str(exc.value)
