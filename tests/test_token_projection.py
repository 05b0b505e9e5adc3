"""The transformers' 1x1 projections as linear layers over tokens (ldm/cpu/token_projection.py): the same numbers
and keys as SD v1's SpatialTransformer, packed or not, and a (C, C, 1, 1) weight to whoever reads it."""

import pytest
import torch
from helpers import rel_error
from torch import nn

from ldm.config import ModelConfig
from ldm.cpu.packing import PackedPointwiseConv
from ldm.cpu.swap_in import swap_in, swap_out
from ldm.cpu.token_projection import PointwiseConv, TokenProjectedTransformer
from ldm.models.unet import SpatialTransformer

CHANNELS = 64
CONTEXT = ModelConfig.preset("tiny").unet.context_dim


def transformers() -> tuple[nn.Sequential, nn.Sequential]:
    """A plain SpatialTransformer and an identical copy of it (random weights, random projection biases)."""
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny").unet
    plain = nn.Sequential(SpatialTransformer(CHANNELS, cfg)).eval()
    for conv in (plain[0].proj_in, plain[0].proj_out):
        nn.init.normal_(conv.bias)
    copy = nn.Sequential(SpatialTransformer(CHANNELS, cfg)).eval()
    copy.load_state_dict(plain.state_dict())
    return plain, copy


@pytest.mark.parametrize("pack", [False, True])
def test_the_same_numbers_and_keys_as_the_conv_projections_also_for_a_guided_batch(pack):
    """Packed, the swapped-in projections; unpacked (as when packing is unavailable), the plain linear path."""
    plain, model = transformers()
    if pack:
        swap_in(model)
    else:
        model[0] = TokenProjectedTransformer.replacing(model[0])
    assert type(model[0]) is TokenProjectedTransformer
    kind = PackedPointwiseConv if pack else PointwiseConv
    assert type(model[0].proj_in) is kind and type(model[0].proj_out) is kind
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    x, context = torch.randn(1, CHANNELS, 6, 5), torch.randn(2, 7, CONTEXT)
    with torch.inference_mode():
        for _ in range(2):  # packed on the first call, then computing from the packed copy
            ours, expected = model[0](x, context), plain[0](x, context)
            assert ours.shape == (2, CHANNELS, 6, 5)
            assert rel_error(ours, expected) <= 1e-5
    if pack:
        assert model[0].proj_in.packed is not None
        assert model[0].proj_in.weight.shape == (CHANNELS, CHANNELS, 1, 1)  # read back as the conv's weight


def test_an_edit_through_the_packed_weight_computes_and_swap_out_gives_plain_convs():
    plain, model = transformers()
    swap_in(model)
    x, context = torch.randn(2, CHANNELS, 4, 4), torch.randn(2, 3, CONTEXT)
    with torch.no_grad():
        model[0](x, context)
        model[0].proj_out.weight.mul_(-2.0)
        plain[0].proj_out.weight.mul_(-2.0)
        assert rel_error(model[0](x, context), plain[0](x, context)) <= 1e-5
    swap_out(model)
    assert type(model[0]) is SpatialTransformer and type(model[0].proj_in) is nn.Conv2d
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), plain.state_dict().values(), strict=True))


def test_a_pointwise_conv_takes_a_map_as_a_conv_and_unpacked_or_int8_layers_keep_the_conv_projections():
    conv = nn.Conv2d(8, 5, 1)
    pointwise = PointwiseConv.replacing(conv)
    x = torch.randn(2, 8, 3, 3)
    with torch.no_grad():
        assert torch.allclose(pointwise(x), conv(x), atol=1e-6)
        tokens = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        assert torch.allclose(pointwise(tokens), conv(x).flatten(2).transpose(1, 2), atol=1e-6)
        packed = PackedPointwiseConv(PointwiseConv.replacing(conv))
        for _ in range(2):  # packs on tokens, then still takes a map
            assert torch.allclose(packed(tokens), conv(x).flatten(2).transpose(1, 2), atol=1e-5)
            assert torch.allclose(packed(x), conv(x), atol=1e-5)
    for pack, int8 in ((False, False), (False, True), (True, True)):  # unpacked, a float32 linear is MKL's
        _, model = transformers()
        swap_in(model, pack=pack, int8=int8)
        assert type(model[0]) is SpatialTransformer
