"""Optimize passes: module rewrites before export that keep the numbers (parity 1e-5 in fp32).

Each pass is a small function registered by name; ``edge.optimize`` applies them in order to
a copy of the model (the user's module is never changed). A pass may offer forms (``declare_form``:
the attention's layout, the RNN's loop, the scan's chunk ...); each converter declares the forms it
wants as data (``Converter.forms``) and passes read ``ctx.forms``, never a target's name. Targets
whose forms agree share one captured program.

Example:
    >>> fast = edge.optimize(model, target="executorch", disable=("attention",))
    >>> fast.edge_passes   # [{"pass": "gru", "rewrites": 1, "variant": "default"}, ...]
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import torch

from edge.errors import PluginError
from edge.registry import Registry


@dataclass(frozen=True)
class Form:
    """A choice a pass offers: ``default`` unless the converter's ``forms`` names another of ``choices``
    (empty ``choices``: any value of the default's type, e.g. a chunk length)."""

    name: str
    default: Any
    choices: tuple = ()
    help: str = ""


_FORMS: dict[str, Form] = {}


def declare_form(name: str, default: Any, choices: Iterable[Any] = (), help: str = "") -> Form:
    """Declare a form a pass reads from ``ctx.forms[name]`` (called at import of the pass's module)."""
    form = Form(name, default, tuple(choices), help)
    _FORMS[name] = form
    return form


def list_forms() -> list[Form]:
    _import_all()
    return [_FORMS[k] for k in sorted(_FORMS)]


def resolve_forms(declared: Mapping[str, Any] | None, owner: str = "a converter") -> dict[str, Any]:
    """Every declared form's value: ``declared`` where it names one, else the form's default.

    A key no pass declares, or a value outside a form's choices, is a PluginError naming the valid ones
    (a converter's declaration is code, not user input).
    """
    _import_all()
    declared = dict(declared or {})
    for key, value in declared.items():
        form = _FORMS.get(key)
        if form is None:
            raise PluginError(f"{owner} declares pass form {key!r}, which no optimize pass offers; forms: "
                              f"{', '.join(sorted(_FORMS))}")
        if form.choices and value not in form.choices:
            raise PluginError(f"{owner} declares pass form {key}={value!r}; choices: "
                              f"{', '.join(map(str, form.choices))}")
        if not form.choices and not isinstance(value, type(form.default)):
            raise PluginError(f"{owner} declares pass form {key}={value!r}; it takes a "
                              f"{type(form.default).__name__} (default {form.default!r})")
    return {k: declared.get(k, f.default) for k, f in _FORMS.items()}


def forms_for(target: str | None) -> dict[str, Any]:
    """The forms ``target``'s converter declares (every default when ``target`` is None)."""
    if target is None:
        return resolve_forms({})
    from edge.converters import TARGETS
    conv = TARGETS.get(target)
    return resolve_forms(getattr(conv, "forms", {}), owner=f"target {target!r}")


@dataclass
class OptimizeContext:
    example_inputs: tuple | None
    options: dict[str, Any]
    forms: dict[str, Any] = field(default_factory=lambda: resolve_forms({}))


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
    variant: Callable[[dict[str, Any]], str] = lambda forms: "default"   # the form it takes, from the forms


# Passes (and the forms they offer) are registered when their modules are imported, on first use; plugins add
# passes through the ``edge.passes`` entry-point group (a module whose import registers them).
PASSES: Registry[Pass] = Registry("optimize pass", "edge.passes",
                                  modules=("edge.passes.recurrent", "edge.passes.attention",
                                           "edge.passes.scan_lean"))


def register_pass(name: str, description: str, *, order: int = 100, default: bool = True,
                  option: str | None = None, variant: Callable[[dict[str, Any]], str] | None = None):
    """Decorator registering a pass function under ``name``; ``variant(forms)`` names the form it takes."""
    def deco(fn):
        PASSES.register(name, Pass(name, fn, description, order, default, option,
                                   variant or (lambda forms: "default")))
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
    PASSES.names()   # imports the modules that register passes and declare forms


def list_passes() -> list[Pass]:
    return sorted((p for _, p in PASSES.items()), key=lambda p: (p.order, p.name))


def _selected(disable: Iterable[str], options: dict[str, Any]) -> list[Pass]:
    _import_all()
    disable = set(disable)
    for name in disable:
        PASSES.get(name)   # an unknown name lists the valid ones
    return [p for p in list_passes() if p.name not in disable and (p.default or (p.option and options.get(p.option) is not None))]


def profile_key(forms: Mapping[str, Any] | None, *, disable: Iterable[str] = (),
                options: dict[str, Any] | None = None) -> tuple:
    """The form each selected pass takes under ``forms`` (``forms_for(target)``): equal keys share one
    captured program."""
    forms = resolve_forms(forms)
    return tuple((p.name, p.variant(forms)) for p in _selected(disable, options or {}))


def optimize(model: torch.nn.Module, *, target: str | None = None, forms: Mapping[str, Any] | None = None,
             example_inputs: tuple | None = None, disable: Iterable[str] = (), **options: Any) -> torch.nn.Module:
    """Return an optimized copy of ``model``; ``model`` itself is not changed.

    Args:
        target: the target the copy is for: its converter's declared ``forms`` (ignored when ``forms`` is given).
        forms: pass forms (``edge.passes.list_forms()``); missing ones take their defaults.
        disable: names of passes to skip (``edge optimize --list`` shows them).
        **options: pass options, e.g. ``keep_tokens=0.5`` enables token dropping.
    """
    forms = resolve_forms(forms) if forms is not None else forms_for(target)
    out = copy.deepcopy(model).eval()
    ctx = OptimizeContext(example_inputs, options, forms)
    record = []
    for p in _selected(disable, options):
        n = p.fn(out, ctx)
        n, info = n if isinstance(n, tuple) else (n, {})   # a pass may add facts to its record (e.g. keep ratio)
        record.append({"pass": p.name, "rewrites": int(n), "variant": p.variant(forms), **info})
    out.edge_passes = record
    return out
