"""How a subnet gets its weights: the job's weight scheme (``weights: {name, options}``).

- ``shared`` (the default): one set of full-size weights, front-sliced per subnet
  (Once-for-All, HAT). The supernet is the family's own module, unchanged.
- ``mos_layer`` / ``mos_neuron``: Mixture-of-Supernets (``mos.py``). Each routed elastic op
  holds E full-size experts, mixed by a small router of the arch encoding, one mixing weight
  per op or one per output neuron.
- ``balanced_mixture``: K independent supernets, each arch assigned to one by learned,
  balanced probabilities (``balanced.py``).

The seam is the elastic op's weight provider (``ElasticModule.param``): a scheme that
generates tensors installs providers and never touches an op's slicing or a family's code,
so every family works with every scheme. A scheme is a factory ``(space, build, **options)``
where ``build()`` returns a fresh supernet of the space's family; it returns the module to
train, a ``SchemeSupernet`` unless it is ``shared``. Users add schemes through the
entry-point group ``raynas.weights``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from raynas.checkpoint import scheme_spec
from raynas.registry import Registry
from raynas.space import Arch, SearchSpace

# ``score(net) -> float``: the task's primary metric (higher is better) of the net as it is
# set, on one validation minibatch (the balanced mixture's assignment feedback).
Score = Callable[[nn.Module], float]


class SchemeSupernet(nn.Module):
    """A supernet whose weights a scheme provides. It acts as a supernet (``set_arch``,
    ``forward``) and adds what training and export need; the defaults suit a scheme that
    wraps one supernet as ``self.net``."""

    net: nn.Module

    def set_arch(self, arch: Arch) -> None:
        self.net.set_arch(arch)

    def forward(self, *inputs: Any, **kwargs: Any) -> Any:
        return self.active_net()(*inputs, **kwargs)

    def active_net(self) -> nn.Module:
        """The module whose elastic ops hold the active subnet (what export reads)."""
        return self.net

    # ---- training hooks (all optional) --------------------------------------------------
    def set_training_arch(self, arch: Arch, step: int) -> None:
        """Set ``arch`` for a training step (a scheme may choose differently than for
        evaluation: the balanced mixture samples a supernet here)."""
        self.set_arch(arch)

    def start_epoch(self, epoch: int, epochs: int) -> None:
        """Called before each training epoch."""

    def after_step(self, step: int, archs: Sequence[Arch], score: Score) -> None:
        """Called after each optimizer step with the step's archs."""

    def metrics(self) -> dict[str, float]:
        """Numbers to log with each epoch."""
        return {}


def _load_builtin() -> None:
    from raynas.weights import balanced, mos  # noqa: F401


WEIGHT_SCHEMES: Registry[Callable[..., nn.Module]] = Registry(
    "weight scheme", "weights", _load_builtin, group="raynas.weights")


@WEIGHT_SCHEMES.register("shared")
def shared(space: SearchSpace, build: Callable[[], nn.Module]) -> nn.Module:
    """One set of full-size weights, front-sliced per subnet."""
    return build()


def apply_scheme(space: SearchSpace, build: Callable[[], nn.Module],
                 spec: Mapping[str, Any] | None) -> nn.Module:
    """The supernet to train for ``space`` under the scheme ``spec`` (``{name, options}``,
    None for ``shared``)."""
    spec = normalise(spec)
    return WEIGHT_SCHEMES.create(spec["name"], spec["options"], space=space, build=build)


def normalise(spec: Mapping[str, Any] | None) -> dict[str, Any]:
    """``{name, options}`` with the defaults filled in (what checkpoints record)."""
    return scheme_spec(spec)


def active_net(net: nn.Module) -> nn.Module:
    """The module holding the active subnet's elastic ops (the net itself under ``shared``)."""
    return net.active_net() if isinstance(net, SchemeSupernet) else net


def set_training_arch(net: nn.Module, arch: Arch, step: int) -> None:
    if isinstance(net, SchemeSupernet):
        net.set_training_arch(arch, step)
    else:
        net.set_arch(arch)


__all__ = ["WEIGHT_SCHEMES", "SchemeSupernet", "Score", "active_net", "apply_scheme",
           "normalise", "set_training_arch"]
