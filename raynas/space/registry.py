"""Finding space files: by path, or by name in a ``search_spaces/`` folder."""

from __future__ import annotations

import os
from pathlib import Path

from raynas.errors import ConfigError
from raynas.space.space import SearchSpace


def spaces_dir() -> Path:
    """Where named spaces live: ``$RAYNAS_SPACES_DIR``, else ``./search_spaces``, else the
    ``search_spaces/`` folder of the raynas source tree."""
    env = os.environ.get("RAYNAS_SPACES_DIR")
    if env:
        return Path(env)
    local = Path.cwd() / "search_spaces"
    if local.is_dir():
        return local
    return Path(__file__).resolve().parents[2] / "search_spaces"


def list_spaces() -> list[Path]:
    """Space files under ``spaces_dir()``, recursively, sorted by name."""
    root = spaces_dir()
    return sorted(root.rglob("*.yaml")) if root.is_dir() else []


def find_space(name_or_path: str | Path, base: Path | None = None) -> Path:
    """Resolve a space given as a file path (absolute, relative to cwd or to ``base``) or as
    a name (file stem under ``spaces_dir()``)."""
    raw = Path(name_or_path)
    candidates = [raw]
    if base is not None and not raw.is_absolute():
        candidates.append(base / raw)
    for c in candidates:
        if c.is_file():
            return c
    for path in list_spaces():
        if path.stem == str(name_or_path):
            return path
    names = ", ".join(p.stem for p in list_spaces()) or "none found"
    raise ConfigError(
        f"space = {str(name_or_path)!r}: no such file or space name; "
        f"known spaces in {spaces_dir()}: {names}"
    )


def load_space(name_or_path: str | Path, base: Path | None = None) -> SearchSpace:
    return SearchSpace.load(find_space(name_or_path, base))
