"""How a swap-in takes over a module: the same children, parameters, buffers and settings under another class.

Every CPU swap-in (ldm/cpu/swap_in.py) is a subclass of the module it replaces, adding behaviour but no state, so
`moved(plain, Faster)` and back `moved(faster, Plain)` need no constructor: none runs (building the module again,
even on the meta device, initialises every weight it would hold), and no tensor is copied.
"""

from __future__ import annotations

import copy
from typing import TypeVar

from torch import nn

M = TypeVar("M", bound=nn.Module)


def moved(module: nn.Module, kind: type[M]) -> M:
    """A `kind` module with `module`'s attributes; its own dicts and sets of children, parameters, buffers and
    hooks, so what is set on one later does not reach the other."""
    new = kind.__new__(kind)
    new.__dict__.update({name: copy.copy(value) if isinstance(value, (dict, set)) else value
                         for name, value in module.__dict__.items()})  # fmt: skip
    return new
