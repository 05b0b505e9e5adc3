"""Layers whose weights are packed for oneDNN on first use: same numbers, same state dict, still convertible."""

import logging

import pytest
import torch
from helpers import rel_error
from torch import nn

from ldm.cpu import packing
from ldm.cpu.heap import release_free_memory
from ldm.cpu.looked_up import LookedUpEmbedding
from ldm.cpu.packing import (
    FusedGEGLU,
    PackedConv2d,
    PackedGEGLU,
    PackedLayer,
    PackedLinear,
    pack_weights,
    settle_dtype,
    unpack_weights,
)
from ldm.cpu.swap_in import swap_in, swap_out
from ldm.models.unet import GEGLU


def small_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.Conv2d(16, 16, 3, stride=2, padding=1),  # a downsampler
        nn.Conv2d(16, 8, 1),  # 1x1: left plain
        nn.Flatten(1),
        nn.Linear(8 * 4 * 4, 32),
        nn.Linear(32, 5, bias=False),
    ).eval()


def test_only_3x3_convs_and_linears_are_swapped_and_nothing_is_copied_until_called():
    model = pack_weights(small_model())
    assert [type(m) for m in model] == [PackedConv2d, PackedConv2d, nn.Conv2d, nn.Flatten, PackedLinear, PackedLinear]
    assert all(m.packed is None and isinstance(m.weight, nn.Parameter) for m in model if isinstance(m, PackedLayer))


def test_first_call_packs_and_keeps_the_numbers():
    plain, packed = small_model(), pack_weights(small_model())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = plain(x)
        assert rel_error(packed(x), expected) <= 1e-6
        assert rel_error(packed(x * 2), plain(x * 2)) <= 1e-6  # the packed copy is reused
        other_size = torch.randn(1, 3, 24, 16)  # packed for 8x8 inputs; other shapes still compute
        assert rel_error(packed[:2](other_size), plain[:2](other_size)) <= 1e-6
    layers = [m for m in packed if isinstance(m, PackedLayer)]
    assert all(m.packed is not None and "weight" not in m._parameters for m in layers)  # the dense copy is gone


def test_a_packed_model_saves_and_loads_its_dense_weights():
    plain, packed = small_model(), pack_weights(small_model())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        packed(x)
    saved = packed.state_dict()
    assert list(saved) == list(plain.state_dict())
    for key, value in plain.state_dict().items():
        assert saved[key].layout == torch.strided and torch.equal(saved[key], value), key
    other = small_model()
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(-1)
        packed.load_state_dict(other.state_dict())
        assert rel_error(packed(x), other(x)) <= 1e-6


def test_casting_unpacks_and_the_next_call_packs_again():
    plain, packed = small_model(), pack_weights(small_model())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        packed(x)
        assert rel_error(packed.double()(x.double()), plain.double()(x.double())) <= 1e-12  # float64: plain path
        assert all(m.packed is None for m in packed if isinstance(m, PackedLayer))
        packed.float(), plain.float()
        assert rel_error(packed(x), plain(x)) <= 1e-6
        assert all(m.packed is not None for m in packed if isinstance(m, PackedLayer))


def test_training_runs_the_plain_layers_and_gets_gradients():
    packed = pack_weights(small_model()).requires_grad_(True)
    packed(torch.randn(2, 3, 8, 8)).square().sum().backward()
    assert all(m.packed is None and m.weight.grad is not None for m in packed if isinstance(m, PackedLayer))


def test_train_mode_gives_the_optimizer_its_weights_back():
    packed = pack_weights(small_model())
    with torch.no_grad():
        packed(torch.randn(2, 3, 8, 8))
    names = {name for name, _ in packed.train().requires_grad_(True).named_parameters()}
    assert names == {name for name, _ in small_model().named_parameters()}


def test_a_gradient_through_a_packed_model_unpacks_it():
    plain, packed = small_model(), pack_weights(small_model())
    with torch.no_grad():
        packed(torch.randn(2, 3, 8, 8))
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    packed(x).sum().backward()  # guidance by gradient of the input, say
    expected = torch.autograd.grad(plain(x).sum(), x)[0]
    assert rel_error(x.grad, expected) <= 1e-6


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="this CPU has no native bfloat16")
def test_bfloat16_packs_too():
    plain, packed = small_model().bfloat16(), pack_weights(small_model()).bfloat16()
    x = torch.randn(2, 3, 8, 8, dtype=torch.bfloat16)
    with torch.no_grad():
        assert rel_error(packed(x), plain(x)) <= 1e-2
    assert all(
        m.packed is not None and m.packed[0].dtype == torch.bfloat16 for m in packed if isinstance(m, PackedLayer)
    )


