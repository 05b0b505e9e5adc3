"""Upsampling, plain and folded from 16x16 inputs up (ldm/cpu/folded.py), against diffusers' Upsample2D."""

import pytest
import torch
from diffusers.models.upsampling import Upsample2D

from ldm.cpu import folded
from ldm.cpu.folded import FOLD_FROM_AREA, FoldedUpsample, folded_kernels
from ldm.cpu.packing import PackedLayer, pack_weights
from ldm.models.layers import Upsample


def reference(channels: int, ours: Upsample) -> Upsample2D:
    theirs = Upsample2D(channels, use_conv=True)
    theirs.conv.load_state_dict(ours.conv.state_dict())
    return theirs


@pytest.mark.parametrize("shape", [(1, 8, 16, 16), (2, 4, 13, 21), (3, 6, 1, 1), (1, 4, 5, 7)])
@pytest.mark.parametrize("packed", [False, True], ids=["plain", "packed"])
def test_upsample_matches_upsampling_then_conv_folded_or_not(shape, packed, monkeypatch):
    folds = []
    monkeypatch.setattr(folded, "folded_kernels", lambda conv: folds.append(conv) or folded_kernels(conv))
    torch.manual_seed(0)
    ours = FoldedUpsample.replacing(Upsample(shape[1]))
    theirs = reference(shape[1], ours)
    if packed:
        pack_weights(ours)
        assert isinstance(ours.conv, PackedLayer)
    x = torch.randn(shape)
    with torch.no_grad():
        mine, expected = ours(x), theirs(x)
    assert len(folds) == (shape[2] * shape[3] >= FOLD_FROM_AREA)
    assert mine.shape == expected.shape == (shape[0], shape[1], 2 * shape[2], 2 * shape[3])
    assert ((mine - expected).abs().max() / expected.abs().max()).item() < 1e-6


def test_new_weights_fold_again_and_bfloat16_computes_in_bfloat16():
    torch.manual_seed(1)
    ours = FoldedUpsample.replacing(Upsample(4))
    x = torch.randn(1, 4, 16, 16)
    with torch.no_grad():
        first = ours(x)
        ours.conv.weight.mul_(2)  # in place: the folded kernels must follow
        theirs = reference(4, ours)
        assert torch.allclose(ours(x), theirs(x), atol=1e-5) and not torch.allclose(ours(x), first, atol=1e-3)
        ours.bfloat16(), theirs.bfloat16()
        mine, expected = ours(x.bfloat16()), theirs(x.bfloat16())
    assert mine.dtype == torch.bfloat16
    assert ((mine.float() - expected.float()).abs().max() / expected.float().abs().max()).item() < 2e-2


def test_with_autograd_it_upsamples_then_convolves_and_gradients_flow():
    torch.manual_seed(2)
    ours = FoldedUpsample.replacing(Upsample(4))
    x = torch.randn(1, 4, 16, 16, requires_grad=True)
    ours(x).square().sum().backward()
    theirs = reference(4, ours)
    x2 = x.detach().clone().requires_grad_()
    theirs(x2).square().sum().backward()
    assert torch.allclose(x.grad, x2.grad, atol=1e-5)
    assert torch.allclose(ours.conv.weight.grad, theirs.conv.weight.grad, atol=1e-4)
