"""8-bit weights on a CPU: convs and linear layers computed by oneDNN's int8 kernels (VNNI), activations float32.

`quantize_weights(model)` swaps a model's convs, linear layers and GEGLUs for layers that, on their first CPU
call, quantize their weight per output channel (symmetric, scale = the row's largest |w| / 127) and keep only
oneDNN's packed int8 copy: a quarter of float32's bytes. Each call quantizes its input per tensor (asymmetric
uint8, from the input's own min and max, so nothing is calibrated) and gets float32 back, with the bias added.
GroupNorm, LayerNorm and attention's softmax stay float32, as do layers with fewer than MIN_CHANNELS inputs or
outputs (the U-Net's first and last convs: what goes in and comes out is the latent itself).

The layers are packed layers (ldm/cpu/packing.py): reading `.weight` gives the dequantized float32 weight to read
or edit (a LoRA merges there), and the next call quantizes again. Quantizing a dequantized weight gives the same
int8 values back, so a round trip loses nothing more.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ldm.cpu.features import cpu_flags
from ldm.cpu.packing import FusedGEGLU, PackedConv2d, PackedLinear, packing_available
from ldm.models.unet import GEGLU

QUANTIZE = ("int8",)  # what --quantize takes
MIN_CHANNELS = 16
QUANTIZE_BLOCK = 1 << 18  # weights quantized per block of rows: about 1 MiB of float32, in cache
ONEDNN_OPS = ("qconv_prepack", "qconv2d_pointwise", "qlinear_prepack", "qlinear_pointwise")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # where oneDNN has int8 dot products; elsewhere it emulates
# torch marks its per-tensor quantize as deprecated; it is the one fused (single pass) way to make uint8 from float.
warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor", category=UserWarning)


@functools.cache
def int8_available() -> str | None:
    """None when this CPU and torch compute int8 convs natively; otherwise why not, in a few words."""
    if not any(flag in cpu_flags() for flag in VNNI_FLAGS):
        return "this CPU has no VNNI (avx512_vnni, avx_vnni or amx_int8)"
    if not packing_available() or not all(hasattr(torch.ops.onednn, op) for op in ONEDNN_OPS):
        return "this torch lacks oneDNN's int8 ops"
    return None


def quantize_weights(model: nn.Module) -> nn.Module:
    """Swap `model`'s convs, linear layers and GEGLUs for int8 ones, in place (no weight is read yet: a float16
    file's weights are quantized from its pages, see ldm/cpu/packing.py's settle_dtype)."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is GEGLU and _quantizable(child.proj):
                setattr(parent, name, Int8GEGLU.replacing(child))
            elif type(child) in (nn.Conv2d, nn.Linear) and _quantizable(child):
                setattr(parent, name, Int8Conv2d(child) if isinstance(child, nn.Conv2d) else Int8Linear(child))
    return model


def _quantizable(layer: nn.Module) -> bool:
    if isinstance(layer, nn.Linear):
        return min(layer.in_features, layer.out_features) >= MIN_CHANNELS
    return (
        isinstance(layer, nn.Conv2d)
        and layer.groups == 1
        and layer.padding_mode == "zeros"
        and not isinstance(layer.padding, str)
        and min(layer.in_channels, layer.out_channels) >= MIN_CHANNELS
    )


