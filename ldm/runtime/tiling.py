"""Decode latents in overlapping tiles, so a large image needs the memory of one tile, not of the whole picture.

Each tile is decoded alone and the tiles are blended with weights that ramp linearly across each overlap, with
the tile's outermost pixels left out, so no seam shows. The VAE's group norms see one tile's statistics instead
of the picture's, so a tiled decode is close to, not equal to, an untiled one (tools/bench.py --only tiling).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

TILE = 64  # latent pixels a side: 512x512 image pixels per tile, SD v1's native size
OVERLAP = 16  # latent pixels shared by neighbouring tiles


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile offsets along one axis: every `tile - overlap`, the last one flush with the end."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, tile - overlap))
    return starts + [length - tile]


def _ramp(size: int, ramp: int, rising: bool, falling: bool) -> Tensor:
    """1-D blend weights of one tile. At a side that borders another tile the outer quarter of the overlap gets
    no weight (a convolution there sees the tile's edge, not the picture), then the weight rises linearly to 1
    at the overlap's inner end. The neighbour's weight is positive wherever this one is 0."""
    weight = torch.ones(size)
    margin = ramp // 4
    edge = ((torch.arange(ramp) + 0.5 - margin) / (ramp - margin)).clamp(0, 1)
    if rising:
        weight[:ramp] = edge
    if falling:
        weight[-ramp:] = edge.flip(0)
    return weight


def tiled_decode(
    decode: Callable[[Tensor], Tensor], z: Tensor, scale: int, tile: int = TILE, overlap: int = OVERLAP
) -> Tensor:
    """decode(z) for latents z (B, C, h, w), one tile at a time; `scale` is image pixels per latent pixel."""
    if not 0 < overlap < tile:
        raise ValueError(f"overlap must be between 0 and the tile size {tile}, got {overlap}")
    b, _, h, w = z.shape
    if h <= tile and w <= tile:
        return decode(z)
    rows, cols = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    out = weights = None
    for y in rows:
        for x in cols:
            piece = decode(z[:, :, y : y + tile, x : x + tile]).float()
            th, tw = piece.shape[-2:]
            wy = _ramp(th, overlap * scale, y > 0, y + tile < h)
            wx = _ramp(tw, overlap * scale, x > 0, x + tile < w)
            mask = (wy[:, None] * wx[None, :]).to(piece.device)
            if out is None:
                out = piece.new_zeros(b, piece.shape[1], h * scale, w * scale)
                weights = piece.new_zeros(h * scale, w * scale)
            region = (slice(y * scale, y * scale + th), slice(x * scale, x * scale + tw))
            out[:, :, region[0], region[1]] += piece * mask
            weights[region] += mask
    return out / weights