def test_weights_as_read_convert_once_when_their_layer_packs_and_everything_else_at_once():
    """settle_dtype: a float16 model to compute in float32. A packed layer's weight stays float16 until the layer
    packs (one conversion, straight into the packed copy); the rest converts now; nothing reads as float16."""
    plain = small_model()
    packed = settle_dtype(pack_weights(small_model().half()), torch.float32)
    expected = small_model().half().float()  # the same float16 values, in float32
    layers = [m for m in packed if isinstance(m, PackedLayer)]
    assert all(m.weight_as_read.dtype == torch.float16 and "weight" not in m._parameters for m in layers)
    assert packed[2].weight.dtype == torch.float32  # the 1x1 conv: not packed, converted now
    assert {v.dtype for v in packed.state_dict().values()} == {torch.float32}
    for mine, theirs in zip(packed.state_dict().values(), expected.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs)
    packed = settle_dtype(pack_weights(small_model().half()), torch.float32)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(packed(x), pack_weights(expected)(x)) and rel_error(packed(x), plain(x)) <= 1e-2
    layers = [m for m in packed if isinstance(m, PackedLayer)]
    assert all(m.packed[0].dtype == torch.float32 and "weight" not in m._parameters for m in layers)
    assert packing._scratch is not None  # each converted into the one buffer (the equal outputs: none aliases it)
    release_free_memory()
    assert packing._scratch is None
    assert packed[0].weight.dtype == torch.float32  # reading it back: the float32 weight


def test_a_conv_packs_from_a_channels_last_copy_into_the_same_packed_weight():
    """PackedConv2d hands oneDNN its weight channels-last (a faster reorder): the packed copy is the same one a
    plain weight gives, from a float32 weight or a float16 one as read, and the layer's numbers are unchanged."""
    torch.manual_seed(0)
    conv = nn.Conv2d(24, 40, 3, padding=1).eval()
    x = torch.randn(2, 24, 8, 8)
    direct = torch.ops.mkldnn._reorder_convolution_weight(
        conv.weight.detach(), [1, 1], [1, 1], [1, 1], 1, [2, 24, 8, 8]
    )
    from_dense = PackedConv2d(conv)
    from_half = settle_dtype(nn.Sequential(PackedConv2d(nn.Conv2d(24, 40, 3, padding=1).half())), torch.float32)[0]
    from_half.weight_as_read.copy_(conv.weight.detach().half())
    with torch.no_grad():
        assert torch.equal(from_dense(x), torch.ops.mkldnn._convolution_pointwise(
            x, direct, conv.bias, [1, 1], [1, 1], [1, 1], 1, "none", [], ""))  # fmt: skip
        from_half(x)
    assert torch.equal(from_dense.packed[0].to_dense(), direct.to_dense())
    assert torch.equal(from_half.packed[0].to_dense(), conv.weight.detach().half().float())
    assert torch.equal(from_dense.weight, conv.weight)  # unpacked again: the plain weight, in its plain layout
    assert from_dense.weight.is_contiguous()


def test_the_scratch_buffer_made_in_inference_mode_serves_a_pack_outside_it():
    release_free_memory()  # no scratch buffer yet
    first, second = pack_weights(small_model()), pack_weights(small_model())
    x = torch.randn(2, 3, 8, 8)
    with torch.inference_mode():
        expected = first(x)
    with torch.no_grad():
        assert torch.equal(second(x), expected)


def test_an_embedding_table_as_read_converts_only_the_rows_looked_up():
    torch.manual_seed(0)
    table = nn.Embedding(50, 8).half().requires_grad_(False)
    model = settle_dtype(swap_in(nn.Sequential(nn.Embedding(50, 8, _weight=table.weight.clone()))), torch.float32)
    assert isinstance(model[0], LookedUpEmbedding) and model[0].table_as_read.dtype == torch.float16
    assert list(model.named_parameters()) == [] and model.state_dict()["0.weight"].dtype == torch.float32
    ids = torch.tensor([[3, 7, 7, 49]])
    out = model(ids)
    assert out.dtype == torch.float32 and torch.equal(out, table.weight.float()[ids])
    assert model[0].table_as_read is not None  # still as read: a lookup converts its rows only
    assert torch.equal(model[0].weight, table.weight.float()) and model[0].table_as_read is None
    swap_out(model)
    assert type(model[0]) is nn.Embedding and torch.equal(model(ids), out)


def test_unpack_gives_back_plain_layers_with_the_same_weights():
    plain, packed = small_model(), pack_weights(small_model())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        packed(x)
        unpack_weights(packed)
        assert [type(m) for m in packed] == [type(m) for m in plain]
        assert torch.equal(packed(x), plain(x))


