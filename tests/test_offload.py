"""CPU offload: weights visit the device only while they compute, and come home as the very same tensors."""

import numpy as np
import pytest
import torch
from torch import nn

from ldm import Pipeline
from ldm.cpu import banded, folded
from ldm.cpu.swap_in import swap_in
from ldm.errors import ConfigError
from ldm.models.text_encoder import TextEncoder
from ldm.models.unet import UNetModel
from ldm.models.vae import AutoencoderKL
from ldm.runtime.offload import ModelOffload, offload_sequentially


def devices_seen_in_forward(model: nn.Module) -> list[str]:
    seen = []
    for module in model.modules():
        if any(True for _ in module.parameters(recurse=False)):
            # Runs after offload's own pre-hook (hooks run in the order registered): what the forward will see.
            module.register_forward_pre_hook(lambda m, a: seen.append(next(m.parameters(recurse=False)).device.type))
    return seen


def test_sequential_offload_lends_each_layer_to_the_device_and_takes_it_back(tiny_config):
    # The meta device stands in for a GPU: a layer that computed there had its weights there.
    unet = UNetModel(tiny_config.unet).eval()
    homes = dict(unet.named_parameters())
    offload_sequentially(unet, torch.device("meta"))
    seen = devices_seen_in_forward(unet)
    unet(torch.zeros(1, 4, 8, 8, device="meta"), torch.zeros(1, device="meta"),
         torch.zeros(1, 77, tiny_config.unet.context_dim, device="meta"))  # fmt: skip
    assert seen and set(seen) == {"meta"}
    assert all(p is homes[name] for name, p in unet.named_parameters())  # home again, not a copy


def test_a_vae_decoder_that_folds_and_bands_computes_on_the_device(tiny_config, monkeypatch):
    # Folded upsampling (ldm/cpu/folded.py) reads its conv's weight without calling the conv: it visits as a unit.
    # The meta device stands in for a GPU, with bands of rows allowed there too (ldm/cpu/banded.py).
    monkeypatch.setattr(banded, "in_bands", lambda x: x.shape[2] > 2 * banded.BAND_ROWS)
    monkeypatch.setattr(banded, "BAND_ROWS", 8)
    seen, fold = [], folded.folded_kernels
    monkeypatch.setattr(folded, "folded_kernels", lambda conv: seen.append(conv.weight.device.type) or fold(conv))
    vae = swap_in(AutoencoderKL(tiny_config.vae).eval(), pack=False)
    offload_sequentially(vae, torch.device("meta"))
    with torch.no_grad():
        image = vae.decode(torch.zeros(1, tiny_config.vae.z_channels, 32, 32, device="meta"))
    assert seen and set(seen) == {"meta"}
    assert image.device.type == "meta" and next(vae.parameters()).device.type == "cpu"


def test_text_encoder_embeddings_visit_as_one_unit(tiny_config):
    text = TextEncoder(tiny_config.text_encoder).eval()
    offload_sequentially(text, torch.device("meta"))
    out = text(torch.zeros(1, 77, dtype=torch.long, device="meta"))
    assert out.device.type == "meta" and next(text.parameters()).device.type == "cpu"


def test_model_offload_keeps_one_model_on_the_device(tiny_config):
    a, b = UNetModel(tiny_config.unet), TextEncoder(tiny_config.text_encoder)
    offload = ModelOffload([a, b], torch.device("meta"))
    offload.activate(a)
    assert {p.device.type for p in a.parameters()} == {"meta"} and {p.device.type for p in b.parameters()} == {"cpu"}
    offload.activate(b)
    assert {p.device.type for p in a.parameters()} == {"cpu"} and {p.device.type for p in b.parameters()} == {"meta"}


@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_offloaded_pipeline_makes_the_same_image(tmp_path, mode):
    from helpers import E2E, random_model

    from ldm.checkpoints.convert import write_single_file

    path = write_single_file(random_model(E2E), tmp_path / "m.safetensors", E2E)

    def make(**kw):
        pipe = Pipeline.load(path, device="cpu", **kw)
        return np.asarray(pipe("a cat", steps=3, seed=2, width=64, height=64, progress=False)[0]).astype(int)

    assert np.abs(make(offload=mode) - make()).max() <= 1
    with pytest.raises(ConfigError, match="unknown offload mode"):
        Pipeline.load(path, offload="disk")


def test_an_offloaded_pipeline_lends_each_model_while_it_computes_and_gets_it_back_intact(tmp_path):
    """Model offload through the pipeline's own paths, with weights that really move: the meta device stands in for
    a GPU where the pipeline's code can compute on it (encode, decode), and a CPU generation shows that the U-Net is
    lent for sampling too. Every weight comes home as the same CPU tensor with the same values."""
    from helpers import E2E, random_model

    from ldm.checkpoints.convert import write_single_file

    path = write_single_file(random_model(E2E), tmp_path / "m.safetensors", E2E)
    pipe = Pipeline.load(path, device="cpu", offload="model")
    names = ("text_encoder", "unet", "vae")
    homes = {n: dict(getattr(pipe.model, n).named_parameters()) for n in names}
    values = {n: {k: p.detach().clone() for k, p in params.items()} for n, params in homes.items()}
    active = []  # (component, whether it was the one lent to the device) at each forward
    for n, module in (
        ("text_encoder", pipe.model.text_encoder),
        ("unet", pipe.model.unet),
        ("vae", pipe.model.vae.decoder),
    ):
        owner = getattr(pipe.model, n)
        module.register_forward_pre_hook(
            lambda m, a, n=n, owner=owner: active.append((n, pipe.offload.active == id(owner)))
        )
    pipe("a cat", steps=2, seed=1, width=64, height=64, progress=False)
    assert {n for n, _ in active} == set(names) and all(ok for _, ok in active)

    pipe.offload.device = pipe.device = torch.device("meta")
    context = pipe.encode(["a dog"], clip_skip=1)
    lent = {p.device.type for p in pipe.model.text_encoder.parameters()}
    image = pipe.decode(torch.zeros(1, E2E.vae.z_channels, 8, 8, device="meta"))
    assert context.device.type == image.device.type == "meta" and lent == {"meta"}
    assert {p.device.type for p in pipe.model.text_encoder.parameters()} == {"cpu"}  # sent home when the VAE came
    pipe.offload.send_home()
    for n in names:
        for k, p in getattr(pipe.model, n).named_parameters():
            assert p is homes[n][k] and torch.equal(p, values[n][k]), f"{n}.{k}"
