"""8-bit weights on a CPU (ldm/cpu/int8.py): each layer computes exactly the quantized arithmetic it claims (the
reference: the same quantization dequantized, in float64), the U-Net stays close to float32, a float16 file is
quantized from its own pages, weights stay editable, and it is refused or falls back where it cannot apply."""

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import E2E, random_model, rel_error
from torch import nn

from ldm import Pipeline
from ldm.checkpoints.convert import write_single_file
from ldm.cpu.int8 import (
    Int8Conv2d,
    Int8GEGLU,
    Int8Layer,
    Int8Linear,
    int8_available,
    per_channel,
    quantize_weights,
    quantized_input,
)
from ldm.cpu.packing import PackedConv2d, unpack_weights
from ldm.cpu.swap_in import swap_in
from ldm.errors import ConfigError
from ldm.models.unet import GEGLU, UNetModel

needs_int8 = pytest.mark.skipif(int8_available() is not None, reason=f"int8 kernels: {int8_available()}")


def fake_quantized(x: torch.Tensor) -> torch.Tensor:
    """What an int8 layer sees of its input: x quantized to uint8 over its own range, and back, in float64."""
    q, scale, zero = quantized_input(x)
    return (q.double() - zero) * scale


def dequantized(weight: torch.Tensor) -> torch.Tensor:
    q, scale = per_channel(weight)
    return q.double() * scale.double().view(-1, *[1] * (weight.dim() - 1))


def test_per_channel_quantization_is_within_half_a_step_and_a_round_trip_gives_the_same_int8():
    weight = torch.randn(24, 16, 3, 3) * torch.linspace(0.01, 2, 24).view(-1, 1, 1, 1)
    weight[5] = 0  # an all-zero row
    q, scale = per_channel(weight)
    assert q.dtype == torch.int8 and q.abs().max() == 127 and scale[5] == 1 and not q[5].any()
    step = scale.view(-1, 1, 1, 1)
    assert ((weight - q.float() * step).abs() <= step / 2 + 1e-7).all()
    again, scale_again = per_channel(q.float() * step)
    assert torch.equal(again, q) and torch.allclose(scale_again, scale, rtol=1e-6)


@needs_int8
@pytest.mark.parametrize(
    "layer",
    [
        nn.Conv2d(32, 48, 3, padding=1),
        nn.Conv2d(32, 48, 3, stride=2, padding=1),
        nn.Conv2d(32, 48, 1),
        nn.Linear(32, 48),
    ],  # fmt: skip
    ids=["3x3", "3x3 stride 2", "1x1", "linear"],
)
def test_an_int8_layer_computes_the_quantized_arithmetic_exactly(layer):
    torch.manual_seed(0)
    x = torch.randn(2, 32, 12, 12) + 0.5 if isinstance(layer, nn.Conv2d) else torch.randn(2, 7, 32) + 0.5
    model = quantize_weights(nn.Sequential(layer))
    assert isinstance(model[0], Int8Layer)
    conv = F.conv2d if isinstance(layer, nn.Conv2d) else None
    with torch.no_grad():
        plain = layer(x) if conv is None else conv(x, layer.weight, layer.bias, layer.stride, layer.padding)
        weight, bias = dequantized(layer.weight), layer.bias.double()
        if conv is None:
            expected = F.linear(fake_quantized(x), weight, bias)
        else:
            expected = conv(fake_quantized(x), weight, bias, layer.stride, layer.padding)
        out = model(x)
        assert out.dtype == torch.float32 and model[0].packed[0].dtype == torch.int8
        assert rel_error(out, expected) <= 1e-5
        assert 1e-4 < rel_error(out, plain) <= 0.02  # int8, and close to float32
        if conv is not None:  # channels-last input (what the int8 convs return) computes the same
            assert rel_error(model(x.contiguous(memory_format=torch.channels_last)), out) <= 1e-6


@needs_int8
def test_an_int8_geglu_quantizes_its_input_once_for_both_halves():
    torch.manual_seed(0)
    plain = GEGLU(32, 40)
    model = quantize_weights(nn.Sequential(plain))
    assert isinstance(model[0], Int8GEGLU)
    x = torch.randn(2, 9, 32)
    with torch.no_grad():
        value, gate = F.linear(fake_quantized(x), dequantized(plain.proj.weight), plain.proj.bias.double()).chunk(2, -1)
        out = model(x)
    assert rel_error(out, value * F.gelu(gate)) <= 1e-5
    assert list(model.state_dict()) == ["0.proj.weight", "0.proj.bias"]
    unpack_weights(model)
    assert type(model[0]) is GEGLU and torch.allclose(model[0].proj.weight, dequantized(plain.proj.weight).float())


