"""Contexts of different lengths (prompts of different chunk counts) in one batch, without changing a result.

Cross-attention over a context repeated r times is the same attention (each key and value r times: the softmax
weights split evenly over the copies), so each context is tiled to the least common multiple of the lengths:
the same images as A1111's default, which runs cond and uncond apart at their own lengths (ComfyUI tiles the
same way). Where that multiple passes TILE_LIMIT times the longest, the shorter ones repeat their last vector up to
the longest instead, as A1111 stacks a batch of prompts (prompt_parser.stack_conds).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

TILE_LIMIT = 4  # ComfyUI's limit too


def stack_contexts(contexts: list[Tensor]) -> Tensor:
    """(B, T, C) from B contexts (T_i, C)."""
    lengths = {c.shape[0] for c in contexts}
    if len(lengths) == 1:
        return torch.stack(contexts)
    longest, common = max(lengths), math.lcm(*lengths)
    if common <= TILE_LIMIT * longest:
        return torch.stack([c.repeat(common // c.shape[0], 1) for c in contexts])
    return torch.stack([torch.cat([c, c[-1:].expand(longest - c.shape[0], -1)]) for c in contexts])
