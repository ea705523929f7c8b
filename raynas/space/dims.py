"""Search-space dimensions: what one architecture (or hyperparameter) choice may take.

All bounds are inclusive: ``IntRange(low=1, high=3)`` allows 1, 2 and 3 (unlike Ray's
``tune.randint``, whose upper bound is exclusive). Categorical values are listed from the
smallest model to the largest, so ``largest()`` takes the last value and ``smallest()`` the
first.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from raynas.errors import ArchError, describe_value

Scalar = int | float | str


def _fmt(values: Sequence[Any]) -> str:
    return "[" + ", ".join(repr(v) for v in values) + "]"


def _same_value(a: Any, b: Any) -> bool:
    # 3 == 3.0 is fine, but True must not pass for 1 nor "3" for 3.
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return a == b


def _range_error(dim, value: Any, problem: str, kind: str) -> ArchError:
    return ArchError(f"arch dimension {dim.name!r} = {describe_value(value)} {problem}; "
                     f"allowed: {kind} in [{dim.low}, {dim.high}] (inclusive)")


@dataclass(frozen=True)
class Choice:
    """One value out of a list: numbers or strings (``type: choice``)."""

    name: str
    values: tuple[Scalar, ...]

    def sample(self, rng: random.Random) -> Scalar:
        return rng.choice(self.values)

    def largest(self) -> Scalar:
        return self.values[-1]

    def smallest(self) -> Scalar:
        return self.values[0]

    def validate(self, value: Any) -> Scalar:
        for v in self.values:
            if _same_value(v, value):
                return v
        raise ArchError(
            f"arch dimension {self.name!r} = {describe_value(value)} is not allowed; "
            f"choose one of {_fmt(self.values)}"
        )

    def cardinality(self) -> int:
        return len(self.values)

    def encoding_size(self) -> int:
        return len(self.values)

    def encode(self, value: Scalar) -> list[float]:
        # One-hot: categorical values carry no order a predictor could rely on.
        return [1.0 if _same_value(v, value) else 0.0 for v in self.values]

    def spec(self) -> dict[str, Any]:
        return {"type": "choice", "values": list(self.values)}


@dataclass(frozen=True)
class IntRange:
    """An integer in ``[low, high]``, both ends included (``type: int``)."""

    name: str
    low: int
    high: int

    def sample(self, rng: random.Random) -> int:
        return rng.randint(self.low, self.high)  # randint is inclusive of both ends

    def largest(self) -> int:
        return self.high

    def smallest(self) -> int:
        return self.low

    def values(self) -> range:
        return range(self.low, self.high + 1)

    def validate(self, value: Any) -> int:
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not math.isfinite(value) or value != int(value)):
            raise _range_error(self, value, "is not an integer", "integers")
        if not self.low <= value <= self.high:
            raise _range_error(self, value, "is out of range", "integers")
        return int(value)

    def cardinality(self) -> int:
        return self.high - self.low + 1

    def encoding_size(self) -> int:
        return 1

    def encode(self, value: int) -> list[float]:
        span = self.high - self.low
        return [0.0 if span == 0 else (value - self.low) / span]

    def spec(self) -> dict[str, Any]:
        return {"type": "int", "low": self.low, "high": self.high}


@dataclass(frozen=True)
class FloatRange:
    """A float in ``[low, high]`` (``type: float``), sampled uniformly or log-uniformly.

    Used for hyperparameters searched jointly with the architecture (learning rate, dropout).
    """

    name: str
    low: float
    high: float
    log: bool = False

    def sample(self, rng: random.Random) -> float:
        if self.log:
            return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        return rng.uniform(self.low, self.high)

    def largest(self) -> float:
        return self.high

    def smallest(self) -> float:
        return self.low

    def validate(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise _range_error(self, value, "is not a number", "floats")
        if not self.low <= value <= self.high:
            raise _range_error(self, value, "is out of range", "floats")
        return float(value)

    def cardinality(self) -> None:
        return None

    def encoding_size(self) -> int:
        return 1

    def encode(self, value: float) -> list[float]:
        if self.log:
            lo, hi, v = math.log(self.low), math.log(self.high), math.log(value)
        else:
            lo, hi, v = self.low, self.high, value
        return [0.0 if hi == lo else (v - lo) / (hi - lo)]

    def spec(self) -> dict[str, Any]:
        return {"type": "float", "low": self.low, "high": self.high, "log": self.log}


@dataclass(frozen=True)
class PerLayer:
    """One categorical value per layer; the list's length is the value of ``depth``.

    ``depth`` names an integer dimension (an ``IntRange`` or a ``Choice`` of integers) of the
    same space. ``max_len`` is that dimension's largest value.
    """

    name: str
    depth: str
    values: tuple[Scalar, ...]
    max_len: int

    def sample(self, rng: random.Random, length: int) -> tuple[Scalar, ...]:
        return tuple(rng.choice(self.values) for _ in range(length))

    def largest(self, length: int) -> tuple[Scalar, ...]:
        return (self.values[-1],) * length

    def smallest(self, length: int) -> tuple[Scalar, ...]:
        return (self.values[0],) * length

    def validate(self, value: Any, length: int) -> tuple[Scalar, ...]:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise ArchError(
                f"arch dimension {self.name!r} = {describe_value(value)} is not a list; "
                f"allowed: a list of {length} values from {_fmt(self.values)} "
                f"({self.depth} = {length})"
            )
        if len(value) != length:
            raise ArchError(
                f"arch dimension {self.name!r} has {len(value)} entries but "
                f"{self.depth} = {length} requires {length}"
            )
        out = []
        for i, v in enumerate(value):
            for allowed in self.values:
                if _same_value(allowed, v):
                    out.append(allowed)
                    break
            else:
                raise ArchError(
                    f"arch dimension {self.name}[{i}] = {describe_value(v)} is not allowed; "
                    f"choose one of {_fmt(self.values)}"
                )
        return tuple(out)

    def encoding_size(self) -> int:
        return self.max_len * len(self.values)

    def encode(self, value: Sequence[Scalar]) -> list[float]:
        # One one-hot block per layer slot; slots beyond the active depth stay all-zero.
        out: list[float] = []
        for i in range(self.max_len):
            if i < len(value):
                out.extend(1.0 if _same_value(v, value[i]) else 0.0 for v in self.values)
            else:
                out.extend(0.0 for _ in self.values)
        return out

    def spec(self) -> dict[str, Any]:
        return {"type": "per_layer", "depth": self.depth, "values": list(self.values)}


Dim = Choice | IntRange | FloatRange | PerLayer
