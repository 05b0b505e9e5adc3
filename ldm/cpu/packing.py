"""CPU inference with weights reordered once into oneDNN's blocked layout, instead of on every call.

PyTorch hands a CPU convolution's or linear layer's weight to oneDNN in the plain layout, and oneDNN copies it
into its blocked layout on every call. For the U-Net's 1280-channel 3x3 convs at 4x4 latents that copy is 3/4
of the call. `pack_weights(model)` swaps every 3x3 Conv2d and every Linear for a layer that reorders its weight
on its first CPU call (float32 or bfloat16, no autograd) and keeps only the reordered copy: loading stays as fast,
and the first call pays the reorders and the new memory once more (the README has the figures). 1x1 convs
are left alone: packed, they were no faster; the transformers' 1x1 projections pack as the linear layers they are on
tokens (PackedPointwiseConv). A GEGLU feed-forward packs as one fused layer (FusedGEGLU).

A packed layer still answers `.weight`: reading it unpacks the layer (the dense Parameter is back, to read or
edit in place) and the next call packs again. It saves and loads its dense `weight` (`state_dict`), and `.to()`,
`.float()` and the like unpack it first, and so does `.train()`. `unpack_weights(model)` gives back plain layers.
"""

from __future__ import annotations

import functools
import logging
import threading

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ldm.cpu.heap import IDLE_BUFFERS
from ldm.cpu.looked_up import LookedUpEmbedding
from ldm.cpu.token_projection import PointwiseConv
from ldm.models.unet import GEGLU

PACKABLE_DTYPES = (torch.float32, torch.bfloat16)
# oneDNN's private ops that packed layers call; another torch build may lack some (then layers stay plain).
MKLDNN_OPS = ("_reorder_convolution_weight", "_convolution_pointwise", "_reorder_linear_weight", "_linear_pointwise",
              "_is_mkldnn_bf16_supported")  # fmt: skip
SWAPPING = threading.RLock()  # held while a layer swaps its dense and packed weights