def test_a_geglu_packs_as_one_fused_module_with_the_same_keys_and_unpacks_to_a_plain_one():
    torch.manual_seed(0)
    plain = nn.Sequential(GEGLU(16, 24)).eval()
    packed = pack_weights(nn.Sequential(GEGLU(16, 24)).eval())
    packed.load_state_dict(plain.state_dict())
    assert isinstance(packed[0], FusedGEGLU) and isinstance(packed[0].proj, PackedGEGLU)
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        assert rel_error(packed(x), plain(x)) <= 1e-6
        assert len(packed[0].proj.packed) == 2  # value and gate rows, each packed
    assert torch.equal(packed.state_dict()["0.proj.weight"], plain.state_dict()["0.proj.weight"])
    assert rel_error(packed(x), plain(x)) <= 1e-6  # with autograd on: the plain path, same numbers
    unpack_weights(packed)
    assert type(packed[0]) is GEGLU and type(packed[0].proj) is nn.Linear
    with torch.no_grad():
        assert rel_error(packed(x), plain(x)) <= 1e-6


def test_a_packed_layer_answers_weight_and_an_edit_through_it_computes():
    """Reading `.weight` of a packed layer gives the dense Parameter back (the layer unpacks); an in-place edit
    is what the next call computes with, and that call packs again."""
    torch.manual_seed(0)
    plain, packed = small_model(), pack_weights(small_model())
    packed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        packed(x)
        assert all(m.packed is not None for m in packed if isinstance(m, PackedLayer))
        for mine, theirs in zip(packed, plain, strict=True):
            if isinstance(theirs, (nn.Conv2d, nn.Linear)):
                assert isinstance(mine.weight, nn.Parameter) and torch.equal(mine.weight, theirs.weight)
                mine.weight.mul_(1.5)
                theirs.weight.mul_(1.5)
        assert {"0.weight", "2.weight"} <= {name for name, _ in packed.named_parameters()}
        assert rel_error(packed(x), plain(x)) <= 1e-5
        assert all(m.packed is not None for m in packed if isinstance(m, PackedLayer))  # packed again


@pytest.mark.parametrize("frozen", ["weight", "nothing", "no bias"])
def test_gradients_wanted_after_packing_are_computed(frozen):
    """The packed ops have no backward: a layer packed under no_grad, then called with autograd, computes plainly
    and gives every parameter that wants one its gradient (the weight's flag survives packing)."""
    layer = pack_weights(nn.Sequential(nn.Linear(8, 4, bias=frozen != "no bias")))
    if frozen == "weight":
        layer[0].weight.requires_grad_(False)
    x = torch.randn(3, 8)
    with torch.no_grad():
        layer(x)  # packs
    assert layer[0].packed is not None
    layer(x).sum().backward()
    if frozen != "no bias":
        assert torch.equal(layer[0].bias.grad, torch.full((4,), 3.0))
    if frozen != "weight":
        assert torch.allclose(layer[0].weight.grad, x.sum(0).expand(4, 8))
    else:
        assert layer[0].weight.grad is None and not layer[0].weight.requires_grad


def test_threads_first_calls_pack_once_and_all_compute():
    """Two threads calling a fresh layer at once: without the lock, one could find `weight` already deleted."""
    import threading

    torch.manual_seed(0)
    errors, outputs = [], []
    for _ in range(20):
        plain = nn.Linear(256, 256)
        packed = pack_weights(nn.Sequential(nn.Linear(256, 256)))
        packed.load_state_dict({"0." + k: v for k, v in plain.state_dict().items()})
        x = torch.randn(64, 256)
        expected, start = plain(x).detach(), threading.Barrier(4)

        def call(packed=packed, x=x, expected=expected, start=start):
            start.wait()
            try:
                with torch.no_grad():
                    outputs.append(rel_error(packed(x), expected))
            except Exception as error:  # reported below
                errors.append(repr(error))

        threads = [threading.Thread(target=call) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors
    assert len(outputs) == 80 and max(outputs) <= 1e-6


def test_a_torch_without_the_onednn_ops_keeps_plain_layers_and_says_so_once(monkeypatch, caplog):
    from ldm.cpu import packing

    monkeypatch.setattr(packing, "_has_mkldnn_op", lambda name: name != "_linear_pointwise")
    packing.packing_available.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger="ldm"):
            model = pack_weights(small_model())
            pack_weights(small_model())
        assert not any(isinstance(m, PackedLayer) for m in model.modules())
        [record] = caplog.records
        assert "stay unpacked" in record.message and "_linear_pointwise" in record.message
    finally:
        packing.packing_available.cache_clear()
