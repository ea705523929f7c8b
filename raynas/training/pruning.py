"""Pruning interleaved with supernet training (``train.prune``), by registered name.

``supertickets`` is SuperTickets' two-in-one training (You et al., ECCV 2022): while the
supernet trains,

- every ``interval`` epochs, global magnitude pruning of all conv / linear weights of the
  elastic ops (no bias, no norm) to ``min(target, step * k)`` after the k-th interval: the
  ``round(ratio * N)`` smallest ``|w|`` of the N prunable weights are masked, exactly (ties
  broken by position, the same on every worker), through the weight seam
  (``raynas.weights.masks``), so every subnet's forward and export see the masked weights.
  ``min_keep`` (0, the reference's rule) exempts each op's ``ceil(min_keep * size)``
  largest weights from the ranking: one global ranking can empty an op whose weights are
  small by construction (at 90 % on ``vit_tiny``, every MBConv depthwise conv);
- with ``rho > 0``, network slimming on the elastic batch norms: the gradient of
  ``rho(t) * sum_k penalty_k * |gamma_k|`` is added to each step's averaged gradient, with
  ``penalty_k`` the channel's FLOPs share, and every ``shrink_interval`` epochs the channels
  with ``|gamma| < shrink_threshold`` are dropped as masks (gamma and beta held at 0; the
  model keeps its shape: no physical shrinking, so every subnet and export stay as they are).

Readings chosen (the digest asks to decide):

- ``regrow: false`` zeroes the pruned weights and keeps them at zero (re-zeroed after every
  optimizer step, so momentum and weight decay cannot move them); the next interval ranks
  only the surviving weights, so pruned weights never return. ``regrow: true`` is the
  reference's explicit iterative reactivation (``reset_mask``): the masks are reset to 1
  right after the pruned epoch's checkpoint, the pruned weights rejoin training with the
  values they had (masked, not zeroed), and the next interval re-prunes all weights
  globally. [interpretation] Reactivation stops once the schedule reaches ``target`` and
  the masks stay: reactivating to the end, as the reference's 350-epoch loop does, left a
  one-shot prune of a dense epoch (at 90 % on resnet20_pool_tiny the largest subnet scored
  0.39-0.41 against 0.69). The last epoch always prunes, so the last checkpoint has masks.
- The pruned epoch is evaluated and checkpointed with its masks (as the reference evaluates
  and saves the pruned model before reactivating).
- rho(t) warms up linearly per step from 0 to ``rho`` over ``rho_warmup`` epochs [recall:
  HR-NAS ramps per iteration]; ``epoch_free`` (0 in every config) is not an option.
- penalty_k [interpretation]: a BN channel's cost is the FLOPs of the conv / linear op that
  produces it plus those of the op that consumes it, per channel, measured on the largest
  subnet (the first op before the BN with as many outputs, the first after it with as many
  inputs, in execution order); penalties are normalised to mean 1 over all channels, so rho
  is plain network slimming's L1 weight on average. They are computed once; HR-NAS recomputes
  them as channels shrink (``update_penalty``), which this does not.
- Only elastic ops are masked: a family's fixed stem (a plain ``nn.Conv2d`` / BN, the same in
  every subnet) stays dense and is not counted. Slimming needs elastic batch norms with an
  affine scale (``cnn``, ``vit``); ``resnet20_pool`` (plain, and in its paper setting
  affine-free, BN) and ``seq_conv`` (no BN) refuse ``rho > 0`` when the job loads.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from raynas.errors import ConfigError, describe_value
from raynas.registry import Registry
from raynas.space import SearchSpace
from raynas.training.slimming import channel_metrics, channel_penalties, drop_channels
from raynas.weights.masks import (
    Masks,
    has_masks,
    install_masks,
    norm_ops,
    prunable_ops,
    weight_counts,
    zero_masked_,
)

PRUNERS: Registry = Registry("pruning method", "train.prune", group="raynas.pruners")


class Pruner:
    """What the training loop calls, in order: ``setup`` once (masks installed); per step
    ``before_step`` (after the workers' gradient average, before clipping) and ``after_step``
    (after the optimizer step); per epoch ``end_epoch`` (before evaluation and the checkpoint,
    returns metrics) and ``after_checkpoint``."""

    def setup(self, net: nn.Module, inputs: Sequence[torch.Tensor], space: SearchSpace,
              steps_per_epoch: int) -> None:
        install_masks(net)

    def before_step(self, net: nn.Module, step: int) -> None:
        """Add a regulariser's gradient (BN slimming)."""

    def after_step(self, net: nn.Module) -> None:
        zero_masked_(net)

    def end_epoch(self, net: nn.Module, epoch: int, epochs: int, world: int = 1
                  ) -> dict[str, float]:
        return sparsity_metrics(net)

    def after_checkpoint(self, net: nn.Module, epoch: int, epochs: int) -> None:
        """After epoch ``epoch``'s checkpoint (and after a resume from it)."""


def sparsity_metrics(net: nn.Module) -> dict[str, float]:
    masked, total = weight_counts(net)
    return {"prune.sparsity": masked / max(total, 1), "prune.masked_weights": float(masked)}


class FixedMasks(Pruner):
    """A ticket's masks (``train.init_ticket``): fixed, pruned weights and channels held at 0."""

    def __init__(self, weights: dict[str, torch.Tensor], channels: dict[str, torch.Tensor]):
        self.weights, self.channels = weights, channels

    def setup(self, net, inputs, space, steps_per_epoch):
        install_masks(net, self.weights, self.channels)
        zero_masked_(net)


@PRUNERS.register("none")
def no_pruning(space: SearchSpace | None) -> None:
    """No pruning (the default): training as before ``train.prune`` existed."""
    return None


def _number(field: str, value: Any, low: float, high: float, low_open: bool = False) -> float:
    ok = (not isinstance(value, bool) and isinstance(value, int | float)
          and math.isfinite(value) and (low < value if low_open else low <= value)
          and value <= high)
    if not ok:
        bounds = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise ConfigError(f"train.prune.options.{field} = {describe_value(value)}: must be a "
                          f"number in {bounds}")
    return float(value)


def _epochs(field: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"train.prune.options.{field} = {describe_value(value)}: must be an "
                          f"integer number of epochs >= {low}")
    return value


@PRUNERS.register("supertickets")
class SuperTickets(Pruner):
    """Progressive global magnitude pruning (+ optional BN slimming); see the module doc.

    ``target``: final share of pruned weights, in (0, 1); ``interval``: epochs between
    prunings; ``step``: sparsity added per interval; ``regrow``: iterative reactivation;
    ``min_keep``: share of each op's weights never pruned (below ``1 - target``);
    ``rho``: BN slimming's L1 weight (0: off); ``rho_warmup``: its warm-up in epochs;
    ``shrink_threshold``: |gamma| below which a channel drops; ``shrink_interval``: epochs
    between channel drops (default ``interval``)."""

    def __init__(self, space: SearchSpace | None, target: float = 0.5, interval: int = 10,
                 step: float = 0.1, regrow: bool = False, min_keep: float = 0.0,
                 rho: float = 0.0, rho_warmup: int = 0, shrink_threshold: float = 1e-3,
                 shrink_interval: int | None = None):
        self.target = _number("target", target, 0, 1, low_open=True)
        if self.target >= 1:
            raise ConfigError(f"train.prune.options.target = {target!r}: must be below 1 "
                              "(a share of the weights)")
        self.min_keep = _number("min_keep", min_keep, 0, 1)
        if self.min_keep > 1 - self.target + 1e-12:
            raise ConfigError(f"train.prune.options.min_keep = {min_keep!r}: must be at most "
                              f"1 - target = {1 - self.target:g}, or pruning cannot reach "
                              "target")
        self.interval = _epochs("interval", interval, 1)
        self.step = _number("step", step, 0, 1, low_open=True)
        if not isinstance(regrow, bool):
            raise ConfigError(f"train.prune.options.regrow = {describe_value(regrow)}: "
                              "must be true or false")
        self.regrow = regrow
        self.rho = _number("rho", rho, 0, 1)
        self.rho_warmup = _epochs("rho_warmup", rho_warmup, 0)
        self.shrink_threshold = _number("shrink_threshold", shrink_threshold, 0, math.inf)
        self.shrink_interval = _epochs("shrink_interval", self.interval
                                       if shrink_interval is None else shrink_interval, 1)
        self.penalties: dict[str, torch.Tensor] = {}
        self.steps_per_epoch = 1
        self.settled = False  # the schedule reached target: masks stay, even with regrow

    @property
    def slimming(self) -> bool:
        return self.rho > 0

    # ---- schedule ----------------------------------------------------------------------
    def ratio_at(self, epoch: int) -> float:
        """The scheduled sparsity after 0-based ``epoch``: ``min(target, step * k)``, k the
        intervals completed (the reference's ``floor((epoch + 1) / prune_interval)``)."""
        return min(self.target, self.step * ((epoch + 1) // self.interval))

    def reached(self, epoch: int) -> bool:  # the schedule is at target after epoch
        return self.ratio_at(epoch) >= self.target - 1e-12

    def prunes_at(self, epoch: int, epochs: int) -> bool:
        return ((epoch + 1) % self.interval == 0 or epoch == epochs - 1) \
            and self.ratio_at(epoch) > 0

    def check_schedule(self, epochs: int) -> None:
        """A ConfigError when ``epochs`` end before the schedule reaches ``target``."""
        reached = self.ratio_at(epochs - 1)
        if reached < self.target - 1e-9:
            need = math.ceil(round(self.target / self.step, 9)) * self.interval
            raise ConfigError(
                f"train.prune.options.target = {self.target:g}: with step {self.step:g} every "
                f"{self.interval} epochs, {epochs} epochs (train.epochs) reach only "
                f"{reached:g}; train {need} epochs or more, or raise step, or shorten interval")

    def rho_at(self, step: int) -> float:
        if not self.rho_warmup:
            return self.rho
        return self.rho * min(1.0, (step + 1) / (self.rho_warmup * self.steps_per_epoch))

    # ---- loop hooks --------------------------------------------------------------------
    def setup(self, net, inputs, space, steps_per_epoch):
        self.steps_per_epoch = max(1, steps_per_epoch)
        install_masks(net, with_norms=self.slimming)
        if self.slimming:
            net.set_arch(space.largest())
            self.penalties = channel_penalties(net, inputs)

    @torch.no_grad()
    def before_step(self, net, step):
        if not self.slimming:
            return
        rho = self.rho_at(step)
        for name, bn in norm_ops(net):
            grad = rho * self.penalties[name].to(bn.weight.device) * torch.sign(bn.weight)
            bn.weight.grad = grad if bn.weight.grad is None else bn.weight.grad + grad

    @property
    def reactivating(self) -> bool:
        return self.regrow and not self.settled

    def after_step(self, net):
        # Regrow keeps the pruned weights' values (the masks hide them until reactivation).
        zero_masked_(net, weights=not self.reactivating, channels=True)

    def end_epoch(self, net, epoch, epochs, world=1):
        metrics: dict[str, float] = {"prune.ratio": self.ratio_at(epoch)}
        if self.prunes_at(epoch, epochs):
            global_magnitude_prune(net, self.ratio_at(epoch), keep_pruned=not self.reactivating,
                                   min_keep=self.min_keep)
            self.settled = self.reached(epoch)
        if self.slimming:
            metrics["prune.rho"] = self.rho_at((epoch + 1) * self.steps_per_epoch - 1)
            if (epoch + 1) % self.shrink_interval == 0 or epoch == epochs - 1:
                drop_channels(net, self.shrink_threshold)
            metrics.update(channel_metrics(net))
        metrics["prune.workers_agree"] = float(agree_across_workers(net, world))
        zero_masked_(net, weights=not self.reactivating, channels=True)
        metrics.update(sparsity_metrics(net))
        return metrics

    @torch.no_grad()
    def after_checkpoint(self, net, epoch, epochs):  # epoch's checkpoint written or restored
        self.settled = self.reached(epoch)
        if self.reactivating and self.prunes_at(epoch, epochs) and epoch < epochs - 1:
            for _, op in prunable_ops(net):
                op.weight_provider.weight.fill_(1.0)  # iterative reactivation


def check_prune_site(pruner: Any, net: nn.Module, space: SearchSpace) -> None:
    """A clear error when ``pruner`` cannot act on ``space``'s family: no elastic conv /
    linear op to prune, or slimming (``rho > 0``) without an elastic affine batch norm.
    Checked when the job loads (on a supernet built on the meta device)."""
    if pruner is None:
        return
    if not any(True for _ in prunable_ops(net)):
        raise ConfigError(f"train.prune: family {space.family!r} has no elastic conv or "
                          "linear op to prune")
    if getattr(pruner, "slimming", False) and not any(True for _ in norm_ops(net)):
        raise ConfigError(
            f"train.prune.options.rho = {pruner.rho:g}: family {space.family!r} has no "
            "elastic batch norm with an affine scale to slim (resnet20_pool's BN is plain and, "
            "in its paper setting, affine-free; seq_conv has none); set rho to 0 to prune "
            "weights only")


# ---- the pieces ----------------------------------------------------------------------------
@torch.no_grad()
def global_magnitude_prune(net: nn.Module, ratio: float, keep_pruned: bool,
                           min_keep: float = 0.0) -> int:
    """Mask the ``round(ratio * N)`` smallest-magnitude weights of all N prunable weights
    (one ranking across every op); ties go by position (op order, then flat index), so the
    count is exact and every worker with the same weights gets the same masks.
    ``keep_pruned``: weights masked already rank first (they stay pruned). ``min_keep``:
    each op's ``ceil(min_keep * size)`` highest-ranked weights are left out of the ranking
    (``ratio <= 1 - min_keep`` keeps the count exact). Returns the number masked."""
    ops = [op for _, op in prunable_ops(net)]
    scores = []
    for op in ops:
        score = op.weight.detach().abs().flatten().float().cpu()
        if keep_pruned:
            score[op.weight_provider.weight.flatten().cpu() == 0] = -math.inf
        floor = math.ceil(round(min_keep * score.numel(), 9))
        if floor:
            score[torch.sort(score, descending=True, stable=True).indices[:floor]] = math.inf
        scores.append(score)
    flat = torch.cat(scores)
    n = int(round(ratio * flat.numel()))
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[torch.sort(flat, stable=True).indices[:n]] = False
    offset = 0
    for op in ops:
        mask = op.weight_provider.weight
        size = mask.numel()
        mask.copy_(keep[offset:offset + size].view_as(mask).to(mask.dtype))
        offset += size
    return n


def masks_digest(net: nn.Module) -> str:
    digest = hashlib.sha1()
    for name, module in net.named_modules():
        if isinstance(module, Masks):
            for key, mask in module._buffers.items():
                digest.update(name.encode() + key.encode())
                digest.update((mask.detach().cpu() != 0).numpy().tobytes())
    return digest.hexdigest()


def agree_across_workers(net: nn.Module, world: int) -> bool:
    """Whether every data-parallel worker holds the same masks (their weights are the same
    after averaged gradients, so the deterministic ranking should agree); if not, rank 0's
    masks are broadcast to all, so training stays consistent, and False is returned."""
    import torch.distributed as dist

    if world <= 1 or not (dist.is_available() and dist.is_initialized()) or not has_masks(net):
        return True
    digests: list[Any] = [None] * world
    dist.all_gather_object(digests, masks_digest(net))
    if len(set(digests)) == 1:
        return True
    for module in net.modules():
        if isinstance(module, Masks):
            for mask in module._buffers.values():
                dist.broadcast(mask, src=0)
    if dist.get_rank() == 0:
        print("[raynas] train: WARNING: the workers' pruning masks differed; rank 0's are "
              "used by all", flush=True)
    return False
