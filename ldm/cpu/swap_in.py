"""The one call that fits a model's modules for fast CPU inference, and the one that takes them out again.

The model files (ldm/models/) read like the CompVis code; the tricks live here as modules with the same
children, so the same state-dict keys: folded upsampling (ldm/cpu/folded.py; TAESD's upsample-and-conv pairs
too), VAE ResnetBlocks in bands of rows (ldm/cpu/banded.py), with `pack`, weights reordered for oneDNN and
fused GEGLUs (ldm/cpu/packing.py), and with `int8`, 8-bit weights (ldm/cpu/int8.py); embedding tables that
can stay as the file has them (ldm/cpu/looked_up.py); the U-Net's attention in blocks of scores on oneDNN's matmuls
(ldm/cpu/blocked_attention.py); its transformers' 1x1 projections as linear layers (ldm/cpu/token_projection.py).
"""

from __future__ import annotations

from torch import nn

from ldm.cpu.banded import BandedResnetBlock
from ldm.cpu.blocked_attention import BlockedAttention
from ldm.cpu.folded import FoldedUpsample, FoldingSequential, folds_pairs
from ldm.cpu.int8 import quantize_weights
from ldm.cpu.looked_up import LookedUpEmbedding
from ldm.cpu.packing import pack_weights, packing_available, unpack_weights
from ldm.cpu.token_projection import TokenProjectedTransformer
from ldm.models.layers import Upsample
from ldm.models.unet import CrossAttention, SpatialTransformer
from ldm.models.vae import ResnetBlock

SWAPS = {Upsample: FoldedUpsample, ResnetBlock: BandedResnetBlock, nn.Embedding: LookedUpEmbedding,
         CrossAttention: BlockedAttention, SpatialTransformer: TokenProjectedTransformer}  # fmt: skip


def swap_in(model: nn.Module, *, pack: bool = True, int8: bool = False) -> nn.Module:
    """Replace `model`'s modules by their faster equals, in place; `pack` also packs weights (a CPU without
    offload: the packed copies live in CPU memory); `int8` quantizes its convs and linear layers first
    (ldm/cpu/int8.py), and the layers left float pack."""
    # The projections as linear layers only where they pack: unpacked, a float32 linear is MKL's (ldm/cpu/features.py);
    # int8 quantizes them as convs.
    projected = pack and not int8 and packing_available()
    swaps = {k: v for k, v in SWAPS.items() if projected or v is not TokenProjectedTransformer}
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) in swaps:
                setattr(parent, name, swaps[type(child)].replacing(child))
            elif folds_pairs(child):
                setattr(parent, name, FoldingSequential.replacing(child))
    if int8:
        quantize_weights(model)
    if pack or int8:
        pack_weights(model)
    return model


def swap_out(model: nn.Module) -> nn.Module:
    """The plain modules of ldm/models/ again (torch.compile wants them), in place."""
    unpack_weights(model)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, (FoldedUpsample, BandedResnetBlock, FoldingSequential, LookedUpEmbedding,
                                  BlockedAttention, TokenProjectedTransformer)):  # fmt: skip
                setattr(parent, name, child.plain())
    return model
