"""One registry helper for every pluggable kind: backends, model families, exporters, quantize methods.

Entries are ``"package.module:Attribute"`` strings imported only when first asked for (so registering a backend
never imports its runtime), or the object itself. Names are case-insensitive; aliases map other spellings to one
canonical name, and an unknown name is an error listing the valid ones.

Example:
    >>> reg = Registry("colour", error=ValueError)
    >>> reg.register("red", "builtins:str", aliases=("r",))
    >>> reg.canonical("R"), reg.get("red") is str, reg.names()
    ('red', True, ['red'])
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Generic, Iterable, TypeVar

from unideploy.core.errors import InputError

T = TypeVar("T")

__all__ = ["Registry", "load_target"]


def load_target(target: str) -> Any:
    """Import ``"package.module:Attribute"`` and return the attribute."""
    module, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split(".") if attr else ():
        obj = getattr(obj, part)
    return obj


class Registry(Generic[T]):
    """Name -> entry (a lazy ``"module:Attr"`` target or the object), with aliases.

    Args:
        kind: what the entries are, for messages ("backend", "model family", ...).
        error: the exception raised for an unknown name (an :class:`~unideploy.core.errors.UnideployError`).
        hint: appended to the unknown-name message (e.g. "pass --family").
        choices: how the message introduces the valid names (default "valid <kind>s").
    """

    def __init__(self, kind: str, *, error: type[Exception] = InputError, hint: str = "",
                 choices: str | None = None) -> None:
        self.kind = kind
        self.choices = choices or f"valid {kind}s"
        self.error = error
        self.hint = hint
        self._targets: dict[str, str | T] = {}
        self._loaded: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, target: str | T, *, aliases: Iterable[str] = ()) -> None:
        """Add (or replace) ``name``; ``target`` is ``"module:Attr"`` or the object itself."""
        key = name.lower()
        self._targets[key] = target
        self._loaded.pop(key, None)
        for a in aliases:
            self._aliases[a.lower()] = key

    def unregister(self, name: str) -> None:
        """Remove ``name`` and its aliases (tests that register a toy entry clean up with this)."""
        key = self.canonical(name)
        self._targets.pop(key, None)
        self._loaded.pop(key, None)
        self._aliases = {a: k for a, k in self._aliases.items() if k != key}

    def canonical(self, name: str) -> str:
        """The canonical name for ``name`` or one of its aliases.

        Raises:
            error: no entry has that name; the message lists the valid names.
        """
        key = str(name).strip().lower()
        key = self._aliases.get(key, key)
        if key not in self._targets:
            hint = f"; {self.hint}" if self.hint else ""
            raise self.error(f"unknown {self.kind} {name!r}; {self.choices}: {', '.join(self.names())}{hint}")
        return key

    def get(self, name: str) -> T:
        """The entry registered under ``name`` (or an alias), imported on first use."""
        key = self.canonical(name)
        if key not in self._loaded:
            target = self._targets[key]
            self._loaded[key] = load_target(target) if isinstance(target, str) else target
        return self._loaded[key]

    def names(self, where: Callable[[T], bool] | None = None) -> list[str]:
        """Sorted canonical names; with ``where``, those whose entry satisfies it."""
        names = sorted(self._targets)
        return [n for n in names if where(self.get(n))] if where else names

    def aliases(self) -> dict[str, str]:
        """alias -> canonical name."""
        return dict(self._aliases)

    def __contains__(self, name: object) -> bool:
        key = str(name).strip().lower()
        return self._aliases.get(key, key) in self._targets

    def __iter__(self):
        return iter(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
