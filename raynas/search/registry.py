"""Searchers by registered name (``search.searcher`` in a job file).

Importing this module is cheap: factories import their optimisation library when called.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_SEARCHERS: dict[str, Callable[..., Any]] = {}


def register_searcher(name: str):
    """Decorator: register ``factory(space, objectives, seed, **options) -> AskTellSearcher``."""

    def wrap(factory):
        if name in _SEARCHERS:
            raise ValueError(f"searcher {name!r} is already registered")
        _SEARCHERS[name] = factory
        return factory

    return wrap


def searcher_names() -> list[str]:
    _load_builtin()
    return sorted(_SEARCHERS)


def create_searcher(name: str, **kwargs):
    _load_builtin()
    if name not in _SEARCHERS:
        from raynas.errors import ConfigError

        raise ConfigError(f"search.searcher = {name!r}: unknown; choose one of "
                          f"{', '.join(sorted(_SEARCHERS))}")
    return _SEARCHERS[name](**kwargs)


def _load_builtin() -> None:
    # Each module registers its searchers on import; none imports its optimisation library
    # (optuna, nevergrad) before a factory is called.
    from raynas.search import evolution, ng, searchers  # noqa: F401
