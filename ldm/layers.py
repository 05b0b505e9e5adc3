"""Building blocks shared by the U-Net and the VAE."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ldm.packing import SWAPPING, PackedLayer


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


# Folding costs a pass over the weights on each call; from 16x16 inputs up the saved multiply-adds pay for it
# (a 1280-channel U-Net conv at 8x8: 112 ms folded against 64; at 16x16: 188 against 265).
FOLD_FROM_AREA = 16 * 16


class Upsample(nn.Module):
    """Nearest-neighbour 2x, then a 3x3 conv (`.conv` in both models' checkpoints).

    Without autograd, and from FOLD_FROM_AREA input pixels up, four 2x2 convs over the input, one per output
    phase, give the same result with about half the multiply-adds (4/9, and each phase computes one row and
    column more than it keeps) and no upsampled copy of the input: 13% of a 512x512 VAE decode, 2% of a U-Net
    step. Its conv never packs (ldm/packing.py) unless smaller inputs come too.
    """

    offload_as_unit = True  # folding reads conv's weight without calling conv (ldm/offload.py)

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        conv, (b, _, h, w) = self.conv, x.shape
        wants_grad = x.requires_grad or any(p.requires_grad for p in conv.parameters())
        if h * w < FOLD_FROM_AREA or (torch.is_grad_enabled() and wants_grad):
            return conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        kernels = folded_kernels(conv)
        # Channels-last on a CPU, as the packed convs (ldm/packing.py) return it and the next one computes in.
        layout = torch.channels_last if x.device.type == "cpu" else torch.contiguous_format
        out = torch.empty(b, kernels[0].shape[0], 2 * h, 2 * w, dtype=x.dtype, device=x.device, memory_format=layout)
        for (r, c), kernel in zip(((0, 0), (0, 1), (1, 0), (1, 1)), kernels, strict=True):
            # Padding 1 gives (h+1, w+1) outputs, output i over input rows (i-1, i); phase r starts at r.
            out[:, :, r::2, c::2] = F.conv2d(x, kernel, conv.bias, padding=1)[:, :, r : r + h, c : c + w]
        return out


def folded_kernels(conv: nn.Module) -> list[Tensor]:
    """The 2x2 kernels of phases (0, 0), (0, 1), (1, 0), (1, 1) of a 3x3 conv after nearest 2x upsampling.

    Upsampling repeats each input row, so even output rows see input rows (i-1, i, i) and odd ones (i, i, i+1):
    the 3x3 kernel's rows that land on the same input row add up, and so do its columns.
    """
    with SWAPPING:  # packed by a call on a smaller input, maybe in another thread just now
        weight = conv.dense_weight() if isinstance(conv, PackedLayer) else conv.weight
    rows = _fold(weight.detach().float(), dim=2)
    return [k.to(weight.dtype) for by_rows in rows for k in _fold(by_rows, dim=3)]


def _fold(w: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    first, middle, last = w.unbind(dim)
    return torch.stack([first, middle + last], dim), torch.stack([first + middle, last], dim)
