"""The method registry: every distillation method this project trains students with.

One module per method declares its name, options (defaults, valid values, help), the terms
it logs and its objective (:class:`~pipeline.methods.base.Method`). Everything that lists
methods or their options reads them here: `rld student train`'s loss flags and help, the
config schema's `loss` and `loss_options` (generated, see `tools/generate.py`), grid
expansion, the report and docs/methods.md. Adding a method is one module here that
defines `METHOD`, plus its tests: the registry finds it by itself.

Importing the registry does not import torch (the CLI's help and the workflow read it);
a method's tensor code imports torch when a loss is first computed.
"""

from __future__ import annotations

import importlib
import pkgutil

from pipeline.methods.base import Method, Option

__all__ = ["METHODS", "Method", "Option", "REGISTRY", "get_method", "option_meanings", "option_names"]

_NOT_METHODS = {"base", "ops"}  # and every module whose name starts with "_"


def _discover() -> dict[str, Method]:
    """Every method module's METHOD, by name, in alphabetical order of the modules."""
    found: dict[str, Method] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name in _NOT_METHODS:
            continue
        method = importlib.import_module(f"{__name__}.{info.name}").METHOD
        if method.name != info.name:
            raise ImportError(f"pipeline/methods/{info.name}.py declares method {method.name!r}; name it after its module")
        found[method.name] = method
    return found


REGISTRY: dict[str, Method] = _discover()
METHODS: tuple[str, ...] = tuple(REGISTRY)


def get_method(name: str) -> Method:
    """The registered method `name`; ValueError listing the valid ones otherwise."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}") from None


def option_names() -> tuple[str, ...]:
    """Every option of any method, each once, in registry order."""
    return tuple(dict.fromkeys(option.name for method in REGISTRY.values() for option in method.options))


def option_meanings(name: str) -> str:
    """What option `name` means for each method that has it, with each one's default:
    "weight of NCKD [dkd 8]; weight of MCD [rld 8]" (for help texts and the schema)."""
    meanings: dict[str, list[str]] = {}
    for method in REGISTRY.values():
        if name in method.defaults:
            option = method.option(name)
            meanings.setdefault(option.help, []).append(f"{method.name} {option.describe_default()}")
    return "; ".join(f"{meaning} [{', '.join(defaults)}]" for meaning, defaults in meanings.items())
