"""Prompts -> their contexts (77 k, C) through the text encoder: every chunk of every prompt in one encoder
batch, each chunk weighted by its tokens' weights (ldm/text/emphasis.py), a prompt's chunks side by side
(A1111's torch.hstack of the chunk encodings)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ldm.text.chunking import chunk_prompt
from ldm.text.embeddings import Embeddings
from ldm.text.emphasis import apply_emphasis
from ldm.text.tokenizer import Tokenizer


def encode_prompts(
    encoder: nn.Module,
    tokenizer: Tokenizer,
    prompts: list[str],
    *,
    clip_skip: int = 1,
    emphasis: str = "original",
    embeddings: Embeddings | None = None,
    device: torch.device | str = "cpu",
) -> list[Tensor]:
    """One (77 k, C) context per prompt, k its chunk count."""
    chunked = [chunk_prompt(p, tokenizer, emphasis, embeddings) for p in prompts]
    flat = [chunk for chunks in chunked for chunk in chunks]
    ids = torch.tensor([c.ids for c in flat], dtype=torch.long, device=device)
    weights = torch.tensor([c.weights for c in flat], dtype=torch.float32)
    vectors = [(row, at, e.vectors.to(device)) for row, c in enumerate(flat) for at, e in c.embeddings]
    z = apply_emphasis(encoder(ids, clip_skip=clip_skip, vectors=vectors), weights, emphasis)  # (N, 77, C)
    contexts, row = [], 0
    for chunks in chunked:
        contexts.append(z[row : row + len(chunks)].reshape(-1, z.shape[-1]))  # (77 k, C)
        row += len(chunks)
    return contexts


def embeddings_used(prompts: list[str], tokenizer: Tokenizer, emphasis: str, embeddings: Embeddings) -> list[str]:
    """The triggers of the embeddings these prompts use, in first-use order (for the infotext's TI hashes)."""
    used: dict[str, None] = {}
    for prompt in prompts:
        for chunk in chunk_prompt(prompt, tokenizer, emphasis, embeddings):
            used.update((e.name, None) for _, e in chunk.embeddings)
    return list(used)
