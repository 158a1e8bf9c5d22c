"""One registry type for everything recipes, checkpoints and the CLI name: models, losses, dataset kinds and
task families. Entries are registered with a decorator where they are defined; the registry imports its
home package the first time it is read, so a name is known however the program started."""

from __future__ import annotations

import importlib
import inspect
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, TypeVar

from cdtool.errors import InputError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered object (a builder function or a class), the first line of its docstring, and what
    the registry's kind records about it (a model's output, the outputs a loss reads, ...)."""

    name: str
    obj: T
    summary: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def builder(self) -> T:
        return self.obj

    def __getattr__(self, key: str) -> Any:
        try:
            return self.__dict__["info"][key]
        except KeyError:
            raise AttributeError(key) from None


class Registry(Generic[T]):
    """Names to objects of one kind. `home` is the package whose import registers the built-in entries, or
    "package:function", a function of it that does (where importing them all with the package would cost
    commands that need none of them)."""

    def __init__(self, kind: str, home: str, check: Callable[[dict], None] | None = None):
        self.kind, self._home, self._check = kind, home, check
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, **info: Any) -> Callable[[T], T]:
        """Decorator: register the decorated builder or class under `name` with `info`."""
        if self._check is not None:
            self._check(info)

        def deco(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            doc = inspect.getdoc(obj) if getattr(obj, "__doc__", None) else ""
            self._entries[name] = Entry(name, obj, (doc or "").splitlines()[0] if doc else "", dict(info))
            return obj

        return deco

    def _load(self) -> None:
        module, _, hook = self._home.partition(":")
        home = importlib.import_module(module)
        if hook:
            getattr(home, hook)()

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def entry(self, name: str) -> Entry[T]:
        self._load()
        if name not in self._entries:
            raise InputError(f"unknown {self.kind} {name!r}; registered: {', '.join(sorted(self._entries))}")
        return self._entries[name]

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def create(self, name: str, **kwargs: Any) -> Any:
        """Call the registered builder; arguments left as None are dropped so its defaults win."""
        return self.entry(name).obj(**{k: v for k, v in kwargs.items() if v is not None})

    def entries(self) -> list[Entry[T]]:
        return [self._entries[n] for n in self.names()]

    @contextmanager
    def temporary(self, name: str, obj: T, **info: Any) -> Iterator[T]:
        """Register `obj` for the duration of a block (stand-in models and tasks in tests)."""
        self._load()
        self.register(name, **info)(obj)
        try:
            yield obj
        finally:
            self._entries.pop(name, None)