@needs_int8
def test_reading_weight_gives_the_dequantized_weight_and_an_edit_computes():
    torch.manual_seed(0)
    layer = nn.Linear(32, 24)
    original = layer.weight.detach().clone()
    model = quantize_weights(nn.Sequential(layer))
    x = torch.randn(5, 32)
    with torch.no_grad():
        first = model(x)
        weight = model[0].weight  # unpacks: the float32 weight the int8 one stands for
        assert torch.allclose(weight, dequantized(original).float())
        assert torch.equal(model(x), first)  # packed again from it: the same int8 weights
        model[0].weight.add_(0.1)
        edited = model(x)
    assert rel_error(edited, F.linear(fake_quantized(x), dequantized(dequantized(original).float() + 0.1),
                                      layer.bias.double())) <= 1e-5  # fmt: skip


def test_only_convs_and_linears_with_enough_channels_quantize():
    with torch.device("meta"):
        unet = UNetModel(E2E.unet)
    swap_in(unet, int8=True)
    # The first and last convs (4 latent channels) stay float, packed as usual.
    assert type(unet.input_blocks[0][0]) is PackedConv2d and type(unet.out[2]) is PackedConv2d
    layers = [m for m in unet.modules() if isinstance(m, (nn.Conv2d, nn.Linear, PackedConv2d, Int8Linear))]
    assert sum(isinstance(m, Int8Layer) for m in layers) == len(layers) - 2
    assert any(isinstance(m, Int8Conv2d) for m in layers) and any(isinstance(m, Int8GEGLU) for m in unet.modules())


@pytest.fixture(scope="module")
def half_file(tmp_path_factory):
    tensors = {k: v.half() if v.is_floating_point() else v for k, v in random_model(E2E, seed=3).items()}
    return write_single_file(tensors, tmp_path_factory.mktemp("int8") / "half.safetensors", E2E)


SETTINGS = dict(prompt="a red cube", steps=4, sampler="euler", width=64, height=64, seed=5, progress=False)


@needs_int8
def test_a_float16_file_quantizes_from_its_own_pages_and_the_image_stays_close(half_file):
    fp32, int8 = Pipeline.load(half_file), Pipeline.load(half_file, quantize="int8")
    layers = [m for m in int8.model.unet.modules() if isinstance(m, Int8Layer)]
    assert layers and all(m.weight_as_read.dtype == torch.float16 for m in layers)  # not converted at load
    expected, image = (np.asarray(p(**SETTINGS)[0], dtype=float) for p in (fp32, int8))
    assert all(m.packed is not None and m.packed[0].dtype == torch.int8 for m in layers)
    assert 0 < np.abs(image - expected).mean() <= 4  # out of 255
    with int8.edit_weights("unet") as weights:  # an edit (what a LoRA does) reaches the int8 weights
        weights["out.2.weight"].mul_(0.5)
        weights["input_blocks.1.0.in_layers.2.weight"].mul_(0.5)
    assert np.abs(np.asarray(int8(**SETTINGS)[0], dtype=float) - image).mean() > 1


def test_int8_is_refused_where_it_cannot_apply(half_file):
    for kwargs, message in [({"quantize": "int4"}, "int8"), ({"quantize": "int8", "dtype": torch.bfloat16}, "dtype"),
                            ({"quantize": "int8", "offload": "model"}, "offload")]:  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            Pipeline.load(half_file, **kwargs)


def test_without_vnni_it_says_so_once_and_computes_float32(half_file, monkeypatch, caplog):
    monkeypatch.setattr("ldm.generate.pipeline.int8_available", lambda: "this CPU has no VNNI")
    with caplog.at_level(logging.WARNING, logger="ldm"):
        pipe = Pipeline.load(half_file, quantize="int8")
    assert [r.getMessage() for r in caplog.records] == [
        "--quantize int8 is not available (this CPU has no VNNI); computing in float32"
    ]
    assert not any(isinstance(m, Int8Layer) for m in pipe.model.unet.modules())
    assert np.array_equal(np.asarray(pipe(**SETTINGS)[0]), np.asarray(Pipeline.load(half_file)(**SETTINGS)[0]))
