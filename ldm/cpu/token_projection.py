"""The U-Net's SpatialTransformer with its 1x1 proj_in and proj_out computed as linear layers over its tokens.

SD v1 projects into and out of its transformer blocks with 1x1 convs on (B, C, H, W) maps, and reshapes the map to
(B, HW, C) tokens between them. On a CPU each 1x1 conv has oneDNN convert its input and output layouts (and, not
packed, its weight) on every call; over the tokens it is a plain matmul, which packs as a linear layer does
(ldm/cpu/packing.py). The same keys and weights: the convs keep their (C, C, 1, 1) weights, read as (C, C).
Swapped in by ldm/cpu/swap_in.py where the layers pack, and not for int8 (which quantizes the 1x1 convs as convs);
off the CPU the plain path runs.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ldm.cpu.moved import moved
from ldm.models.unet import SpatialTransformer


class PointwiseConv(nn.Conv2d):
    """A 1x1 conv that also takes tokens: (..., C_in) -> (..., C_out) as a linear layer; a (B, C, H, W) map as a
    conv."""

    @classmethod
    def replacing(cls, conv: nn.Conv2d) -> PointwiseConv:
        return moved(conv, cls)

    def plain(self) -> nn.Conv2d:
        return moved(self, nn.Conv2d)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4:
            return super().forward(x)
        return F.linear(x, self.weight.flatten(1), self.bias)


class TokenProjectedTransformer(SpatialTransformer):
    @classmethod
    def replacing(cls, plain: SpatialTransformer) -> TokenProjectedTransformer:
        projected = moved(plain, cls)
        projected.proj_in, projected.proj_out = (PointwiseConv.replacing(c) for c in (plain.proj_in, plain.proj_out))
        return projected

    def plain(self) -> SpatialTransformer:
        plain = moved(self, SpatialTransformer)
        plain.proj_in, plain.proj_out = (c.plain() if isinstance(c, PointwiseConv) else c
                                         for c in (self.proj_in, self.proj_out))  # fmt: skip
        return plain

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        if x.device.type != "cpu":
            return super().forward(x, context)
        b, c, h, w = x.shape
        y = self.proj_in(self.norm(x).permute(0, 2, 3, 1).reshape(b, h * w, c))  # (B, C, H, W) -> (B, HW, C)
        for block in self.transformer_blocks:
            y = block(y, context)
        # (B, HW, C) -> (B, C, H, W) as a view, channels-last: the layers after it take that layout as it is.
        out = self.proj_out(y).transpose(1, 2).reshape(-1, c, h, w)
        out.unflatten(0, (-1, b)).add_(x)  # x is one copy of each row when the blocks made copies of them
        return out
