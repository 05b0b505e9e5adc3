"""VAE ResnetBlocks that normalise and convolve in bands of rows: the decoder's largest levels, where a decode
peaks, never hold a whole normalised copy of their input or of their first conv's output.

For float32 on a CPU, over two bands tall. The group norm's statistics come from two passes over the whole input
(a sum, then the squared deviations in bands); norm, SiLU and conv1 then run BAND_ROWS output rows at a time
(one halo row each side), and the block's own conv1 output is normalised in place. Swapped in for
ldm.models.vae.ResnetBlock by ldm/cpu/swap_in.py, with the same children (state-dict keys).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ldm.cpu.moved import moved
from ldm.models.layers import silu_
from ldm.models.vae import ResnetBlock


class BandedResnetBlock(ResnetBlock):
    offload_as_unit = True  # in bands it reads its norms' weights without calling them (ldm/runtime/offload.py)

    @classmethod
    def replacing(cls, plain: ResnetBlock) -> BandedResnetBlock:
        return moved(plain, cls)

    def plain(self) -> ResnetBlock:
        return moved(self, ResnetBlock)

    def forward(self, x: Tensor) -> Tensor:
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        if not in_bands(x) or grad:
            return super().forward(x)
        h = norm_silu_conv_in_bands(x, self.norm1, self.conv1)
        scale, shift = group_norm_affine(h, self.norm2)
        h = self.conv2(silu_(h.mul_(scale).add_(shift)))  # h is this block's own
        return h.add_(self.nin_shortcut(x))


BAND_ROWS = 64  # output rows a banded conv computes at once, from its input rows and one more on each side


def in_bands(x: Tensor) -> bool:
    """Whether a ResnetBlock runs in bands of rows: float32 on a CPU (the peak RSS case), over two bands tall."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and x.shape[2] > 2 * BAND_ROWS


def group_norm_affine(x: Tensor, norm: nn.GroupNorm) -> tuple[Tensor, Tensor]:
    """(scale, shift), each (B, C, 1, 1), such that norm(x) == x * scale + shift. Two passes, the second in bands
    of rows: torch.var_mean over a channels-last x took 2.3x as long as a whole group norm."""
    b, c, height, width = x.shape
    groups, per_group = norm.num_groups, c // norm.num_groups
    count = per_group * height * width
    mean = x.sum(dim=(2, 3)).view(b, groups, per_group).sum(-1) / count  # (B, G)
    centre = mean.repeat_interleave(per_group, dim=1)[..., None, None]  # (B, C, 1, 1)
    bands = (x[:, :, top : top + BAND_ROWS] for top in range(0, height, BAND_ROWS))
    squares = sum((band - centre).square_().sum(dim=(2, 3)) for band in bands)  # (B, C)
    var = squares.view(b, groups, per_group).sum(-1) / count
    scale = norm.weight.view(1, groups, per_group) * (var + norm.eps).rsqrt()[..., None]  # (B, G, C/G)
    shift = norm.bias.view(1, groups, per_group) - mean[..., None] * scale
    return scale.reshape(b, c, 1, 1), shift.reshape(b, c, 1, 1)


def norm_silu_conv_in_bands(x: Tensor, norm: nn.GroupNorm, conv: nn.Module) -> Tensor:
    """conv(silu(norm(x))) for a 3x3 conv with padding 1, BAND_ROWS output rows at a time: each band normalises
    its rows and one more on each side, and keeps the output rows whose 3x3 windows lie inside it."""
    scale, shift = group_norm_affine(x, norm)
    height, out = x.shape[2], None
    for top in range(0, height, BAND_ROWS):
        rows = min(BAND_ROWS, height - top)
        first, end = max(top - 1, 0), min(top + rows + 1, height)
        y = conv(silu_(torch.addcmul(shift, x[:, :, first:end], scale)))
        if out is None:
            shape = (*y.shape[:2], height, y.shape[3])
            out = torch.empty(shape, dtype=y.dtype, device=y.device, memory_format=torch.channels_last)
        out[:, :, top : top + rows] = y[:, :, top - first : top - first + rows]
    return out
