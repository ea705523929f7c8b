"""``SearchSpace``: the dimensions of a supernet family and the YAML files that declare them.

A space file (see ``search_spaces/``)::

    name: digits_cnn
    family: cnn                 # registered supernet family that serves this space (a space
                                # without one serves `raynas replay` only: nothing to train)
    description: ...
    model: {...}                # fixed, family-specific settings (input size, classes, ...)
    dims:
      s1_depth:  {type: int, low: 1, high: 3}          # inclusive bounds
      s1_width:  {type: choice, values: [16, 24, 32]}  # smallest model first
      s1_kernel: {type: per_layer, depth: s1_depth, values: [3, 5]}
      lr:        {type: float, low: 1.0e-4, high: 0.1, log: true}
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from raynas.errors import ArchError, ConfigError, describe_value
from raynas.space.arch import Arch
from raynas.space.dims import Choice, Dim, FloatRange, IntRange, PerLayer

_DIM_TYPES = ("choice", "int", "float", "per_layer")


@dataclass(frozen=True)
class SearchSpace:
    name: str
    family: str | None  # None: a table-only space (replay), no supernet to build
    dims: tuple[Dim, ...]
    model: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""

    # ---- lookups -------------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.dims)

    def dim(self, name: str) -> Dim:
        for d in self.dims:
            if d.name == name:
                return d
        raise KeyError(name)

    def _depth_of(self, d: PerLayer, values: Mapping[str, Any]) -> int:
        return int(values[d.depth])

    # ---- points ----------------------------------------------------------------------------
    def _build(self, pick_scalar, pick_layer) -> Arch:
        values: dict[str, Any] = {}
        for d in self.dims:
            if not isinstance(d, PerLayer):
                values[d.name] = pick_scalar(d)
        for d in self.dims:
            if isinstance(d, PerLayer):
                values[d.name] = pick_layer(d, self._depth_of(d, values))
        return Arch(values)

    def sample(self, rng: random.Random | int | None = None) -> Arch:
        """A uniformly random Arch (per dimension). ``rng`` may be a seed."""
        if not isinstance(rng, random.Random):
            rng = random.Random(rng)
        return self._build(lambda d: d.sample(rng), lambda d, n: d.sample(rng, n))

    def largest(self) -> Arch:
        return self._build(lambda d: d.largest(), lambda d, n: d.largest(n))

    def smallest(self) -> Arch:
        return self._build(lambda d: d.smallest(), lambda d, n: d.smallest(n))

    def validate(self, arch: Mapping[str, Any]) -> Arch:
        """Check ``arch`` against the space and return it as an ``Arch`` (values normalised).

        Raises ``ArchError`` naming the dimension, the value and what is allowed.
        """
        if not isinstance(arch, Mapping):
            raise ArchError(f"an arch must be a mapping of dimension to value, got {arch!r}")
        unknown = [k for k in arch if k not in self.names]
        if unknown:
            raise ArchError(
                f"arch dimension {unknown[0]!r} is not in space {self.name!r}; "
                f"its dimensions are: {', '.join(self.names)}"
            )
        missing = [n for n in self.names if n not in arch]
        if missing:
            raise ArchError(f"arch lacks dimension {missing[0]!r} of space {self.name!r}")
        values: dict[str, Any] = {}
        for d in self.dims:
            if not isinstance(d, PerLayer):
                values[d.name] = d.validate(arch[d.name])
        for d in self.dims:
            if isinstance(d, PerLayer):
                values[d.name] = d.validate(arch[d.name], self._depth_of(d, values))
        return Arch(values)

    def contains(self, arch: Mapping[str, Any]) -> bool:
        try:
            self.validate(arch)
        except ArchError:
            return False
        return True

    # ---- encoding --------------------------------------------------------------------------
    @property
    def encoding_size(self) -> int:
        return sum(d.encoding_size() for d in self.dims)

    def encode(self, arch: Arch) -> list[float]:
        """Fixed-length vector (``encoding_size`` floats in [0, 1]) for routers and predictors.

        Categorical dims are one-hot, numeric ranges scaled to [0, 1] (log scale where the
        range is log), per-layer dims one one-hot block per possible layer (zeros past depth).
        """
        out: list[float] = []
        for d in self.dims:
            out.extend(d.encode(arch[d.name]))
        return out

    def size(self) -> int | None:
        """Number of distinct Archs, or None when a float dimension makes it infinite."""
        total = 1
        per_layer_by_depth: dict[str, list[PerLayer]] = {}
        for d in self.dims:
            if isinstance(d, PerLayer):
                per_layer_by_depth.setdefault(d.depth, []).append(d)
        for d in self.dims:
            if isinstance(d, PerLayer):
                continue
            if isinstance(d, FloatRange):
                return None
            layers = per_layer_by_depth.get(d.name)
            if not layers:
                total *= d.cardinality()
                continue
            depths = d.values if isinstance(d, Choice) else d.values()
            per_layer = math.prod(len(p.values) for p in layers)
            total *= sum(per_layer ** int(n) for n in depths)
        return total

    def enumerate(self) -> Iterator[Arch]:
        """Every Arch of a finite space, in a fixed order (raises for float dimensions)."""
        if self.size() is None:
            raise ConfigError(f"space {self.name!r} has a float dimension: it cannot be "
                              "enumerated")
        scalars = [d for d in self.dims if not isinstance(d, PerLayer)]
        layered = [d for d in self.dims if isinstance(d, PerLayer)]

        def options(d):
            return list(d.values) if isinstance(d, Choice) else list(d.values())

        for picks in itertools.product(*(options(d) for d in scalars)):
            values = {d.name: v for d, v in zip(scalars, picks)}
            per = [itertools.product(d.values, repeat=self._depth_of(d, values))
                   for d in layered]
            for layers in itertools.product(*per):
                yield Arch({**values, **{d.name: tuple(v) for d, v in zip(layered, layers)}})

    # ---- identity and files ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "description": self.description,
            "model": dict(self.model),
            "dims": {d.name: d.spec() for d in self.dims},
        }

    @property
    def fingerprint(self) -> str:
        """Hash of family, model settings and dims: equal fingerprints mean the same supernet."""
        doc = {k: v for k, v in self.to_dict().items() if k not in ("name", "description")}
        blob = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], source: str = "<space>") -> SearchSpace:
        return _parse_space(doc, source)

    @classmethod
    def load(cls, path: str | Path) -> SearchSpace:
        """A space file, its family checked against the registered ones."""
        space = _parse_space(read_yaml(path, "search space file"), str(path))
        if space.family is not None:
            from raynas.supernets import family_names

            if space.family not in family_names():
                raise ConfigError(f"{path}: family = {space.family!r}: unknown supernet "
                                  f"family; choose one of {', '.join(family_names())}, or "
                                  "leave it out for a space that is only replayed")
        return space


class _Loader(yaml.SafeLoader):
    """YAML as users write numbers: ``1e-4`` is a float (YAML 1.1, PyYAML's reading, wants
    ``1.0e-4`` and would make it a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def yaml_value(text: str) -> Any:
    """``text`` parsed as YAML (job files, dotted overrides, option values)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader)


def read_yaml(path: str | Path, what: str) -> Any:
    """Parse a YAML file; ConfigError (not a traceback) if it is missing, unreadable, not
    UTF-8 text (a binary or compressed file) or malformed."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {str(path)!r} does not exist")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} {str(path)!r} cannot be read: {exc.strerror}") from None
    try:
        # YAML files are UTF-8 (a BOM is allowed); decode explicitly rather than in the
        # locale's encoding, so a binary file fails here and not as a traceback.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {str(path)!r} is not a YAML text file: byte "
                          f"0x{data[exc.start]:02x} at offset {exc.start} is not UTF-8 "
                          "(a binary or compressed file?)") from None
    try:
        return yaml_value(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None


def _parse_space(doc: Any, source: str) -> SearchSpace:
    def fail(where: str, value: Any, allowed: str) -> ConfigError:
        return ConfigError(f"{source}: {where} = {describe_value(value)}: {allowed}")

    if not isinstance(doc, Mapping):
        raise ConfigError(f"{source}: a search space file must be a mapping with 'dims'")
    allowed_top = {"name", "family", "description", "model", "dims"}
    for k in doc:
        if k not in allowed_top:
            raise fail(k, doc[k], f"unknown key; allowed: {', '.join(sorted(allowed_top))}")
    for k in ("name", "dims"):
        if k not in doc:
            raise ConfigError(f"{source}: missing required key {k!r}")
    if not isinstance(doc["name"], str) or not doc["name"]:
        raise fail("name", doc["name"], "must be a non-empty string")
    family = doc.get("family")
    if family is not None and (not isinstance(family, str) or not family):
        raise fail("family", family, "must be a registered family name (or left out for a "
                   "space that is only replayed)")
    model = doc.get("model") or {}
    if not isinstance(model, Mapping):
        raise fail("model", model, "must be a mapping of family settings")
    raw_dims = doc["dims"]
    if not isinstance(raw_dims, Mapping) or not raw_dims:
        raise fail("dims", raw_dims, "must be a non-empty mapping of name -> spec")

    dims: list[Dim] = []
    int_dims: dict[str, int] = {}  # name -> largest value, for per_layer depth references
    pending: list[tuple[str, Mapping[str, Any]]] = []
    for name, spec in raw_dims.items():
        where = f"dims.{name}"
        if not isinstance(spec, Mapping) or spec.get("type") not in _DIM_TYPES:
            got = spec.get("type") if isinstance(spec, Mapping) else spec
            raise fail(f"{where}.type", got, f"must be one of {', '.join(_DIM_TYPES)}")
        kind = spec["type"]
        keys = {"choice": {"values"}, "int": {"low", "high"}, "float": {"low", "high", "log"},
                "per_layer": {"depth", "values"}}[kind]
        for k in spec:
            if k != "type" and k not in keys:
                raise fail(f"{where}.{k}", spec[k], f"unknown key for a {kind} dimension; "
                           f"allowed: {', '.join(sorted(keys | {'type'}))}")
        if kind in ("choice", "per_layer"):
            values = spec.get("values")
            if (not isinstance(values, list) or not values
                    or not all(isinstance(v, (int, float, str)) and not isinstance(v, bool)
                               for v in values)):
                raise fail(f"{where}.values", values, "must be a non-empty list of numbers or "
                           "strings")
            if len(set(values)) != len(values):
                raise fail(f"{where}.values", values, "values must be distinct")
            if kind == "per_layer":
                pending.append((name, spec))
                continue
            dims.append(Choice(name, tuple(values)))
            if all(isinstance(v, int) for v in values):
                int_dims[name] = max(values)
        elif kind == "int":
            low, high = spec.get("low"), spec.get("high")
            for k, v in (("low", low), ("high", high)):
                if isinstance(v, bool) or not isinstance(v, int):
                    raise fail(f"{where}.{k}", v, "must be an integer")
            if low > high:
                raise fail(f"{where}.high", high, f"must be >= low ({low}); bounds are inclusive")
            dims.append(IntRange(name, low, high))
            int_dims[name] = high
        else:
            low, high, log = spec.get("low"), spec.get("high"), spec.get("log", False)
            for k, v in (("low", low), ("high", high)):
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise fail(f"{where}.{k}", v, "must be a number")
            if low > high:
                raise fail(f"{where}.high", high, f"must be >= low ({low}); bounds are inclusive")
            if not isinstance(log, bool):
                raise fail(f"{where}.log", log, "must be true or false")
            if log and low <= 0:
                raise fail(f"{where}.low", low, "must be > 0 for a log-scaled range")
            dims.append(FloatRange(name, float(low), float(high), log))
    for name, spec in pending:
        depth = spec.get("depth")
        if not isinstance(depth, str) or depth not in int_dims:
            raise fail(f"dims.{name}.depth", depth,
                       f"must name an integer dimension; have: {', '.join(int_dims) or 'none'}")
        dims.append(PerLayer(name, depth, tuple(spec["values"]), int_dims[depth]))
    # Keep the file's order so listings read as the author wrote them.
    order = list(raw_dims)
    dims.sort(key=lambda d: order.index(d.name))
    return SearchSpace(
        name=doc["name"],
        family=family,
        dims=tuple(dims),
        model=dict(model),
        description=str(doc.get("description", "")).strip(),
    )
