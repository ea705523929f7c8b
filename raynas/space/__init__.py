"""Search spaces and architectures. Pure Python: imports neither torch nor ray."""

from __future__ import annotations

from raynas.space.arch import Arch
from raynas.space.dims import Choice, Dim, FloatRange, IntRange, PerLayer
from raynas.space.registry import find_space, list_spaces, spaces_dir
from raynas.space.space import SearchSpace

__all__ = [
    "Arch",
    "Choice",
    "Dim",
    "FloatRange",
    "IntRange",
    "PerLayer",
    "SearchSpace",
    "find_space",
    "list_spaces",
    "spaces_dir",
]
