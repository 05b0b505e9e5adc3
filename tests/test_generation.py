"""A pipeline shared by threads, and weights edited after the CPU layers packed: each call is as if alone."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from helpers import E2E, random_model

from ldm import Pipeline
from ldm.checkpoints.convert import write_single_file
from ldm.cpu.packing import FusedGEGLU, PackedLayer
from ldm.cpu.swap_in import swap_out

EDITS = {  # a packed 3x3 conv, a fused GEGLU projection, a 1x1 projection (packed as a linear layer), a norm
    "out.2.weight": 0.5,
    "input_blocks.1.1.transformer_blocks.0.ff.net.0.proj.weight": 1.5,
    "input_blocks.1.1.proj_in.weight": -1.0,
    "middle_block.0.in_layers.0.bias": 0.25,
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_single_file(random_model(E2E), tmp_path_factory.mktemp("gen") / "tiny.safetensors", E2E)


def pixels(result) -> list[np.ndarray]:
    return [np.asarray(image).astype(int) for image in result.images]


def test_two_threads_at_once_each_get_what_they_asked_for(checkpoint):
    pipe = Pipeline.load(checkpoint, device="cpu")
    requests = [
        pipe.request(prompt="a red circle", seed=3, steps=3, sampler="euler_a", width=64, height=64),
        pipe.request(
            prompt=("a blue square", "a tree"),
            negative_prompt="blur",
            seed=11,
            steps=4,
            sampler="dpmpp_2m",
            karras=True,
            guidance=5.0,
            width=48,
            height=64,
            clip_skip=2,
            vae_slicing=True,
        ),  # fmt: skip
    ]
    alone = [pipe.generate(r, progress=False) for r in requests]
    for _ in range(2):
        with ThreadPoolExecutor(2) as pool:
            together = list(pool.map(lambda r: pipe.generate(r, progress=False), requests))
        for a, t in zip(alone, together, strict=True):
            assert t.seeds == a.seeds and t.infotexts == a.infotexts and t.request == a.request
            assert all(np.array_equal(x, y) for x, y in zip(pixels(a), pixels(t), strict=True))


def test_weights_edited_after_an_image_change_the_next_image_as_plain_layers_do(checkpoint):
    settings = {"prompt": "a cabin", "seed": 5, "steps": 3, "width": 64, "height": 64}
    packed = Pipeline.load(checkpoint, device="cpu")
    before = pixels(packed.generate(packed.request(**settings), progress=False))[0]
    unet = packed.model.unet
    assert any(isinstance(m, PackedLayer) and m.packed is not None for m in unet.modules())
    assert any(isinstance(m, FusedGEGLU) for m in unet.modules())
    with packed.edit_weights("unet") as weights:
        for name, factor in EDITS.items():
            weights[name].mul_(factor)
    after = pixels(packed.generate(packed.request(**settings), progress=False))[0]
    assert any(isinstance(m, PackedLayer) and m.packed is not None for m in unet.modules())  # packed again

    plain = Pipeline.load(checkpoint, device="cpu")
    for module in plain.components():
        swap_out(module)
    with plain.edit_weights("unet") as weights:
        for name, factor in EDITS.items():
            weights[name].mul_(factor)
    expected = pixels(plain.generate(plain.request(**settings), progress=False))[0]
    assert np.abs(after - expected).max() <= 1
    assert np.abs(after - before).max() > 10


def test_edits_reach_offloaded_weights_and_unknown_names_are_clear(checkpoint):
    settings = {"prompt": "a cabin", "seed": 5, "steps": 3, "width": 64, "height": 64}
    reference = Pipeline.load(checkpoint, device="cpu")
    offloaded = Pipeline.load(checkpoint, device="cpu", offload="model")
    for pipe in (reference, offloaded):
        pipe.generate(pipe.request(**settings), progress=False)  # the U-Net was lent out last
        with pipe.edit_weights("unet") as weights:
            weights["out.2.weight"].mul_(0.5)
    images = [pixels(p.generate(p.request(**settings), progress=False))[0] for p in (reference, offloaded)]
    assert np.abs(images[0] - images[1]).max() <= 1
    with pytest.raises(KeyError), reference.edit_weights("unet") as weights:
        weights["no.such.weight"]
    from ldm.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown component"), reference.edit_weights("clip"):
        pass
