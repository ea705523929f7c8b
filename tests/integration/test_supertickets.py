"""SuperTickets end to end on the embedded Ray with two Ray Train workers and a real MLflow
store: a supernet trained with progressive pruning reaches its target sparsity and logs it,
an exported subnet carries that sparsity, and a ticket cut from it retrains on another
dataset (cluttered digits instead of digits) through ``train.init_ticket`` with its masks
still applied."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from raynas.checkpoint import load_checkpoint
from raynas.export.serialize import load_subnet
from raynas.tickets import load_ticket

pytestmark = [pytest.mark.integration,
              pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")]

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "jobs" / "smoke.yaml")


def test_prune_export_and_transfer_a_ticket(store, run_cli, stage_runs):
    work = store["cwd"] / "tickets"
    work.mkdir()
    # tiny_cnn at 12x12: the smallest canvas cluttered_digits draws on (digits are resized).
    space = yaml.safe_load((ROOT / "search_spaces" / "tiny_cnn.yaml").read_text())
    space.update(name="tiny_cnn12", model={**space["model"], "image_size": 12})
    space_file = work / "tiny_cnn12.yaml"
    space_file.write_text(yaml.safe_dump(space))
    common = [f"space={space_file}", "train.num_subnets=2"]
    prune = ["train.prune.name=supertickets", "train.prune.options.target=0.5",
             "train.prune.options.interval=1", "train.prune.options.step=0.25",
             "train.prune.options.rho=0.0001"]

    out = work / "pruned"
    run_cli(["train", SMOKE, "--output-dir", str(out), "name=tickets", "train.epochs=2",
             *common, *prune], store["cwd"], store["uri"])
    state = load_checkpoint(out / "checkpoint")
    masks = state["masks"]["weights"]
    total = sum(m.numel() for m in masks.values())
    pruned = sum(int((~m).sum()) for m in masks.values())
    assert pruned == round(0.5 * total)  # exact, as the reference counts (+-30 there)
    for name, mask in masks.items():  # no regrow: the pruned weights are zero
        assert (state["model"][f"{name}.weight"][~mask] == 0).all()
    client = MlflowClient(tracking_uri=store["uri"])
    train = stage_runs(store["uri"], "tickets")["train"]
    history = sorted(client.get_metric_history(train.info.run_id, "prune.sparsity"),
                     key=lambda m: m.step)
    assert [m.value for m in history] == pytest.approx([0.25, 0.5], abs=1e-4)
    assert train.data.metrics["prune.workers_agree"] == 1.0
    assert "prune.channels_dropped" in train.data.metrics

    # The largest subnet holds every prunable weight: its export has exactly that sparsity.
    largest = work / "largest.json"
    largest.write_text(json.dumps({"s1_depth": 2, "s1_width": 16, "s1_kernel": [5, 5],
                                   "s2_depth": 2, "s2_width": 16, "s2_kernel": [5, 5]}))
    run_cli(["export", SMOKE, "--checkpoint", str(out / "checkpoint"), "--arch",
             str(largest), "--output-dir", str(out), "name=tickets",
             "export.formats=[torchscript]", *common], store["cwd"], store["uri"])
    report = json.loads((out / "subnet" / "export.json").read_text())
    assert report["sparsity"]["sparsity"] == pytest.approx(0.5, abs=1e-4)
    model = load_subnet(out / "subnet").state_dict()
    for name, mask in masks.items():
        assert (model[f"{name}.weight"][~mask] == 0).all()
    export = stage_runs(store["uri"], "tickets")["export"]
    assert export.data.metrics["sparsity"] == pytest.approx(0.5, abs=1e-4)

    # A ticket of a smaller subnet, retrained from fresh weights on cluttered digits.
    ticket_file = work / "ticket.pt"
    smaller = {"s1_depth": 1, "s1_width": 16, "s1_kernel": [3], "s2_depth": 2,
               "s2_width": 8, "s2_kernel": [5, 3]}
    proc = run_cli(["ticket", "export", str(out), "--arch", json.dumps(smaller), "-o",
                    str(ticket_file)], store["cwd"], store["uri"])
    assert "sparsity" in proc.stdout
    ticket = load_ticket(ticket_file)
    out2 = work / "retrained"
    run_cli(["train", SMOKE, "--output-dir", str(out2), "name=tickets-cluttered",
             "train.epochs=1", "data.name=cluttered_digits", "data.options.copies=1",
             f"train.init_ticket={ticket_file}", *common], store["cwd"], store["uri"])
    state2 = load_checkpoint(out2 / "checkpoint")
    for name, mask in ticket["masks"]["weights"].items():
        assert torch.equal(state2["masks"]["weights"][name], mask)
        assert (state2["model"][f"{name}.weight"][~mask] == 0).all()
        # fresh weights, not the pruned supernet's
        assert not torch.equal(state2["model"][f"{name}.weight"], state["model"][
            f"{name}.weight"])
    retrain = stage_runs(store["uri"], "tickets-cluttered")["train"].data.metrics
    assert retrain["ticket.sparsity"] == pytest.approx(ticket["sparsity"]["sparsity"])
    assert "val_accuracy_ticket" in retrain  # the ticket's own arch is what gets scored
