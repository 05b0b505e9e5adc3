"""Prompts -> the context the U-Net attends to, each distinct prompt through the text encoder once.

A batch repeats prompts (batch_size, one negative prompt for every image) and a seed sweep repeats whole
calls; AUTOMATIC1111 and ComfyUI skip that work too. An encoding is only valid for the weights that made it:
the cache is keyed by the encoder's weights revision (bumped by ldm/runtime/weights.py's edit_weights), dtype
and device, and empties itself when those change. It is safe to share between threads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ldm.runtime.weights import weights_revision

CACHED_PROMPTS = 64  # distinct (prompt, clip_skip) encodings kept, least recently used dropped first


def weights_state(module: nn.Module) -> tuple:
    """What an encoding depends on besides the prompt: which weights, in which dtype, on which device."""
    first = next(module.parameters(), None)
    return id(module), weights_revision(module), None if first is None else (first.dtype, first.device)


class PromptCache:
    def __init__(self, size: int = CACHED_PROMPTS):
        self.size = size
        self.entries: OrderedDict[tuple[str, int], Tensor] = OrderedDict()
        self.state: tuple | None = None
        self.lock = threading.Lock()

    def encode(
        self, encoder: nn.Module, prompts: list[str], clip_skip: int, run: Callable[[list[str]], Tensor]
    ) -> Tensor:
        """(len(prompts), T, C): cached rows where present, `run(missing prompts)` for the rest."""
        state = weights_state(encoder)
        with self.lock:
            if state != self.state:
                self.entries.clear()
                self.state = state
            missing = [p for p in dict.fromkeys(prompts) if (p, clip_skip) not in self.entries]
        found = dict(zip(missing, run(missing), strict=True)) if missing else {}
        with self.lock:
            rows = []
            for prompt in prompts:
                row = found.get(prompt)
                if row is None:
                    row = self.entries.get((prompt, clip_skip))
                if row is None:  # evicted by another thread meanwhile: encode it again
                    row = run([prompt])[0]
                if self.state == state:
                    self.entries[(prompt, clip_skip)] = row.clone() if prompt in found else row
                    self.entries.move_to_end((prompt, clip_skip))
                rows.append(row)
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)
        return torch.stack(rows)
