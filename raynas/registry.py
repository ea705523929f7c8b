"""Components chosen by name: one small registry type for every kind of component.

A job names a component with a string (``sampler: sandwich``) or with ``{name, options}``
(``sampler: {name: sandwich, options: {num_subnets: 4}}``). A registry maps names to
factories; ``create`` passes the options as keyword arguments after checking them against the
factory's signature, so an unknown name or option is a ``ConfigError`` that lists what is
allowed, raised before any work starts.

Users add their own components through Python entry points (``[project.entry-points]`` in
their package's ``pyproject.toml``, group ``raynas.<kind>s``, e.g. ``raynas.families``):
each entry point names a module (or an object) that registers on import. Entry points are
loaded lazily on the first lookup in every process, so Ray Train workers and evaluator
actors fill their registries the same way the driver does.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar

from raynas.errors import ConfigError, describe_value

T = TypeVar("T")


class Registry(Generic[T]):
    """Named factories of one kind of component.

    ``kind`` names the component in messages ("sampler"); ``field`` is the job key that
    chooses it ("train.sampler"); ``builtin`` imports the modules that register the built-in
    ones (kept lazy so importing raynas stays light); ``group`` is the entry-point group.
    """

    def __init__(self, kind: str, field: str, builtin: Callable[[], None] | None = None,
                 group: str | None = None):
        self.kind, self.field, self.group = kind, field, group
        self._builtin = builtin
        self._items: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str, item: T | None = None):
        """``register(name, item)``, or ``@register(name)`` on a factory."""
        if item is not None:
            return self._add(name, item)

        def wrap(obj: T) -> T:
            return self._add(name, obj)

        return wrap

    def _add(self, name: str, item: T) -> T:
        if name in self._items and self._items[name] is not item:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = item
        return item

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True  # before loading: a plugin may look itself up while registering
        if self._builtin is not None:
            self._builtin()
        if self.group:
            load_entry_points(self.group)

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def get(self, name: str) -> T:
        self._load()
        if name not in self._items:
            raise ConfigError(f"{self.field} = {describe_value(name)}: unknown {self.kind}; "
                              f"choose one of {', '.join(self.names()) or 'none'}")
        return self._items[name]

    def create(self, name: str, options: Mapping[str, Any] | None = None, **context: Any):
        """Call the factory of ``name`` with ``context`` (what raynas supplies: the space,
        the seed...) and the user's ``options``; unknown options are a ``ConfigError``."""
        factory = self.get(name)
        options = dict(options or {})
        where = (self.field[:-len(".name")] if self.field.endswith(".name")
                 else self.field) + ".options"
        check_options(where, name, self.kind, factory, options, reserved=context)
        return factory(**context, **options)


def check_options(where: str, name: str, kind: str, factory: Callable[..., Any],
                  options: Mapping[str, Any], reserved: Iterable[str] = ()) -> None:
    """Raise ``ConfigError`` for the first option ``factory`` takes no keyword for (or that
    raynas itself supplies, listed in ``reserved``)."""
    allowed = option_names(factory, reserved)
    if allowed is None:  # the factory takes **kwargs: it checks its own options
        return
    for key, value in options.items():
        if key not in allowed:
            raise ConfigError(f"{where}.{key} = {describe_value(value)}: unknown option for "
                              f"{kind} {name!r}; allowed: {', '.join(sorted(allowed)) or 'none'}")


def option_names(factory: Callable[..., Any], reserved: Iterable[str] = ()) -> set[str] | None:
    """The keyword options ``factory`` accepts, less the ``reserved`` ones; None when it
    takes ``**kwargs``."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    params = inspect.signature(target).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    skip = set(reserved) | {"self"}
    return {p.name for p in params
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in skip}


def load_entry_points(group: str) -> None:
    """Import every entry point of ``group`` (each registers its components on import).
    A plugin that fails to import is a ``ConfigError`` naming it, not a silent gap."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=group):
        try:
            ep.load()
        except Exception as exc:
            raise ConfigError(f"entry point {ep.name!r} of group {group!r} ({ep.value}) "
                              f"failed to load: {type(exc).__name__}: {exc}") from None
