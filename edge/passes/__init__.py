"""Optimize passes: module rewrites before export that keep the numbers (parity 1e-5 in fp32).

Each pass is a small function registered by name; ``edge.optimize`` applies them in order to
a copy of the model (the user's module is never changed). A pass may pick a per-target form
(``variant``); targets whose forms agree share one captured program.

Example:
    >>> fast = edge.optimize(model, target="executorch", disable=("attention",))
    >>> fast.edge_passes   # [{"pass": "gru", "rewrites": 1, "variant": "default"}, ...]
"""
from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch

from edge.errors import UnknownNameError


@dataclass
class OptimizeContext:
    target: str | None
    example_inputs: tuple | None
    options: dict[str, Any]


@dataclass
class Pass:
    """A rewrite: ``fn(module, ctx) -> number of rewrites`` (in place, on edge's private copy), or
    ``(rewrites, info)`` where ``info`` is merged into the pass record (``"lossy": True`` for approximations)."""

    name: str
    fn: Callable[[torch.nn.Module, OptimizeContext], int]
    description: str
    order: int = 100
    default: bool = True                     # off-by-default passes run when their option is given
    option: str | None = None                # e.g. "keep_tokens" switches on token dropping
    variant: Callable[[str | None], str] = lambda target: "default"


_PASSES: dict[str, Pass] = {}
# Modules that define passes; imported on first use.
_MODULES = ("edge.passes.recurrent", "edge.passes.attention")
_imported = False


def register_pass(name: str, description: str, *, order: int = 100, default: bool = True,
                  option: str | None = None, variant: Callable[[str | None], str] | None = None):
    """Decorator registering a pass function under ``name``."""
    def deco(fn):
        _PASSES[name] = Pass(name, fn, description, order, default, option, variant or (lambda target: "default"))
        return fn
    return deco


def refit_linear(like: torch.nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.nn.Linear:
    """A new Linear on ``like``'s device and dtype holding ``weight`` / ``bias`` (e.g. computed in fp64);
    its sizes come from ``weight``."""
    new = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                          device=like.weight.device, dtype=like.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def _import_all() -> None:
    global _imported
    if not _imported:
        _imported = True
        for mod in _MODULES:
            try:
                importlib.import_module(mod)
            except ModuleNotFoundError as e:
                if e.name != mod:
                    raise


def list_passes() -> list[Pass]:
    _import_all()
    return sorted(_PASSES.values(), key=lambda p: (p.order, p.name))


def _selected(disable: Iterable[str], options: dict[str, Any]) -> list[Pass]:
    _import_all()
    disable = set(disable)
    for name in disable:
        if name not in _PASSES:
            raise UnknownNameError("optimize pass", name, _PASSES)
    return [p for p in list_passes() if p.name not in disable and (p.default or (p.option and options.get(p.option) is not None))]


def profile_key(target: str | None, *, disable: Iterable[str] = (), options: dict[str, Any] | None = None) -> tuple:
    """Which forms the passes pick for ``target``: targets with equal keys share one captured program."""
    return tuple((p.name, p.variant(target)) for p in _selected(disable, options or {}))


def optimize(model: torch.nn.Module, *, target: str | None = None, example_inputs: tuple | None = None,
             disable: Iterable[str] = (), **options: Any) -> torch.nn.Module:
    """Return an optimized copy of ``model``; ``model`` itself is not changed.

    Args:
        target: the target the copy is for (some passes pick a per-target form).
        disable: names of passes to skip (``edge optimize --list`` shows them).
        **options: pass options, e.g. ``keep_tokens=0.5`` enables token dropping.
    """
    out = copy.deepcopy(model).eval()
    ctx = OptimizeContext(target, example_inputs, options)
    record = []
    for p in _selected(disable, options):
        n = p.fn(out, ctx)
        n, info = n if isinstance(n, tuple) else (n, {})   # a pass may add facts to its record (e.g. keep ratio)
        record.append({"pass": p.name, "rewrites": int(n), "variant": p.variant(target), **info})
    out.edge_passes = record
    return out
