"""The one way to change a loaded model's weights: `with edit_weights(module) as weights: ...`.

Whatever edits weights (LoRA, textual inversion, a user's own code) goes through here, so that:
- a layer that packed its weight for oneDNN (ldm/cpu/packing.py) gives the dense weight back before the edit,
  and packs again, lazily, on its next call;
- the edit lands in place, in the tensors offload keeps at home (ldm/runtime/offload.py);
- the module's revision number goes up, and what was computed from the old weights (the prompt cache,
  ldm/text/conditioning.py) knows it is stale.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


def weights_revision(module: nn.Module) -> int:
    """How many edits `module`'s weights have had since it was built (0: as loaded)."""
    return getattr(module, "weights_revision", 0)


class Weights:
    """A module's weights by state-dict name (`weights["input_blocks.1.1.proj_in.weight"]`), each the dense
    Parameter or buffer the module computes with."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __getitem__(self, name: str) -> Tensor:
        owner, _, leaf = name.rpartition(".")
        try:  # a packed layer unpacks when asked for its weight
            tensor = getattr(self.module.get_submodule(owner), leaf)
        except AttributeError:
            raise KeyError(name) from None
        if not isinstance(tensor, Tensor):
            raise KeyError(name)
        if tensor.is_inference():  # made under torch.inference_mode (a layer unpacked there): not editable in place
            with torch.inference_mode(False):
                tensor = _replace(self.module.get_submodule(owner), leaf, tensor.clone())
        return tensor

    def __contains__(self, name: object) -> bool:
        try:
            self[name]  # type: ignore[index]
        except (KeyError, TypeError):
            return False
        return True


@contextmanager
def edit_weights(module: nn.Module) -> Iterator[Weights]:
    """Yield `module`'s weights to change in place (under no_grad); bump its revision afterwards, even if the
    edit failed half-way (then some weights may have changed: nothing computed before stays valid)."""
    try:
        with torch.inference_mode(False), torch.no_grad():  # an edit also works inside an inference_mode block
            yield Weights(module)
    finally:
        module.weights_revision = weights_revision(module) + 1


def _replace(owner: nn.Module, leaf: str, tensor: Tensor) -> Tensor:
    """Put `tensor` where `owner.<leaf>` was, as a Parameter if that was one, and return what is there now."""
    old = getattr(owner, leaf)
    setattr(
        owner, leaf, nn.Parameter(tensor, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else tensor
    )
    return getattr(owner, leaf)
