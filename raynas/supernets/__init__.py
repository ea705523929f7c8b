"""Supernet families, chosen by the ``family`` of a search space.

A family registers a supernet class (elastic, holds all weights) and a static class (the plain
torch model of one subnet, built from the space's ``model`` settings and an Arch alone). Both
name their submodules alike, so ``export.extract`` can fill the static model from the
supernet's ``active_state()`` tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from raynas.errors import ConfigError
from raynas.space import Arch, SearchSpace


@dataclass(frozen=True)
class Family:
    name: str
    supernet: Callable[[SearchSpace], nn.Module]
    static: Callable[[dict, Arch], nn.Module]
    input_shape: Callable[[dict], tuple[int, ...]]  # one sample's shape, from model settings
    # The subnet as a sequence of ops for latency lookup tables: (key, build, input shape).
    # Equal keys mean the same computation on the same input shape.
    ops: Callable[[dict, Arch], list[Op]] | None = None


@dataclass(frozen=True)
class Op:
    """One op of a subnet for a latency lookup table: ``build()`` returns a module that runs
    exactly that computation on an input of ``input_shape`` (one sample, no batch dim)."""

    key: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    if family.name in _FAMILIES:
        raise ValueError(f"supernet family {family.name!r} is already registered")
    _FAMILIES[family.name] = family
    return family


def get_family(name: str) -> Family:
    _load_builtin()
    if name not in _FAMILIES:
        known = ", ".join(sorted(_FAMILIES))
        raise ConfigError(f"family = {name!r}: unknown supernet family; registered: {known}")
    return _FAMILIES[name]


def family_names() -> list[str]:
    _load_builtin()
    return sorted(_FAMILIES)


def create_supernet(space: SearchSpace) -> nn.Module:
    """Build the supernet for ``space`` (its ``family`` and ``model`` settings)."""
    return get_family(space.family).supernet(space)


def build_static(space: SearchSpace, arch: Arch) -> nn.Module:
    """Build an untrained plain torch model of ``arch`` (weights come from a state dict)."""
    return get_family(space.family).static(dict(space.model), arch)


def subnet_ops(space: SearchSpace, arch: Arch) -> list[Op]:
    """``arch`` as its ops (for lookup-table latency); a clear error where a family has none."""
    family = get_family(space.family)
    if family.ops is None:
        raise ConfigError(f"latency.model = 'lut': family {family.name!r} declares no ops; "
                          "use 'measured' or 'predictor'")
    return family.ops(dict(space.model), arch)


def _load_builtin() -> None:
    # Import for the side effect of registration; kept lazy so `raynas.supernets` stays light.
    from raynas.supernets import cnn  # noqa: F401
