"""The layer-type registry: ``@register_layer`` at each definition; plugins via entry points."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import TypeVar

from dnntool.errors import NetError, SourceLoc
from dnntool.layers.base import LayerDef

PLUGIN_GROUP = "dnntool.layers"

_REGISTRY: dict[str, type[LayerDef]] = {}
_plugins_loaded = False
_builtins_loaded = False

L = TypeVar("L", bound=type[LayerDef])


def register_layer(*names: str) -> Callable[[L], L]:
    """Register a LayerDef class under one or more Caffe type strings (the first is canonical)."""

    def deco(cls: L) -> L:
        for n in names:
            if n in _REGISTRY and _REGISTRY[n] is not cls:
                raise ValueError(f"layer type '{n}' is already registered by {_REGISTRY[n].__qualname__}")
            _REGISTRY[n] = cls
        if not cls.__dict__.get("type"):
            cls.type = names[0]
        return cls

    return deco


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        importlib.import_module("dnntool.layers.all")


def load_plugins(force: bool = False) -> list[str]:
    """Import every ``dnntool.layers`` entry point (a module that registers layers, or a LayerDef).

    Returns the names of the entry points loaded. Called lazily, the first time a type is unknown;
    ``force`` looks again (after installing a plugin in a running process).
    """
    global _plugins_loaded
    if _plugins_loaded and not force:
        return []
    _plugins_loaded = True
    from importlib.metadata import entry_points

    loaded = []
    for ep in entry_points(group=PLUGIN_GROUP):
        try:
            obj = ep.load()
        except Exception as e:  # a broken plugin must not break every command
            raise NetError(f"layer plugin '{ep.name}' ({ep.value}) failed to load: {type(e).__name__}: {e}") from e
        if isinstance(obj, type) and issubclass(obj, LayerDef) and ep.name not in _REGISTRY:
            register_layer(ep.name)(obj)
        loaded.append(ep.name)
    return loaded


def unregister(name: str) -> None:
    """Remove a type (for tests and for plugins replacing themselves)."""
    _REGISTRY.pop(name, None)


def known_types() -> list[str]:
    """Every registered type string, sorted."""
    _load_builtins()
    return sorted(_REGISTRY)


def registered() -> dict[str, type[LayerDef]]:
    """A copy of the registry (type string -> class)."""
    _load_builtins()
    return dict(_REGISTRY)


def get_layer_class(type_name: str, layer_name: str = "?", loc: SourceLoc | None = None) -> type[LayerDef]:
    """The class for a Caffe type string; an unknown type names the layer and the closest types."""
    _load_builtins()
    cls = _REGISTRY.get(type_name)
    if cls is None:
        load_plugins()
        cls = _REGISTRY.get(type_name)
    if cls is None:
        by_lower = {k.lower(): k for k in _REGISTRY}
        close = difflib.get_close_matches(type_name, list(_REGISTRY), n=3, cutoff=0.6)
        if type_name.lower() in by_lower and by_lower[type_name.lower()] not in close:
            close.insert(0, by_lower[type_name.lower()])
        hint = f"; closest known types: {', '.join(close)}" if close else ""
        if not type_name:
            raise NetError(f"layer '{layer_name}' has no type", loc, layer=layer_name)
        raise NetError(
            f"layer '{layer_name}': unknown layer type '{type_name}'{hint}"
            f" (custom layers can be added as plugins: entry-point group '{PLUGIN_GROUP}')",
            loc,
            layer=layer_name,
        )
    return cls