class PackedLayer(nn.Module):
    """Holds `weight` as a Parameter until the first call that can use a packed copy, then only the copy."""

    packs_from_channels_last = False  # whether pack() is handed the dense weight channels-last (PackedConv2d)

    def __init__(self, layer: nn.Conv2d | nn.Linear):
        super().__init__()
        self.weight, self.bias = layer.weight, layer.bias
        self.packed: tuple[Tensor, ...] | None = None  # oneDNN's copy of the weight (of each row block)
        self.weight_requires_grad = layer.weight.requires_grad  # kept for the weight while only the copy exists
        # Until the first call, the weight as the file has it, and the dtype it converts to (see settle_dtype):
        # like a packed layer, the layer then lists no `weight`, and reading `weight` converts it.
        self.weight_as_read: Tensor | None = None
        self.compute_dtype: torch.dtype | None = None

    def forward(self, x: Tensor) -> Tensor:
        packed = self.packed  # this call's copy, even if another thread unpacks meanwhile
        if packed is None or not self._suits(x, packed[0]):
            with SWAPPING:  # two threads' first calls must not both pack (one would find `weight` gone)
                weight = self._prepare(x)
                packed = self.packed
            if weight is not None:
                return self.plain_forward(x, weight)
        return self.packed_forward(x, packed)

    def _prepare(self, x: Tensor) -> Tensor | None:
        """Packs or unpacks for this input; returns the dense weight when `x` must take the plain path."""
        if self.packed is not None and not self._suits(x, self.packed[0]):  # e.g. autograd wanted after all
            self.unpack()
        if self.packed is None and self.weight_as_read is not None:  # straight from the file's weight
            dense = converted_for_packing(self.weight_as_read, self.compute_dtype, self.packs_from_channels_last)
            if self._suits(x, dense):
                self.packed = self.pack(dense, x)
                self.weight_as_read = self.compute_dtype = None
                return None
        if self.packed is None:
            if not self._suits(x, self.weight):
                return self.weight
            self.weight_requires_grad = self.weight.requires_grad
            weight = self.weight.detach()
            if self.packs_from_channels_last:
                weight = converted_for_packing(weight, weight.dtype, channels_last=True)
            self.packed = self.pack(weight, x)
            del self.weight  # the dense copy is freed; `dense_weight()` rebuilds it on demand
        return None

    def _suits(self, x: Tensor, w: Tensor) -> bool:
        """Whether a packed copy of `w` can compute on `x`."""
        if w.dtype not in PACKABLE_DTYPES or x.dtype != w.dtype or x.device.type != "cpu" or w.device.type != "cpu":
            return False
        weight_grad = w.requires_grad or (w.is_mkldnn and self.weight_requires_grad)  # a packed copy has no flag
        wants_grad = weight_grad or x.requires_grad or (self.bias is not None and self.bias.requires_grad)
        if torch.is_grad_enabled() and wants_grad:
            return False  # the packed ops have no backward
        return w.dtype == torch.float32 or torch.ops.mkldnn._is_mkldnn_bf16_supported()

    def __getattr__(self, name: str):
        if name == "weight" and self.__dict__.get("packed") is not None:  # only the packed copy is left
            self.unpack()  # the dense Parameter again, so what the caller reads or edits is what computes
        elif name == "weight" and self.__dict__.get("weight_as_read") is not None:
            self._convert_weight()
        return super().__getattr__(name)

    def keep_as_read(self, dtype: torch.dtype) -> None:
        """Hold the weight as it is (the file's pages) until it is needed, then convert it to `dtype` once."""
        weight = self._parameters.pop("weight")
        self.weight_as_read, self.compute_dtype = weight.detach(), dtype

    def _convert_weight(self) -> None:
        """The dense Parameter, in the dtype the layer computes in, from the weight as read (then let go)."""
        with SWAPPING:
            if self.weight_as_read is not None:
                weight = self.weight_as_read.to(self.compute_dtype)
                self.weight_as_read = self.compute_dtype = None
                self.weight = nn.Parameter(weight, requires_grad=self.weight_requires_grad)

    def dense_weight(self) -> Tensor:
        if self.packed is None:
            return self.weight
        return torch.cat([p.to_dense() for p in self.packed]) if len(self.packed) > 1 else self.packed[0].to_dense()

    def unpack(self) -> None:
        with SWAPPING:
            if self.packed is not None:
                dense = self.dense_weight()
                self.packed = None  # first: registering `weight` asks whether the layer has one
                self.weight = nn.Parameter(dense, requires_grad=self.weight_requires_grad)

    def train(self, mode: bool = True) -> PackedLayer:  # training wants the dense weight as a Parameter again
        if mode:
            self.unpack()
        return super().train(mode)

    def _apply(self, fn, recurse=True):  # .to(), .float(), .cuda(): act on the dense weight, repack when next called
        self.unpack()
        self._convert_weight()
        return super()._apply(fn, recurse)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        if self.packed is not None:  # first, as a plain layer lists it
            destination[prefix + "weight"] = self.dense_weight()
        elif self.weight_as_read is not None:  # converted for the caller; the layer still waits for its call
            destination[prefix + "weight"] = self.weight_as_read.to(self.compute_dtype)
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self.unpack()
        self._convert_weight()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class PackedConv2d(PackedLayer):
    # oneDNN reorders a channels-last (o, h, w, i) weight into its blocked layout faster than a plain one, into
    # the same packed copy: the first image pays that reorder for every conv.
    packs_from_channels_last = True

    def __init__(self, conv: nn.Conv2d):
        super().__init__(conv)
        self.stride, self.padding, self.dilation = list(conv.stride), list(conv.padding), list(conv.dilation)

    def pack(self, weight: Tensor, x: Tensor) -> tuple[Tensor]:
        # The layout oneDNN picks depends on the input's shape; another shape later still computes, reordered.
        return (torch.ops.mkldnn._reorder_convolution_weight(weight, self.padding, self.stride, self.dilation, 1,
                                                             list(x.shape)),)  # fmt: skip

    def plain_forward(self, x: Tensor, weight: Tensor) -> Tensor:
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation)

    def packed_forward(self, x: Tensor, packed: tuple[Tensor, ...]) -> Tensor:
        return torch.ops.mkldnn._convolution_pointwise(
            x, packed[0], self.bias, self.padding, self.stride, self.dilation, 1, "none", [], ""
        )

    def to_plain(self) -> nn.Conv2d:
        weight = self.dense_weight()
        conv = nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[2:], self.stride, self.padding,
                         self.dilation, bias=self.bias is not None, device="meta")  # fmt: skip
        conv.weight, conv.bias = nn.Parameter(weight, weight.requires_grad), self.bias
        return conv


