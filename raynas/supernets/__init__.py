"""Supernet families, chosen by the ``family`` of a search space.

A family registers a supernet class (elastic, holds all weights) and a static class (the plain
torch model of one subnet, built from the space's ``model`` settings and an Arch alone). Both
name their submodules alike, so ``export.extract`` can fill the static model from the
supernet's ``active_state()`` tensors, and both take the inputs of the family's task as
``forward`` arguments (``raynas.tasks``).

Users add families through the entry-point group ``raynas.families``: the entry point names
a module that calls ``register_family`` on import (see ``raynas.registry``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from raynas.errors import ConfigError
from raynas.registry import Registry
from raynas.space import Arch, IntRange, SearchSpace


@dataclass(frozen=True)
class Family:
    """``tasks``: the tasks the family's models take (the first is the default).
    ``dims``: the dimension names the family reads for given model settings: a space that
    declares any other is refused (it would change arch keys without changing the model)."""

    name: str
    supernet: Callable[[SearchSpace], nn.Module]
    static: Callable[[dict, Arch], nn.Module]
    tasks: tuple[str, ...]
    dims: Callable[[dict], set[str]]
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


def positive_settings(model: Mapping[str, Any], keys: tuple[str, ...], where: str) -> None:
    """``ConfigError`` (starting with ``where``) unless every ``model.<key>`` is a positive
    integer."""
    for key in keys:
        value = model.get(key)
        if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            raise ConfigError(f"{where}: model.{key} must be a positive integer, got "
                              f"{value!r}")


def check_layer_dims(space: SearchSpace, family: str, depth: str, required: tuple[str, ...],
                     moe: Mapping[str, int] | None) -> None:
    """The checks families with a depth and per-layer dims share: every ``required`` dim is
    declared, ``depth`` is an int dimension from 1, and an ``experts`` dim lies within
    ``model.moe``'s ``top_k..experts``."""
    where = f"space {space.name!r}"
    for name in (depth, *required):
        if name not in space.names:
            raise ConfigError(f"{where}: family {family!r} needs dimension {name!r}")
    if not isinstance(space.dim(depth), IntRange) or space.dim(depth).low < 1:
        raise ConfigError(f"{where}: {depth} must be an int dimension with low >= 1")
    if "experts" in space.names:
        values = space.dim("experts").values
        if moe is None or max(values) > moe["experts"] or min(values) < moe["top_k"]:
            raise ConfigError(f"{where}: experts values {list(values)} must lie in "
                              "model.moe's top_k..experts")


def activation_setting(model: Mapping[str, Any], default: str, where: str) -> str:
    """``model.activation`` (``default`` when absent), checked against ``raynas.nn``'s."""
    from raynas.nn import ACTIVATIONS

    act = model.get("activation", default)
    if act not in ACTIVATIONS:
        raise ConfigError(f"{where}: model.activation = {act!r}; one of "
                          f"{', '.join(sorted(ACTIVATIONS))}")
    return act


def _load_builtin() -> None:
    # Import for the side effect of registration; kept lazy so `raynas.supernets` stays light.
    from raynas.supernets import (  # noqa: F401
        bert,
        cnn,
        conformer,
        resnet20_pool,
        seq_conv,
        transformer_mt,
        vit,
    )


FAMILIES: Registry[Family] = Registry("supernet family", "family", _load_builtin,
                                      group="raynas.families")


def register_family(family: Family) -> Family:
    return FAMILIES.register(family.name, family)


def get_family(name: str | None) -> Family:
    if name is None:
        raise ConfigError(f"family: the space declares none, so it can be replayed but not "
                          f"built or trained; add 'family:' naming one of "
                          f"{', '.join(family_names())}")
    return FAMILIES.get(name)


def family_names() -> list[str]:
    return FAMILIES.names()


def check_space(space: SearchSpace) -> Family:
    """The family of ``space``, after checking that it reads every dimension the space
    declares; a dimension nothing reads is a ``ConfigError``."""
    family = get_family(space.family)
    used = family.dims(dict(space.model))
    unused = [n for n in space.names if n not in used]
    if unused:
        raise ConfigError(
            f"space {space.name!r}: dimension {unused[0]!r} is not read by family "
            f"{family.name!r} (it reads {', '.join(sorted(used))}): it would change the "
            "arch key without changing the model; remove it from the space")
    return family


def create_supernet(space: SearchSpace, weights: Mapping[str, Any] | None = None
                    ) -> nn.Module:
    """Build the supernet for ``space`` (its ``family`` and ``model`` settings) under the
    weight scheme ``weights`` (``{name, options}``; None: ``shared``, the family's module)."""
    from raynas.weights import apply_scheme

    family = check_space(space)
    return apply_scheme(space, lambda: family.supernet(space), weights)


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