def per_channel(weight: Tensor) -> tuple[Tensor, Tensor]:
    """(int8 weight, float32 scale per output channel): round(w / scale), scale = max |w| of the row / 127.

    A few rows at a time, each block converted to float32 while it is in cache: one read of the weight."""
    rows = weight.detach().reshape(weight.shape[0], -1)
    step = max(1, QUANTIZE_BLOCK // rows.shape[1])
    q, scale = torch.empty(rows.shape, dtype=torch.int8), torch.empty(rows.shape[0])
    for start in range(0, rows.shape[0], step):
        block = rows[start : start + step].to(torch.float32, copy=True)  # never the caller's tensor, in place
        block_scale = block.abs().amax(dim=1).div_(127)
        block_scale = torch.where(block_scale > 0, block_scale, 1.0)  # an all-zero row
        scale[start : start + step] = block_scale
        q[start : start + step] = block.mul_(block_scale.reciprocal()[:, None]).round_().clamp_(-127, 127)
    return q.view(weight.shape), scale


def quantized_input(x: Tensor) -> tuple[Tensor, float, int] | None:
    """(uint8 x, scale, zero point) over x's own range (0 included), or None when x is not finite."""
    low, high = (v.item() for v in torch.aminmax(x))
    low, high = min(low, 0.0), max(high, 0.0)
    scale = (high - low) / 255
    if not math.isfinite(scale):
        return None
    scale = scale or 1.0
    zero_point = min(255, max(0, round(-low / scale)))
    return torch.quantize_per_tensor(x, scale, zero_point, torch.quint8).int_repr(), scale, zero_point


class Int8Layer:
    """What Int8Conv2d and Int8Linear share: the checks, and the plain path for what int8 cannot take."""

    quantized = True  # ldm/cpu/folded.py: an int8 conv computes after the upsampling rather than folding it
    packs_from_channels_last = False  # pack() quantizes the plain weight itself

    def _suits(self, x: Tensor, w: Tensor) -> bool:
        if x.dtype != torch.float32 or x.device.type != "cpu" or w.device.type != "cpu":
            return False
        if torch.is_grad_enabled() and (x.requires_grad or self.weight_requires_grad):
            return False  # no backward through int8
        return w.dtype == torch.int8 or int8_available() is None

    def dense_weight(self) -> Tensor:
        if self.packed is None:
            return self.weight
        return self.dequantized()

    def forward(self, x: Tensor) -> Tensor:
        packed = self.packed
        if packed is None:
            return super().forward(x)  # packs (then computes in int8) where it can
        if self._suits(x, packed[0]) and (q := quantized_input(x)) is not None:
            return self.int8_forward(q, packed)
        return self.plain_forward(x, self.dense_weight().to(x.dtype))

    def packed_forward(self, x: Tensor, packed: tuple[Tensor, ...]) -> Tensor:
        q = quantized_input(x)
        if q is None:
            return self.plain_forward(x, self.dequantized())
        return self.int8_forward(q, packed)


class Int8Conv2d(Int8Layer, PackedConv2d):
    def pack(self, weight: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, scale = per_channel(weight)
        # The packed layout depends on the input's shape; another shape still computes. The input's scale and zero
        # point given here do not enter the packed weight (each call passes its own).
        packed = torch.ops.onednn.qconv_prepack(q, scale, 1.0, 0, self.stride, self.padding, self.dilation, 1,
                                                list(x.shape))  # fmt: skip
        return packed, scale, torch.zeros(len(scale), dtype=torch.int64)

    def int8_forward(self, q: tuple[Tensor, float, int], packed: tuple[Tensor, ...]) -> Tensor:
        (qx, x_scale, x_zero), (weight, scale, zero) = q, packed
        return torch.ops.onednn.qconv2d_pointwise(qx, x_scale, x_zero, weight, scale, zero, self.bias, self.stride,
                                                  self.padding, self.dilation, 1, 1.0, 0, torch.float32, "none", [],
                                                  "")  # fmt: skip

    def dequantized(self) -> Tensor:
        weight, scale, _ = self.packed
        return weight.to_dense().float() * scale.view(-1, 1, 1, 1)


class Int8Linear(Int8Layer, PackedLinear):
    def pack(self, weight: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return packed_linear(weight)

    def int8_forward(self, q: tuple[Tensor, float, int], packed: tuple[Tensor, ...]) -> Tensor:
        return int8_linear(q, packed, self.bias)

    def dequantized(self) -> Tensor:
        return dequantized_linear(self.packed)


class Int8GEGLUProjection(Int8Linear):
    """A GEGLU's projection, rows [value; gate], returning value * gelu(gate): one quantized input for both
    halves, the GELU inside the gate's matmul."""

    def pack(self, weight: Tensor, x: Tensor) -> tuple[Tensor, ...]:
        value, gate = weight.chunk(2)
        return packed_linear(value) + packed_linear(gate)

    def plain_forward(self, x: Tensor, weight: Tensor) -> Tensor:
        value, gate = F.linear(x, weight, self.bias).chunk(2, dim=-1)
        return value * F.gelu(gate)

    def int8_forward(self, q: tuple[Tensor, float, int], packed: tuple[Tensor, ...]) -> Tensor:
        value_bias, gate_bias = self.bias.chunk(2)
        gate = int8_linear(q, packed[3:], gate_bias, "gelu")  # erf GELU
        return int8_linear(q, packed[:3], value_bias).mul_(gate)

    def dequantized(self) -> Tensor:
        return torch.cat([dequantized_linear(self.packed[:3]), dequantized_linear(self.packed[3:])])


def packed_linear(weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(oneDNN's packed int8 weight, scale per output, zero points) of a linear layer's float weight."""
    q, scale = per_channel(weight)
    return torch.ops.onednn.qlinear_prepack(q, None), scale, torch.zeros(len(scale), dtype=torch.int64)


def int8_linear(q: tuple[Tensor, float, int], packed: tuple[Tensor, ...], bias: Tensor | None,
                post_op: str = "none") -> Tensor:  # fmt: skip
    (qx, x_scale, x_zero), (weight, scale, zero) = q, packed
    return torch.ops.onednn.qlinear_pointwise(qx, x_scale, x_zero, weight, scale, zero, bias, 1.0, 0, torch.float32,
                                              post_op, [], "none")  # fmt: skip


def dequantized_linear(packed: tuple[Tensor, ...]) -> Tensor:
    weight, scale, _ = packed
    return weight.to_dense().t().float() * scale.view(-1, 1)  # oneDNN keeps it (in, out)


class Int8GEGLU(FusedGEGLU):
    """GEGLU whose `proj` (the same key) is an Int8GEGLUProjection."""

    projection = Int8GEGLUProjection


def say_unavailable(reason: str) -> None:
    logging.getLogger("ldm").warning("--quantize int8 is not available (%s); computing in float32", reason)
