"""Building blocks shared by the U-Net and the VAE."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def silu_(x: Tensor) -> Tensor:
    """SiLU over a fresh temporary, in place when no gradient needs the input."""
    return F.silu(x, inplace=not x.requires_grad)


class SiLU(nn.Module):
    """nn.SiLU over a fresh temporary (a norm's output), in place when no gradient needs it: one activation-sized
    allocation fewer, and each new large allocation costs page faults on a CPU."""

    def forward(self, x: Tensor) -> Tensor:
        return silu_(x)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 for float16 inputs, as CompVis does: float16 statistics overflow. bfloat16
    has float32's range, and its kernels accumulate in float32 already."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype != torch.float16:
            return super().forward(x)
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps).half()


class Upsample(nn.Module):
    """Nearest-neighbour 2x, then a 3x3 conv (`.conv` in both models' checkpoints). On a CPU, ldm/cpu/folded.py
    swaps in a version that computes the same with about half the multiply-adds."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