class PackedLinear(PackedLayer):
    def pack(self, weight: Tensor, x: Tensor) -> tuple[Tensor]:
        return (torch.ops.mkldnn._reorder_linear_weight(weight),)

    def plain_forward(self, x: Tensor, weight: Tensor) -> Tensor:
        return F.linear(x, weight, self.bias)

    def packed_forward(self, x: Tensor, packed: tuple[Tensor, ...]) -> Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, packed[0], self.bias, "none", [], "")

    def to_plain(self) -> nn.Linear:
        weight = self.dense_weight()
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=self.bias is not None, device="meta")
        linear.weight, linear.bias = nn.Parameter(weight, weight.requires_grad), self.bias
        return linear


class PackedPointwiseConv(PackedLinear):
    """A PointwiseConv (ldm/cpu/token_projection.py) packed as the linear layer it computes on tokens; its weight
    stays (C_out, C_in, 1, 1) to anyone who reads it."""

    def pack(self, weight: Tensor, x: Tensor) -> tuple[Tensor]:
        return (torch.ops.mkldnn._reorder_linear_weight(weight.flatten(1)),)

    def plain_forward(self, x: Tensor, weight: Tensor) -> Tensor:
        return F.conv2d(x, weight, self.bias) if x.dim() == 4 else F.linear(x, weight.flatten(1), self.bias)

    def packed_forward(self, x: Tensor, packed: tuple[Tensor, ...]) -> Tensor:
        if x.dim() == 4:  # a map, not tokens
            return self.plain_forward(x, self.dense_weight())
        return super().packed_forward(x, packed)

    def dense_weight(self) -> Tensor:
        weight = super().dense_weight()
        return weight.view(*weight.shape, 1, 1) if weight.dim() == 2 else weight

    def to_plain(self) -> PointwiseConv:
        weight = self.dense_weight()
        with torch.device("meta"):
            conv = PointwiseConv(weight.shape[1], weight.shape[0], 1, bias=self.bias is not None)
        conv.weight, conv.bias = nn.Parameter(weight, weight.requires_grad), self.bias
        return conv


