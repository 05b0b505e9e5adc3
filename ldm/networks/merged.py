"""The LoRAs merged into a model's weights: ΔW added in place, through the one weight-edit operation
(ldm/runtime/weights.py), so packed CPU layers, offload and the prompt cache all see it and a step costs what it
did without a LoRA. Each weight a LoRA touches is backed up (on the CPU) first, as A1111 keeps its backup: a new
set of LoRAs starts from the weights as loaded, with no reload and no drift, and the last one leaves them exact.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from ldm.checkpoints.hashing import short_hash
from ldm.config import ModelConfig
from ldm.networks.lora_deltas import delta
from ldm.networks.lora_file import LoraFile, read_lora
from ldm.runtime.weights import Weights

EditWeights = Callable[[str], AbstractContextManager[Weights]]  # component name -> the weight-edit operation
CACHED_FILES = 4  # LoRA files kept read (a switch back and forth reads neither again)


@dataclass(frozen=True)
class LoraUse:
    """One LoRA at its multipliers (A1111's `<lora:name:te:unet>`; `dyn` keeps the first ranks only)."""

    path: Path
    te: float = 1.0
    unet: float = 1.0
    dyn: int | None = None
    name: str = ""  # as the prompt names it (the file's stem by default), for the infotext

    @property
    def label(self) -> str:
        return self.name or self.path.stem


class MergedLoras:
    def __init__(self, config: ModelConfig):
        self.config = config
        self.applied: tuple[LoraUse, ...] = ()
        self.backups: dict[tuple[str, str], Tensor] = {}  # (component, weight name) -> the weight as loaded
        self.files: OrderedDict[tuple, LoraFile] = OrderedDict()
        self.hashes: dict[tuple, str] = {}

    def read(self, path: Path) -> LoraFile:
        """The checked file (ldm/networks/lora_file.py), read again only when it changed on disk."""
        key = _stamp(path)
        if key not in self.files:
            self.files[key] = read_lora(path, self.config)
            while len(self.files) > CACHED_FILES:
                self.files.popitem(last=False)
        self.files.move_to_end(key)
        return self.files[key]

    def short_hash(self, path: Path) -> str:
        """A1111's "Lora hashes" entry of a file (kohya's addnet hash for .safetensors)."""
        key = _stamp(path)
        if key not in self.hashes:
            self.hashes[key] = short_hash(path, safetensors_data=path.suffix.lower() == ".safetensors")
        return self.hashes[key]

    def set(self, uses: Sequence[LoraUse], edit: EditWeights) -> None:
        """Make `uses` the merged LoRAs. Every file is read and checked before a weight changes; if merging fails
        even so, the weights are put back as they were."""
        uses = tuple(uses)
        if uses == self.applied:
            return
        files = [self.read(use.path) for use in uses]
        try:
            self._merge(uses, files, edit)
        except BaseException:
            self._merge(self.applied, [self.read(use.path) for use in self.applied], edit)
            raise
        self.applied = uses

    def _merge(self, uses: tuple[LoraUse, ...], files: list[LoraFile], edit: EditWeights) -> None:
        components = {c for c, _ in self.backups} | {m.target.component for f in files for m in f.modules}
        for component in sorted(components):
            with edit(component) as weights:
                for (owner, name), original in self.backups.items():  # back to the weights as loaded
                    if owner == component:
                        weights[name].copy_(original)
                touched = set()
                for use, file in zip(uses, files, strict=True):
                    multiplier = use.te if component == "text_encoder" else use.unet
                    for module in file.modules:
                        if module.target.component != component or multiplier == 0:
                            continue
                        key = (component, module.target.weight)
                        weight = weights[module.target.weight]
                        if key not in self.backups:
                            self.backups[key] = weight.detach().to("cpu", copy=True)
                        touched.add(key)
                        change = delta(module.tensors, weight.shape, use.dyn).to(weight.device)
                        weight.copy_((weight.float() + multiplier * change).to(weight.dtype))
                for key in [k for k in self.backups if k[0] == component and k not in touched]:
                    del self.backups[key]  # as loaded again: nothing to undo there


def _stamp(path: Path) -> tuple:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns
