"""Searchers by registered name (``search.searcher`` in a job file).

Importing this module is cheap: factories import their optimisation library when called.
Users add their own through the entry-point group ``raynas.searchers`` (see
``raynas.registry``); a factory is ``factory(space, objectives, constraints, seed,
**options) -> AskTellSearcher`` and checks its own options (``searchers.check_options``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from raynas.registry import Registry


def _load_builtin() -> None:
    # Each module registers its searchers on import; none imports its optimisation library
    # (optuna, nevergrad) before a factory is called.
    from raynas.search import evolution, ng, searchers, surrogate  # noqa: F401


SEARCHERS: Registry[Callable[..., Any]] = Registry(
    "searcher", "search.searcher", builtin=_load_builtin, group="raynas.searchers")


def register_searcher(name: str):
    """Decorator: register a searcher factory under ``name``."""
    return SEARCHERS.register(name)


def searcher_names() -> list[str]:
    return SEARCHERS.names()


def create_searcher(name: str, **kwargs):
    """The searcher ``name`` built with ``kwargs`` (space, objectives, constraints, seed and
    the user's ``search.options``); an unknown name is a ``ConfigError`` listing the others."""
    return SEARCHERS.get(name)(**kwargs)
