"""The LoRAs merged into a model's weights: ΔW added in place, through the one weight-edit operation
(ldm/runtime/weights.py), so packed CPU layers, offload and the prompt cache all see it and a step costs what it
did without a LoRA. Each weight a LoRA touches is backed up (on the CPU) first, as A1111 keeps its backup: a new
set of LoRAs starts from the weights as loaded, with no reload and no drift, and the last one leaves them exact.

Backups outlive an unload (switching LoRAs then copies nothing twice) while the component's weights revision says
nobody else edited it since; after someone did, the weights as they are now are the ones to back up.
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
from ldm.networks.lora_deltas import add_change
from ldm.networks.lora_file import LoraFile, read_lora
from ldm.runtime.weights import Weights, weights_revision

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
        self.carrying: set[str] = set()  # components whose weights hold LoRA changes now
        self.revisions: dict[str, int] = {}  # each component's weights revision when this last left it
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
            self._merge(uses, files, edit, self.carrying)
        except BaseException:  # some weights may have changed: every backup goes back, then the old set again
            everything = self.carrying | {c for c, _ in self.backups}
            self._merge(self.applied, [self.read(use.path) for use in self.applied], edit, everything)
            raise
        self.applied = uses

    def _merge(self, uses: tuple[LoraUse, ...], files: list[LoraFile], edit: EditWeights, carrying: set[str]) -> None:
        """Restore the components in `carrying` from their backups, then add every change of `uses`."""
        carrying = set(carrying)  # as it is now: self.carrying changes below
        wanted = {m.target.component for f in files for m in f.modules}
        for component in sorted(carrying | wanted):
            with edit(component) as weights:
                if component not in carrying and self.revisions.get(component) != weights_revision(weights.module):
                    self._drop_backups(component)  # edited by someone else since: those weights are the base now
                if component in carrying:
                    for (owner, name), original in self.backups.items():
                        if owner == component:
                            weights[name].copy_(original)
                self.carrying.discard(component)
                for use, file in zip(uses, files, strict=True):
                    multiplier = use.te if component == "text_encoder" else use.unet
                    for module in file.modules:
                        if module.target.component != component or multiplier == 0:
                            continue
                        weight = weights[module.target.weight]
                        key = (component, module.target.weight)
                        if key not in self.backups:
                            self.backups[key] = weight.detach().to("cpu", copy=True)
                        self.carrying.add(component)
                        add_change(weight, module.tensors, multiplier, use.dyn)
            self.revisions[component] = weights_revision(weights.module)

    def _drop_backups(self, component: str) -> None:
        for key in [k for k in self.backups if k[0] == component]:
            del self.backups[key]


def _stamp(path: Path) -> tuple:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns
