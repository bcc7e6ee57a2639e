"""torch (and numpy), imported when first used, for modules the CLI reads at start.

A method module declares its options and help (read by `rld --help`, the config schema,
grid expansion and the docs) next to its tensor code, and `pipeline.runtime` holds the
device and autocast choices the CLI offers. Importing torch takes about 2 s, so these
modules name it through stand-ins that import the real module on first use and from then
on answer attribute reads as the module would.
"""

from __future__ import annotations

import importlib
from typing import Any


class _OnFirstUse:
    def __init__(self, name: str) -> None:
        self.__dict__["_module_name"] = name

    def __getattr__(self, attr: str) -> Any:  # only called for names not yet copied in
        module = importlib.import_module(self._module_name)
        self.__dict__.update(vars(module))
        return getattr(module, attr)


torch: Any = _OnFirstUse("torch")
F: Any = _OnFirstUse("torch.nn.functional")
np: Any = _OnFirstUse("numpy")
ops: Any = _OnFirstUse("pipeline.methods.ops")