class PackedGEGLU(PackedLinear):
    """A GEGLU's projection, rows [value; gate], returning value * gelu(gate) itself: the GELU and the product run
    inside the two matmuls (oneDNN post-ops), with no (tokens, 2 x inner) intermediate."""

    def pack(self, weight: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        return tuple(torch.ops.mkldnn._reorder_linear_weight(half.contiguous()) for half in weight.chunk(2))

    def plain_forward(self, x: Tensor, weight: Tensor) -> Tensor:
        value, gate = F.linear(x, weight, self.bias).chunk(2, dim=-1)
        return value * F.gelu(gate)

    def packed_forward(self, x: Tensor, packed: tuple[Tensor, ...]) -> Tensor:
        (value_weight, gate_weight), (value_bias, gate_bias) = packed, self.bias.chunk(2)
        gate = torch.ops.mkldnn._linear_pointwise(x, gate_weight, gate_bias, "gelu", [], "none")  # erf GELU
        return torch.ops.mkldnn._linear_pointwise.binary(x, gate, value_weight, value_bias, "mul")


class FusedGEGLU(GEGLU):
    """GEGLU whose `proj` (the same key) is a PackedGEGLU: the projection computes value * gelu(gate) itself."""

    projection: type[PackedLinear] = PackedGEGLU

    @classmethod
    def replacing(cls, plain: GEGLU) -> FusedGEGLU:
        with torch.device("meta"):
            fused = cls(plain.proj.in_features, plain.proj.out_features // 2)
        fused.proj = cls.projection(plain.proj)
        return fused

    def plain(self) -> GEGLU:
        proj = self.proj.to_plain()
        with torch.device("meta"):
            plain = GEGLU(proj.in_features, proj.out_features // 2)
        plain.proj = proj
        return plain

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


def converted_for_packing(weight: Tensor, dtype: torch.dtype, channels_last: bool = False) -> Tensor:
    """`weight` in `dtype` (a 4-D one channels-last if asked), in one scratch buffer reused for every layer that
    packs (under SWAPPING): the packed copy is oneDNN's own, so the dense one is needed only for the reorder, and
    fresh memory for each would be paged in (zero-filled by the kernel) and handed back again, layer after layer."""
    global _scratch
    if _scratch is None or _scratch.numel() < weight.numel() or _scratch.dtype != dtype:
        _scratch = None
        with torch.inference_mode(False):  # a normal tensor, so calls outside inference mode may write it too
            _scratch = torch.empty(weight.numel(), dtype=dtype)
    scratch = _scratch[: weight.numel()]
    if channels_last and weight.dim() == 4:
        out_channels, in_channels, height, width = weight.shape
        return scratch.view(out_channels, height, width, in_channels).permute(0, 3, 1, 2).copy_(weight)
    return scratch.view(weight.shape).copy_(weight)


def drop_scratch() -> None:
    """Let the scratch buffer of converted_for_packing go (with the heap's free pages, after sampling)."""
    global _scratch
    _scratch = None


_scratch: Tensor | None = None
IDLE_BUFFERS.append(drop_scratch)


def _packable(layer: nn.Module) -> bool:
    if isinstance(layer, nn.Linear):
        return True
    return (
        isinstance(layer, nn.Conv2d)
        and layer.kernel_size == (3, 3)
        and layer.groups == 1
        and layer.padding_mode == "zeros"
        and not isinstance(layer.padding, str)
    )


@functools.cache
def packing_available() -> bool:
    """Whether this torch has oneDNN and every op a packed layer calls; says once in the log when not."""
    missing = [op for op in MKLDNN_OPS if not _has_mkldnn_op(op)] if torch.backends.mkldnn.is_available() else ["all"]
    if missing:
        logging.getLogger("ldm").info("CPU layers stay unpacked: this torch lacks oneDNN ops (%s)", ", ".join(missing))
    return not missing


def _has_mkldnn_op(name: str) -> bool:
    try:
        getattr(torch.ops.mkldnn, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def pack_weights(model: nn.Module) -> nn.Module:
    """Swap `model`'s 3x3 convs, linear layers and GEGLUs for packed ones, in place (no weight is copied yet)."""
    if not packing_available():
        return model
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is GEGLU:
                setattr(parent, name, FusedGEGLU.replacing(child))
            elif type(child) is PointwiseConv:
                setattr(parent, name, PackedPointwiseConv(child))
            elif type(child) in (nn.Conv2d, nn.Linear) and _packable(child):
                packed = PackedConv2d(child) if isinstance(child, nn.Conv2d) else PackedLinear(child)
                setattr(parent, name, packed)
    return model


def settle_dtype(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Every floating tensor of `model` in `dtype`, in place, except the weights of packed layers that have not
    packed yet: those stay as the file has them until the layer packs (or anyone reads them), then convert once.
    Nothing is converted twice, and a float16 file's float32 copy never exists whole beside the packed one."""
    for module in model.modules():
        for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            if not tensor.is_floating_point() or tensor.dtype == dtype:
                continue
            if isinstance(module, PackedLayer) and name == "weight" and module.packed is None:
                module.keep_as_read(dtype)
            elif isinstance(module, LookedUpEmbedding) and name == "weight":
                module.keep_as_read(dtype)  # only the rows a lookup reads enter memory
            elif isinstance(tensor, nn.Parameter):
                setattr(module, name, nn.Parameter(tensor.detach().to(dtype), requires_grad=tensor.requires_grad))
            else:
                setattr(module, name, tensor.to(dtype))
    return model


def unpack_weights(model: nn.Module) -> nn.Module:
    """Plain nn.Conv2d / nn.Linear layers and GEGLUs again, with dense weights, in place."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, FusedGEGLU):
                setattr(parent, name, child.plain())
            elif isinstance(child, PackedLayer):
                setattr(parent, name, child.to_plain())
    return model
