"""Prompt encodings remembered across calls: each distinct prompt goes through the text encoder once.

A batch repeats prompts (batch_size, one negative prompt for every image) and a seed sweep repeats whole
calls; AUTOMATIC1111 and ComfyUI skip that work too. An encoding is only valid for the weights that made it,
so the cache is keyed by each parameter's storage, dtype and version counter: loading new weights, casting
them or editing them in place empties it instead of serving a stale encoding.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ldm.packing import PackedLayer, tensor_identity


def weights_fingerprint(module: nn.Module) -> tuple:
    """Changes whenever a parameter is replaced, cast, moved or modified in place; not when a layer packs its
    weight for oneDNN (ldm/packing.py), which keeps the values."""
    fingerprint = []
    for layer in module.modules():
        own = {name: tensor_identity(p) for name, p in layer.named_parameters(recurse=False)}
        if isinstance(layer, PackedLayer):
            own["weight"] = layer.weight_identity()
        fingerprint.append(tuple(sorted(own.items())))
    return tuple(fingerprint)


class PromptCache:
    def __init__(self, size: int = 64):
        self.size = size  # distinct (prompt, clip_skip) entries kept, least recently used dropped first
        self.entries: OrderedDict[tuple[str, int], Tensor] = OrderedDict()
        self.fingerprint: tuple | None = None

    def encode(
        self, encoder: nn.Module, prompts: list[str], clip_skip: int, run: Callable[[list[str]], Tensor]
    ) -> Tensor:
        """(len(prompts), T, C): cached rows where present, `run(missing prompts)` for the rest."""
        fingerprint = weights_fingerprint(encoder)
        if fingerprint != self.fingerprint:
            self.entries.clear()
            self.fingerprint = fingerprint
        missing = [p for p in dict.fromkeys(prompts) if (p, clip_skip) not in self.entries]
        if missing:
            for prompt, row in zip(missing, run(missing), strict=True):
                self.entries[(prompt, clip_skip)] = row.clone()  # not a view that keeps the whole batch alive
        rows = []
        for prompt in prompts:
            self.entries.move_to_end((prompt, clip_skip))
            rows.append(self.entries[(prompt, clip_skip)])
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)
        return torch.stack(rows)
