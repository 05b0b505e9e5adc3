"""Upsampling folded into the conv: nearest 2x then a 3x3 conv, computed as four 2x2 convs over the input.

Upsampling repeats each input row, so even output rows see input rows (i-1, i, i) and odd ones (i, i, i+1): the
3x3 kernel's rows that land on the same input row add up, and so do its columns. Each output phase is then a
2x2 conv over the input: about half the multiply-adds (4/9, and each phase computes one row and column more
than it keeps) and no upsampled copy of the input. Swapped in by ldm/cpu/swap_in.py for ldm.models.layers.Upsample
(the U-Net's and the VAE's), and as FoldingSequential for a Sequential of nn.Upsample and conv (TAESD's decoder).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ldm.cpu.moved import moved
from ldm.cpu.packing import SWAPPING, PackedConv2d, PackedLayer
from ldm.models.layers import Upsample

# Folding costs a pass over the weights on each call; from this input area up, the saved multiply-adds pay for it.
FOLD_FROM_AREA = 16 * 16


class FoldedUpsample(Upsample):
    """Upsample with the same `.conv`, folded without autograd from FOLD_FROM_AREA input pixels up."""

    offload_as_unit = True  # folding reads conv's weight without calling conv (ldm/runtime/offload.py)

    fold_from_area = FOLD_FROM_AREA  # math.inf: never fold (tools/bench.py compares)

    @classmethod
    def replacing(cls, plain: Upsample) -> FoldedUpsample:
        return moved(plain, cls)

    def plain(self) -> Upsample:
        return moved(self, Upsample)

    def forward(self, x: Tensor) -> Tensor:
        if not foldable(x, self.conv, self.fold_from_area):
            return super().forward(x)
        return upsampled_conv(x, self.conv)


class FoldingSequential(nn.Sequential):
    """A Sequential (TAESD's decoder) whose nearest-2x nn.Upsample followed by a 3x3 conv runs folded. The same
    children under the same names, so the same state-dict keys."""

    fold_from_area = FOLD_FROM_AREA

    @classmethod
    def replacing(cls, plain: nn.Sequential) -> FoldingSequential:
        return cls(*plain)

    def plain(self) -> nn.Sequential:
        return nn.Sequential(*self)

    def forward(self, x: Tensor) -> Tensor:
        layers, i = list(self), 0
        while i < len(layers):
            if _nearest_2x(layers[i]) and i + 1 < len(layers) and foldable(x, layers[i + 1], self.fold_from_area):
                x, i = upsampled_conv(x, layers[i + 1]), i + 2
            else:
                x, i = layers[i](x), i + 1
        return x


def folds_pairs(sequential: nn.Module) -> bool:
    """Whether a plain Sequential holds an nn.Upsample (nearest, 2x) right before a 3x3 conv."""
    layers = list(sequential) if type(sequential) is nn.Sequential else []
    return any(_nearest_2x(a) and _three_by_three(b) for a, b in zip(layers, layers[1:], strict=False))


def _nearest_2x(layer: nn.Module) -> bool:
    return isinstance(layer, nn.Upsample) and layer.mode == "nearest" and layer.scale_factor in (2, 2.0, (2.0, 2.0))


def _three_by_three(layer: nn.Module) -> bool:
    if isinstance(layer, PackedConv2d):  # only 3x3 convs are packed
        return tuple(layer.padding) == (1, 1) and tuple(layer.stride) == (1, 1) and tuple(layer.dilation) == (1, 1)
    return isinstance(layer, nn.Conv2d) and layer.kernel_size == (3, 3) and layer.padding == (1, 1) and \
        layer.stride == (1, 1) and layer.groups == 1 and layer.dilation == (1, 1)  # fmt: skip


def foldable(x: Tensor, conv: nn.Module, from_area: float) -> bool:
    """Fold when the input is large enough to pay for folding the kernels, and no autograd is wanted. An int8 conv
    (ldm/cpu/int8.py) is faster on the upsampled input than a float one on the folded kernels."""
    (_, _, h, w), wants_grad = x.shape, x.requires_grad or any(p.requires_grad for p in conv.parameters())
    if getattr(conv, "quantized", False):
        return False
    return _three_by_three(conv) and h * w >= from_area and not (torch.is_grad_enabled() and wants_grad)


def upsampled_conv(x: Tensor, conv: nn.Module) -> Tensor:
    """conv(nearest 2x upsampled x), as four 2x2 convs over x."""
    b, _, h, w = x.shape
    kernels = folded_kernels(conv)
    # Channels-last on a CPU, as the packed convs (ldm/cpu/packing.py) return it and the next one computes in.
    layout = torch.channels_last if x.device.type == "cpu" else torch.contiguous_format
    out = torch.empty(b, kernels[0].shape[0], 2 * h, 2 * w, dtype=x.dtype, device=x.device, memory_format=layout)
    for (r, c), kernel in zip(((0, 0), (0, 1), (1, 0), (1, 1)), kernels, strict=True):
        # Padding 1 gives (h+1, w+1) outputs, output i over input rows (i-1, i); phase r starts at r.
        out[:, :, r::2, c::2] = F.conv2d(x, kernel, conv.bias, padding=1)[:, :, r : r + h, c : c + w]
    return out


def folded_kernels(conv: nn.Module) -> list[Tensor]:
    """The 2x2 kernels of phases (0, 0), (0, 1), (1, 0), (1, 1) of a 3x3 conv after nearest 2x upsampling."""
    with SWAPPING:  # packed by a call on a smaller input, maybe in another thread just now
        weight = conv.dense_weight() if isinstance(conv, PackedLayer) else conv.weight
    rows = _fold(weight.detach().float(), dim=2)
    return [k.to(weight.dtype) for by_rows in rows for k in _fold(by_rows, dim=3)]


def _fold(w: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    first, middle, last = w.unbind(dim)
    return torch.stack([first, middle + last], dim), torch.stack([first + middle, last], dim)
