"""Tickets and pruned exports: ``raynas ticket export``, ``train.init_ticket``, the sparsity
an exported subnet reports."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import assert_one_error_line, cli_runner

from raynas.checkpoint import save_checkpoint
from raynas.errors import CheckpointError
from raynas.export import extract
from raynas.export.serialize import export_subnet, load_subnet
from raynas.supernets import create_supernet
from raynas.tasks import build_task
from raynas.tickets import load_ticket, make_ticket, save_ticket
from raynas.training.pruning import SuperTickets
from raynas.weights.masks import mask_state, prunable_ops

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


def _pruned(space, ratio=0.6):
    torch.manual_seed(0)
    net = create_supernet(space)
    task = build_task(space)
    ex = task.example_inputs(2)
    p = SuperTickets(space, target=ratio, interval=1, step=ratio, rho=1e-4)
    p.setup(net, [ex[k] for k in task.input_names], space, 1)
    p.end_epoch(net, 0, 1)
    return net


@pytest.fixture
def pruned_checkpoint(tmp_path, tiny_space):
    net = _pruned(tiny_space)
    return save_checkpoint(tmp_path / "ckpt", tiny_space, net.state_dict(), 4,
                           {"masks": mask_state(net)}), net


def test_export_has_zeros_where_masks_are_and_reports_sparsity(tiny_space, tmp_path):
    net = _pruned(tiny_space).eval()
    arch = tiny_space.largest()
    static = extract(net, tiny_space, arch)
    state = static.state_dict()
    for name, op in prunable_ops(net):
        mask = op.weight_provider.weight
        assert (state[f"{name}.weight"][mask == 0] == 0).all()
    task = build_task(tiny_space)
    result = export_subnet(net, static, tiny_space, arch, task.example_inputs(8),
                           tmp_path / "subnet", formats=("torchscript",), task=task)
    report = json.loads((tmp_path / "subnet" / "export.json").read_text())
    assert report["sparsity"] == result.sparsity
    assert report["sparsity"]["sparsity"] == pytest.approx(0.6, abs=1e-4)
    loaded = load_subnet(tmp_path / "subnet").state_dict()
    zeros = sum(int((loaded[f"{n}.weight"] == 0).sum()) for n, _ in prunable_ops(net))
    assert zeros == report["sparsity"]["zero_weights"]


def test_export_of_an_unpruned_supernet_reports_no_sparsity(tiny_space, tmp_path):
    torch.manual_seed(0)
    net = create_supernet(tiny_space).eval()
    arch = tiny_space.smallest()
    task = build_task(tiny_space)
    export_subnet(net, extract(net, tiny_space, arch), tiny_space, arch,
                  task.example_inputs(4), tmp_path, formats=(), task=task)
    assert "sparsity" not in json.loads((tmp_path / "export.json").read_text())


def test_ticket_round_trip(pruned_checkpoint, tiny_space, tmp_path):
    checkpoint, net = pruned_checkpoint
    arch = tiny_space.smallest()
    path = save_ticket(make_ticket(checkpoint, arch.to_dict()), tmp_path / "t.pt")
    ticket = load_ticket(path, expected=tiny_space)
    assert ticket["arch"] == arch
    assert ticket["space"].fingerprint == tiny_space.fingerprint
    assert ticket["epoch"] == 4
    for name, mask in mask_state(net)["weights"].items():
        assert torch.equal(ticket["masks"]["weights"][name], mask)
    assert ticket["masks"]["channels"]  # BN channel masks travel too
    net.set_arch(arch)
    zeros = sum(int((op.active_weight() == 0).sum()) for _, op in prunable_ops(net))
    assert ticket["sparsity"]["zero_weights"] == zeros
    assert load_ticket(path.read_bytes())["arch"] == arch  # what the workers receive


def test_ticket_of_another_space_is_refused(pruned_checkpoint, digits_space, tmp_path):
    checkpoint, net = pruned_checkpoint
    path = save_ticket(make_ticket(checkpoint, net.arch.to_dict()), tmp_path / "t.pt")
    with pytest.raises(CheckpointError, match="was cut from space 'tiny_cnn'.*this job uses "
                                              "space 'digits_cnn'"):
        load_ticket(path, expected=digits_space)


def test_ticket_needs_masks(tiny_checkpoint, tiny_space):
    with pytest.raises(CheckpointError, match="has no pruning masks"):
        make_ticket(tiny_checkpoint, tiny_space.largest())


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    return cli_runner(tmp_path, monkeypatch, capsys)


def test_ticket_export_command(cli, pruned_checkpoint, tmp_path):
    checkpoint, _ = pruned_checkpoint
    out_dir = tmp_path / "job-out"  # a job's output directory works as SOURCE too
    (out_dir / "checkpoint").mkdir(parents=True)
    for f in checkpoint.iterdir():
        (out_dir / "checkpoint" / f.name).write_bytes(f.read_bytes())
    rc, out, err = cli("ticket", "export", out_dir, "--arch", "largest", "-o", "t.pt")
    assert rc == 0, err
    assert "sparsity 0.600" in out and "train.init_ticket=" in out
    assert load_ticket(tmp_path / "t.pt")["arch"]["s1_depth"] == 2
    rc, _, err = cli("ticket", "export", tmp_path / "nowhere", "--arch", "largest", "-o", "x")
    assert_one_error_line(rc, err, "neither an existing checkpoint or output directory nor an "
                          "MLflow run id")
    rc, _, err = cli("ticket", "export", checkpoint, "--arch", '{"s1_depth": 9}', "-o", "x")
    assert_one_error_line(rc, err, "arch lacks dimension")


@pytest.mark.parametrize("overrides, needle", [
    (["train.prune=supertickets"], "train.prune.options.target = 0.5: with step 0.1 every 10 "
     "epochs, 20 epochs (train.epochs) reach only 0.2; train 50 epochs or more"),
    (["train.prune.name=supertickets", "train.prune.options.step=0.5",
      "train.prune.options.rate=1"], "train.prune.options.rate = 1: unknown option"),
    (["train.prune.name=supertickets", "train.prune.options.step=0.5",
      "weights.name=mos_layer"], "weights = 'mos_layer' is not supported with it"),
    (["train.prune.name=supertickets", "train.prune.options.step=0.5",
      "train.init_ticket=t.pt"], "train.init_ticket = 't.pt': a ticket's masks are fixed"),
    (["train.prune=magnitude"], "train.prune = 'magnitude': unknown pruning method"),
])
def test_job_errors(cli, quickstart_job, overrides, needle):
    rc, _, err = cli("train", quickstart_job, *overrides)
    assert_one_error_line(rc, err, needle)


def test_job_with_a_ticket_of_another_space(cli, pruned_checkpoint, quickstart_job, tmp_path,
                                            repo_root):
    checkpoint, net = pruned_checkpoint
    save_ticket(make_ticket(checkpoint, net.arch.to_dict()), tmp_path / "t.pt")
    rc, _, err = cli("train", quickstart_job, f"train.init_ticket={tmp_path / 't.pt'}")
    assert_one_error_line(rc, err, "was cut from space 'tiny_cnn'",
                          "this job uses space 'digits_cnn'")
    rc, _, err = cli("train", repo_root / "jobs" / "resnet20_pool_tiny.yaml",
                     "train.prune.name=supertickets", "train.prune.options.step=0.5",
                     "train.prune.options.rho=0.0001", "train.epochs=2",
                     "train.prune.options.interval=1")
    assert_one_error_line(rc, err, "family 'resnet20_pool' has no elastic batch norm")
