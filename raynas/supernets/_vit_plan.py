"""Settings, dimensions and the layer plan of the ``vit`` family (``raynas.supernets.vit``).

``plan(settings, values)`` turns model settings and an arch (or the largest values of a
space) into concrete layers: each conv block's input and output widths, expand ratio, kernel,
stride and input size; each transformer stage's input and embedding widths, input map and
token grid sizes, and per-block heads, MLP width and value scale. The supernet sizes its
parameters from the plan of the largest values and configures its slices from the plan of
each arch; the static model is built from the plan of its arch. One plan for both, so the two
agree by construction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from raynas.errors import ConfigError, describe_value
from raynas.nn.activations import ACTIVATIONS
from raynas.space import Choice, IntRange, PerLayer, SearchSpace

_REQUIRED = {
    "in_channels": "input channels, as the task reads them",
    "num_classes": "classes, as the task reads them",
    "image_size": "input side in pixels, as the task reads it",
    "transformer_strides": "one stride (1 or 2) per transformer stage",
    "head_dim": "the width of one attention head",
}
_DEFAULTS: dict[str, Any] = {
    "activation": "gelu", "stem_stride": 1, "stem_blocks": False, "conv_strides": [],
    "conv_se": None, "entry": "conv", "entry_expand": 6, "entry_se": True,
    "attention": "vit", "head": "linear", "head_expand": 6, "head_hidden": 1984,
}
_ONE_OF = {"activation": tuple(ACTIVATIONS), "entry": ("conv", "mbconv"),
           "attention": ("vit", "elasticvit"), "head": ("linear", "mbv3")}
_POSITIVE = ("in_channels", "num_classes", "image_size", "head_dim", "entry_expand",
             "head_expand", "head_hidden")


@dataclass(frozen=True)
class Settings:
    """The checked model settings, defaults filled in (see ``raynas.supernets.vit``)."""

    in_channels: int
    num_classes: int
    image_size: int
    transformer_strides: tuple[int, ...]
    head_dim: int
    activation: str
    stem_stride: int
    stem_blocks: bool
    conv_strides: tuple[int, ...]
    conv_se: tuple[bool, ...]
    entry: str
    entry_expand: int
    entry_se: bool
    attention: str
    head: str
    head_expand: int
    head_hidden: int


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _strides(v: Any) -> bool:
    return isinstance(v, list) and all(_is_int(x) and x in (1, 2) for x in v)


def parse_settings(model: Mapping[str, Any], where: str) -> Settings:
    """Check ``model`` (a space's model settings); ``where`` starts error messages."""
    def fail(key: str, allowed: str) -> ConfigError:
        return ConfigError(f"{where}: model.{key} = {describe_value(model[key])}: {allowed}")

    for key, about in _REQUIRED.items():
        if key not in model:
            raise ConfigError(f"{where}: model.{key} is required by family 'vit' ({about})")
    known = sorted({*_REQUIRED, *_DEFAULTS})
    for key in model:
        if key not in known:
            raise ConfigError(f"{where}: model.{key} is not a setting of family 'vit'; "
                              f"its settings: {', '.join(known)}")
    m = {**_DEFAULTS, **model}
    for key in _POSITIVE:
        if not _is_int(m[key]) or m[key] < 1:
            raise fail(key, "must be a positive integer")
    for key in ("stem_blocks", "entry_se"):
        if not isinstance(m[key], bool):
            raise fail(key, "must be true or false")
    for key, allowed in _ONE_OF.items():
        if m[key] not in allowed:
            raise fail(key, f"must be one of {', '.join(allowed)}")
    if not _is_int(m["stem_stride"]) or m["stem_stride"] not in (1, 2):
        raise fail("stem_stride", "must be 1 or 2")
    if not _strides(m["conv_strides"]):
        raise fail("conv_strides", "must be a list of 1s and 2s, one per conv stage")
    if not _strides(m["transformer_strides"]) or not m["transformer_strides"]:
        raise fail("transformer_strides", "must be a non-empty list of 1s and 2s, one per "
                   "transformer stage")
    n_conv = len(m["conv_strides"])
    se = [False] * n_conv if m["conv_se"] is None else m["conv_se"]
    if (not isinstance(se, list) or len(se) != n_conv
            or not all(isinstance(v, bool) for v in se)):
        raise fail("conv_se", f"must be a list of {n_conv} true/false, one per conv stage "
                   "(model.conv_strides)")
    return Settings(**{**m, "conv_strides": tuple(m["conv_strides"]), "conv_se": tuple(se),
                       "transformer_strides": tuple(m["transformer_strides"])})


# ---- dimensions ----------------------------------------------------------------------------------
_STAGE_PARTS = {"c": ("depth", "width", "expand", "kernel"),
                "t": ("depth", "embed", "mlp_ratio", "heads", "v_scale")}


def dim_names(model: Mapping[str, Any]) -> set[str]:
    """Every dimension the family reads for ``model`` (``t{i}_heads`` and ``t{i}_v_scale``
    are read where a space declares them)."""
    s = parse_settings(model, "family 'vit'")
    names = {"stem_width"} | ({"stem_depth", "stem_kernel"} if s.stem_blocks else set())
    for prefix, n in (("c", len(s.conv_strides)), ("t", len(s.transformer_strides))):
        names |= {f"{prefix}{i}_{part}" for i in range(1, n + 1)
                  for part in _STAGE_PARTS[prefix]}
    return names


def _pos_int(v: Any) -> bool:
    return _is_int(v) and v > 0


def _odd(v: Any) -> bool:
    return _pos_int(v) and v % 2 == 1


def _pos_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0


class _Dims:
    """Looks up and checks the dimensions of one space, naming them in errors."""

    def __init__(self, space: SearchSpace):
        self.space = space

    def fail(self, name: str, allowed: str) -> ConfigError:
        return ConfigError(f"space {self.space.name!r}: dimension {name!r} = "
                           f"{describe_value(self.space.dim(name).spec())}: {allowed}")

    def get(self, name: str, what: str):
        try:
            return self.space.dim(name)
        except KeyError:
            raise ConfigError(f"space {self.space.name!r}: family 'vit' needs dimension "
                              f"{name!r} ({what})") from None

    def depth(self, name: str, what: str) -> None:
        d = self.get(name, what)
        ok = ((isinstance(d, IntRange) and d.low >= 1)
              or (isinstance(d, Choice) and all(_pos_int(v) for v in d.values)))
        if not ok:
            raise self.fail(name, "must be an int dimension with low >= 1 (or a choice of "
                            "positive integers)")

    def width(self, name: str, what: str) -> tuple:
        d = self.get(name, what)
        if not isinstance(d, Choice) or not all(_pos_int(v) for v in d.values):
            raise self.fail(name, "must be a choice of positive integers")
        return d.values

    def layered(self, name: str, depth: str, what: str, ok: Callable[[Any], bool],
                kind: str, optional: bool = False) -> tuple | None:
        if optional and name not in self.space.names:
            return None
        d = self.get(name, what)
        per_stage = isinstance(d, Choice)
        per_layer = isinstance(d, PerLayer) and d.depth == depth
        if not (per_stage or per_layer) or not all(ok(v) for v in d.values):
            raise self.fail(name, f"must be a choice of {kind} (one per stage) or a per_layer "
                            f"of them with depth {depth} (one per block)")
        return d.values


def check_dims(space: SearchSpace, s: Settings) -> None:
    """Every dimension the family needs is declared, with values it can build."""
    dims = _Dims(space)
    dims.width("stem_width", "the stem's width")
    if s.stem_blocks:
        dims.depth("stem_depth", "stem blocks, as model.stem_blocks is true")
        dims.layered("stem_kernel", "stem_depth", "stem blocks' kernel", _odd, "odd integers")
    for i in range(1, len(s.conv_strides) + 1):
        what = f"conv stage {i} of {len(s.conv_strides)} declared by model.conv_strides"
        dims.depth(f"c{i}_depth", what)
        dims.width(f"c{i}_width", what)
        dims.layered(f"c{i}_expand", f"c{i}_depth", what, _pos_int, "positive integers")
        dims.layered(f"c{i}_kernel", f"c{i}_depth", what, _odd, "odd integers")
    for i in range(1, len(s.transformer_strides) + 1):
        what = (f"transformer stage {i} of {len(s.transformer_strides)} declared by "
                "model.transformer_strides")
        depth = f"t{i}_depth"
        dims.depth(depth, what)
        embeds = dims.width(f"t{i}_embed", what)
        dims.layered(f"t{i}_mlp_ratio", depth, what, _pos_number, "positive numbers")
        dims.layered(f"t{i}_v_scale", depth, what, _pos_int, "positive integers",
                     optional=True)
        heads = dims.layered(f"t{i}_heads", depth, what, _pos_int, "positive integers",
                             optional=True)
        if heads is None and any(e % s.head_dim for e in embeds):
            raise dims.fail(f"t{i}_embed", f"every value must be a multiple of model.head_dim "
                            f"({s.head_dim}): heads = embed // head_dim, as t{i}_heads is not "
                            "declared")


def largest_values(space: SearchSpace) -> dict[str, Any]:
    """The largest value of every dimension (per_layer: at the largest depth): the supernet's
    parameter sizes. Not an arch of the space when values are not listed smallest first."""
    out: dict[str, Any] = {}
    for d in space.dims:
        if isinstance(d, IntRange):
            out[d.name] = d.high
        elif isinstance(d, PerLayer):
            out[d.name] = (max(d.values),) * d.max_len
        else:
            out[d.name] = max(d.values)
    return out


# ---- the plan ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConvLayer:
    cin: int
    cout: int
    expand: int
    kernel: int
    stride: int
    se: bool
    in_size: int  # side of the input map


@dataclass(frozen=True)
class TStage:
    cin: int
    embed: int
    stride: int
    in_size: int  # side of the input map
    grid: int  # side of the token grid (tokens = grid^2)
    heads: tuple[int, ...]  # one per block; so are hidden and v_scale
    hidden: tuple[int, ...]
    v_scale: tuple[int, ...]


@dataclass(frozen=True)
class Plan:
    stem_width: int
    stem_blocks: tuple[ConvLayer, ...]
    conv_stages: tuple[tuple[ConvLayer, ...], ...]
    t_stages: tuple[TStage, ...]
    last: int  # width into the head


def _layers(values: Mapping[str, Any], name: str, depth: int, default: Any = None) -> tuple:
    if name not in values:
        return (default,) * depth
    v = values[name]
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * depth


def _out(size: int, stride: int) -> int:
    return (size - 1) // stride + 1  # a padded odd-kernel conv; ElasticViT's ceil(size / 2)


def plan(s: Settings, values: Mapping[str, Any]) -> Plan:
    """The layers of the subnet with dimension ``values`` (an arch, or ``largest_values``)."""
    size = _out(s.image_size, s.stem_stride)
    cin = values["stem_width"]
    stem: tuple[ConvLayer, ...] = ()
    if s.stem_blocks:
        stem = tuple(ConvLayer(cin, cin, 1, k, 1, False, size)
                     for k in _layers(values, "stem_kernel", values["stem_depth"]))
    conv_stages = []
    for i, (stride, se) in enumerate(zip(s.conv_strides, s.conv_se), start=1):
        depth, width = values[f"c{i}_depth"], values[f"c{i}_width"]
        layers = []
        for j, (e, k) in enumerate(zip(_layers(values, f"c{i}_expand", depth),
                                       _layers(values, f"c{i}_kernel", depth))):
            st = stride if j == 0 else 1
            layers.append(ConvLayer(cin, width, e, k, st, se, size))
            size, cin = _out(size, st), width
        conv_stages.append(tuple(layers))
    t_stages = []
    for i, stride in enumerate(s.transformer_strides, start=1):
        depth, embed = values[f"t{i}_depth"], values[f"t{i}_embed"]
        grid = _out(size, stride)
        ratios = _layers(values, f"t{i}_mlp_ratio", depth)
        t_stages.append(TStage(
            cin, embed, stride, size, grid,
            heads=_layers(values, f"t{i}_heads", depth, embed // s.head_dim),
            hidden=tuple(max(1, int(r * embed)) for r in ratios),
            v_scale=_layers(values, f"t{i}_v_scale", depth, 1)))
        size, cin = grid, embed
    return Plan(values["stem_width"], stem, tuple(conv_stages), tuple(t_stages), cin)
