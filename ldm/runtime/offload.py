"""CPU offload: weights rest in CPU memory and visit the accelerator only while they compute.

"model": the text encoder, U-Net and VAE take turns on the device (one whole model there at a time; about the
speed of no offload, the U-Net's memory). "sequential": each layer visits alone (the least device memory, much
slower). The CPU copy is never replaced, only borrowed: after a visit every tensor is the very CPU tensor it was.
"""

from __future__ import annotations

import torch
from torch import nn

MODES = ("model", "sequential")


class Resident:
    """A module's tensors (its own only, unless `recurse`), kept on the CPU and lent to a device on demand.

    A visit puts a device copy in the module's parameter and buffer slots; going home puts the CPU tensors back."""

    def __init__(self, module: nn.Module, recurse: bool = True):
        owners = module.modules() if recurse else [module]
        self.slots = [(slots, name) for m in owners for slots in (m._parameters, m._buffers) for name in slots]
        self.slots = [(slots, name) for slots, name in self.slots if slots[name] is not None]
        if torch.cuda.is_available():  # pinned pages copy to the GPU asynchronously
            for slots, name in self.slots:
                slots[name] = _like(slots[name], slots[name].data.pin_memory())
        self.home = [slots[name] for slots, name in self.slots]

    def visit(self, device: torch.device) -> None:
        for (slots, name), home in zip(self.slots, self.home, strict=True):
            slots[name] = _like(home, home.data.to(device, non_blocking=True))

    def go_home(self) -> None:
        for (slots, name), home in zip(self.slots, self.home, strict=True):
            slots[name] = home


def _like(original: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
    """`data` as a Parameter if `original` is one (a buffer stays a plain tensor)."""
    return nn.Parameter(data, requires_grad=False) if isinstance(original, nn.Parameter) else data


class ModelOffload:
    """Keeps at most one of several models on the device; `activate(model)` before using one."""

    def __init__(self, models: list[nn.Module], device: torch.device):
        self.residents = {id(m): Resident(m) for m in models}
        self.device, self.active = device, None

    def activate(self, model: nn.Module) -> None:
        if self.active == id(model):
            return
        if self.active is not None:
            self.residents[self.active].go_home()
        self.residents[id(model)].visit(self.device)
        self.active = id(model)

    def send_home(self) -> None:
        """Every model back on its CPU tensors (before their weights are edited: the edit must land at home)."""
        if self.active is not None:
            self.residents[self.active].go_home()
            self.active = None


def offload_sequentially(model: nn.Module, device: torch.device) -> None:
    """Hooks every layer that owns tensors to visit the device for its forward only.

    A module with `offload_as_unit = True` (one that reads a child's weight without calling the child) visits
    whole."""
    for unit in _units(model):
        resident = Resident(unit, recurse=getattr(unit, "offload_as_unit", False))
        unit.register_forward_pre_hook(lambda module, args, r=resident: r.visit(device))
        unit.register_forward_hook(lambda module, args, output, r=resident: r.go_home())


def _units(module: nn.Module) -> list[nn.Module]:
    if getattr(module, "offload_as_unit", False):
        return [module]
    own = any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False))
    return [module] * own + [u for child in module.children() for u in _units(child)]
