"""Prompts -> the context the U-Net attends to, each distinct prompt through the text encoder once.

A batch repeats prompts (batch_size, one negative prompt for every image) and a seed sweep repeats whole
calls; AUTOMATIC1111 and ComfyUI skip that work too. An encoding is only valid for the weights that made it:
the cache is keyed by the encoder's weights revision (bumped by ldm/runtime/weights.py's edit_weights), dtype
and device, and what else the caller says the encoding depends on (the loaded embeddings), and empties itself
when those change. Entries are keyed by the prompt and its settings (clip skip, emphasis). Prompts of different
lengths come back tiled to one (ldm/text/context_length.py). It is safe to share between threads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence

from torch import Tensor, nn

from ldm.runtime.weights import weights_revision
from ldm.text.context_length import stack_contexts

CACHED_PROMPTS = 64  # distinct (prompt, settings) encodings kept, least recently used dropped first


def weights_state(module: nn.Module) -> tuple:
    """What an encoding depends on besides the prompt: which weights, in which dtype, on which device."""
    first = next(module.parameters(), None)
    return id(module), weights_revision(module), None if first is None else (first.dtype, first.device)


class PromptCache:
    def __init__(self, size: int = CACHED_PROMPTS):
        self.size = size
        self.entries: OrderedDict[tuple[str, Hashable], Tensor] = OrderedDict()
        self.state: tuple | None = None
        self.lock = threading.Lock()

    def encode(
        self,
        encoder: nn.Module,
        prompts: list[str],
        settings: Hashable,
        run: Callable[[list[str]], Sequence[Tensor]],
        depends_on: Hashable = None,
    ) -> Tensor:
        """(len(prompts), T, C): cached rows where present, `run(missing prompts)` (a context each) for the rest.
        `settings` (clip skip, emphasis, ...) are part of each entry's key; a change of `depends_on` empties the
        cache as a weights change does."""
        state = (weights_state(encoder), depends_on)
        with self.lock:
            if state != self.state:
                self.entries.clear()
                self.state = state
            missing = [p for p in dict.fromkeys(prompts) if (p, settings) not in self.entries]
        found = dict(zip(missing, run(missing), strict=True)) if missing else {}
        with self.lock:
            rows = []
            for prompt in prompts:
                row = found.get(prompt)
                if row is None:
                    row = self.entries.get((prompt, settings))
                if row is None:  # evicted by another thread meanwhile: encode it again
                    row = run([prompt])[0]
                if self.state == state:
                    self.entries[(prompt, settings)] = row.clone() if prompt in found else row
                    self.entries.move_to_end((prompt, settings))
                rows.append(row)
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)
        return stack_contexts(rows)
