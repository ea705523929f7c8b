"""``Arch``: one point of a search space, immutable and hashable."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from typing import Any


class Arch(Mapping[str, Any]):
    """An architecture: a frozen mapping from dimension name to value.

    Per-layer values are tuples. Two Archs with the same values are equal, hash alike and share
    one ``key``, whatever the order their dict was written in. Build one through
    ``SearchSpace.validate`` (checked) or ``Arch(dict)`` (unchecked, for trusted sources).
    """

    __slots__ = ("_items", "_json", "_key")

    def __init__(self, values: Mapping[str, Any]):
        items = tuple(
            sorted((k, tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in values.items())
        )
        object.__setattr__(self, "_items", items)
        # Identity is the canonical JSON, so equal Archs always share one key (3 != 3.0 here,
        # as in the key; SearchSpace.validate normalises values to the space's own).
        text = json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in items},
                          sort_keys=True, separators=(",", ":"))
        object.__setattr__(self, "_json", text)
        object.__setattr__(self, "_key", None)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Arch is immutable")

    def __getitem__(self, name: str) -> Any:
        for k, v in self._items:
            if k == name:
                return v
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._json)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Arch):
            return self._json == other._json
        return NotImplemented

    def __repr__(self) -> str:
        return f"Arch({self.to_json()})"

    def __reduce__(self):  # pickles as a plain dict: cheap to ship to Ray actors
        return (Arch, (self.to_dict(),))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (per-layer values as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self._items}

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no spaces. Equal Archs give equal strings."""
        return self._json

    @classmethod
    def from_json(cls, text: str) -> Arch:
        return cls(json.loads(text))

    @property
    def key(self) -> str:
        """Stable 16-hex-digit id: the same in every process, Python version and run."""
        if self._key is None:
            digest = hashlib.sha1(self._json.encode()).hexdigest()[:16]
            object.__setattr__(self, "_key", digest)
        return self._key
