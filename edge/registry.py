"""Name -> object registries: the one mechanism behind targets, runtimes, zoo models, optimize passes and CLI
commands.

Built-in entries are import paths, loaded on first use, so listing names never imports a backend; or, for
entries a decorator registers (zoo models, passes), the modules that define them, imported on first lookup.
Third parties add entries through the entry-point groups (``edge.targets``, ``edge.runtimes``, ``edge.models``,
``edge.passes``: an entry point names the object, or a module whose import registers it), or at run time with
:meth:`Registry.register`.
"""
from __future__ import annotations

import contextlib
import importlib
from importlib.metadata import entry_points
from typing import Any, Callable, Generic, Iterator, TypeVar

from edge.errors import PluginError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects; lookups of unknown names list the valid ones and the closest match.

    Example:
        >>> TARGETS.names()
        ['coreml', 'cuda', 'executorch', 'onnx', 'openvino']
    """

    def __init__(self, kind: str, group: str | None = None, builtins: dict[str, str] | None = None,
                 modules: tuple[str, ...] = ()):
        self.kind, self.group = kind, group
        self._lazy: dict[str, str] = dict(builtins or {})
        self._loaded: dict[str, T] = {}
        self._scanned = group is None
        self._modules = modules   # modules whose import registers entries (decorators); imported on first use

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; usable as a decorator."""
        def add(o: T) -> T:
            self._loaded[name] = o
            self._lazy.pop(name, None)
            return o
        return add(obj) if obj is not None else add

    @contextlib.contextmanager
    def scoped(self, name: str, obj: T) -> Iterator[T]:
        """Register ``obj`` under ``name`` for the block only (tests, one-off plugins); the previous entry returns."""
        lazy, loaded = self._lazy.get(name), self._loaded.get(name)
        self.register(name, obj)
        try:
            yield obj
        finally:
            self._loaded.pop(name, None)
            if loaded is not None:
                self._loaded[name] = loaded
            if lazy is not None:
                self._lazy[name] = lazy

    def _scan_entry_points(self) -> None:
        if self._modules:
            modules, self._modules = self._modules, ()
            for mod in modules:
                try:
                    importlib.import_module(mod)
                except ModuleNotFoundError as e:
                    if e.name != mod:   # a real missing dependency inside the module
                        raise
        if self._scanned:
            return
        self._scanned = True
        for ep in entry_points(group=self.group):
            if ep.name in self._loaded:
                continue
            if ":" in ep.value:
                self._lazy.setdefault(ep.name, ep.value)
            else:   # a module whose import registers the entry (a decorator)
                try:
                    importlib.import_module(ep.value)
                except ImportError as e:
                    raise PluginError(f"{self.kind} plugin {ep.name!r} ({ep.value}) could not be imported: "
                                      f"{type(e).__name__}: {e}") from e

    def items(self) -> list[tuple[str, T]]:
        """Every entry, loaded, by name."""
        return [(name, self.get(name)) for name in self.names()]

    def names(self) -> list[str]:
        self._scan_entry_points()
        return sorted(set(self._lazy) | set(self._loaded))

    def __contains__(self, name: str) -> bool:
        return name in self.names()

    def get(self, name: str) -> T:
        self._scan_entry_points()
        if name in self._loaded:
            return self._loaded[name]
        if name not in self._lazy:
            raise UnknownNameError(self.kind, name, self.names())
        module, _, attr = self._lazy[name].partition(":")
        try:
            obj: Any = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as e:
            raise PluginError(f"{self.kind} {name!r} is registered as {self._lazy[name]} but could not be "
                              f"loaded: {type(e).__name__}: {e}") from e
        self._loaded[name] = obj
        return obj
