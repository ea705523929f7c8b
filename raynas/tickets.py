"""Tickets: a subnet's arch and its pruning masks, moved from a pruned supernet to a new job.

``raynas ticket export`` writes one (``make_ticket`` + ``save_ticket``) from a checkpoint
trained with ``train.prune``; a job with ``train.init_ticket: FILE`` retrains that arch from
fresh weights with the masks fixed, on its own data or task of the same space.

A ticket file (``torch.save``, plain values and tensors, read with ``weights_only=True``):
``format``, ``space`` (definition), ``fingerprint``, ``family``, ``arch``, ``masks``
(``{"weights": {op: bool tensor}, "channels": {bn: bool tensor}}``, full supernet shapes),
``sparsity`` (of the arch's own weights), ``source`` (the checkpoint it came from) and
``epoch``. Loading it for another space is a ``CheckpointError``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from raynas.checkpoint import load_checkpoint, load_torch_file
from raynas.errors import CheckpointError
from raynas.space import Arch, SearchSpace

FORMAT = "raynas-ticket/1"


def make_ticket(checkpoint: str | Path, arch: dict[str, Any] | Arch) -> dict[str, Any]:
    """The ticket of ``arch`` (validated against the checkpoint's space) from a checkpoint
    that carries pruning masks."""
    from raynas.supernets import create_supernet
    from raynas.weights import active_net
    from raynas.weights.masks import install_masks, subnet_sparsity

    state = load_checkpoint(checkpoint)
    masks = state.get("masks") or {}
    if not masks.get("weights"):
        raise CheckpointError(f"checkpoint {str(checkpoint)!r} has no pruning masks: train "
                              "with train.prune (e.g. train.prune.name=supertickets) first")
    space: SearchSpace = state["space"]
    arch = space.validate(arch if isinstance(arch, Arch) else dict(arch))
    net = create_supernet(space, state["weights"])
    net.load_state_dict(state["model"])
    install_masks(active_net(net), masks["weights"], masks.get("channels"))
    net.set_arch(arch)
    return {"format": FORMAT, "space": space.to_dict(), "fingerprint": space.fingerprint,
            "family": space.family, "arch": arch.to_dict(), "masks": masks,
            "sparsity": subnet_sparsity(active_net(net)), "source": str(checkpoint),
            "epoch": state["epoch"]}


def save_ticket(ticket: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ticket, path)
    return path


def load_ticket(source: str | Path | bytes, expected: SearchSpace | None = None
                ) -> dict[str, Any]:
    """Read a ticket (a path, or the file's bytes); ``space`` becomes a SearchSpace and
    ``arch`` an Arch of it. With ``expected``, a ticket of another space (other family,
    model settings or dims) is a ``CheckpointError``."""
    what = f"ticket {str(source)!r}" if not isinstance(source, bytes) else "ticket"
    if isinstance(source, bytes):
        payload = load_torch_file(io.BytesIO(source), what)
    else:
        if not Path(source).is_file():
            raise CheckpointError(f"{what}: file does not exist")
        payload = load_torch_file(source, what)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{what} is not a raynas ticket (write one with "
                              "`raynas ticket export`)")
    space = SearchSpace.from_dict(payload["space"], source=what)
    if expected is not None and space.fingerprint != expected.fingerprint:
        raise CheckpointError(
            f"{what} was cut from space {space.name!r} (family {space.family}, fingerprint "
            f"{space.fingerprint}); this job uses space {expected.name!r} (family "
            f"{expected.family}, fingerprint {expected.fingerprint}): a ticket's masks only "
            "fit the space they were pruned in")
    payload["space"] = space
    payload["arch"] = space.validate(payload["arch"])
    return payload
