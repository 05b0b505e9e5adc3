"""The VAE against diffusers' AutoencoderKL, weights moved through our key table."""

import pytest
import torch
from helpers import reference_kwargs, rel_error

from ldm.checkpoints import diffusers_layout as layout
from ldm.config import ModelConfig, VAEConfig
from ldm.cpu import banded
from ldm.cpu.swap_in import swap_in
from ldm.models.attention import set_attention_backend
from ldm.models.vae import AutoencoderKL

CONFIGS = {
    "tiny": ModelConfig.preset("tiny").vae,
    "odd-channels-3-levels": VAEConfig(ch=12, ch_mult=(1, 3, 2), num_res_blocks=1, norm_groups=4),
    "2-res-blocks": VAEConfig(ch=16, ch_mult=(1, 2), num_res_blocks=2, norm_groups=8, z_channels=3),
}


def reference_and_ours(cfg: VAEConfig, std: float = 0.1, kwargs: dict | None = None):
    """kwargs: the reference's own config (independent of ours); by default our translation of `cfg`."""
    from diffusers import AutoencoderKL as Reference

    ref = Reference(**(kwargs or layout.vae_config_to_diffusers(cfg))).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, std)
    with torch.device("meta"):
        ours = AutoencoderKL(cfg)
    ours.load_state_dict(layout.vae_from_diffusers(ref.state_dict(), cfg), strict=True, assign=True)
    return ref, ours.eval()


@pytest.mark.parametrize("packed", [False, True], ids=["plain", "packed"])
@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("size", [(32, 32), (32, 48)])
@pytest.mark.parametrize("band_rows", [64, 5], ids=["whole", "bands"])
def test_encode_and_decode_match_diffusers(name, size, packed, band_rows, monkeypatch):
    # 5-row bands: ResnetBlocks from 11 rows up normalise and convolve in bands (the last one ragged), as the
    # 512x512 levels do with 64 (ldm/cpu/banded.py).
    monkeypatch.setattr(banded, "BAND_ROWS", band_rows)
    cfg = CONFIGS[name]
    # The tiny preset's reference comes from the fixture's kwargs, the others from our translation.
    ref, ours = reference_and_ours(cfg, kwargs=reference_kwargs("vae", "tiny") if name == "tiny" else None)
    if packed:  # the layers the pipeline runs on a CPU (ldm/cpu/swap_in.py)
        swap_in(ours)
    x = torch.rand(2, 3, *size) * 2 - 1
    with torch.no_grad():
        theirs, mine = ref.encode(x).latent_dist, ours.encode(x)
        assert rel_error(mine.mean, theirs.mean) <= 1e-5 and rel_error(mine.logvar, theirs.logvar) <= 1e-5
        sample = mine.sample(torch.Generator().manual_seed(3))
        assert rel_error(sample, theirs.sample(torch.Generator().manual_seed(3))) <= 1e-5
        z = torch.randn_like(sample)
        assert rel_error(ours.decode(z), ref.decode(z).sample) <= 1e-5


def test_attention_backends_agree():
    _, ours = reference_and_ours(CONFIGS["tiny"])
    z = torch.randn(1, 4, 24, 24)
    with torch.no_grad():
        expected = ours.decode(z)
        for backend in ("math", "sliced"):
            set_attention_backend(ours, backend)
            assert rel_error(ours.decode(z), expected) <= 1e-5


@pytest.mark.full
def test_full_sd_v1_shapes_match_diffusers():
    ref, ours = reference_and_ours(ModelConfig.preset("sd-v1").vae, std=0.02, kwargs=reference_kwargs("vae", "sd-v1"))
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        mean, image = ref.encode(x).latent_dist.mean, ref.decode(z).sample
        for model in (ours, swap_in(ours)):
            assert rel_error(model.encode(x).mean, mean) <= 1e-5
            assert rel_error(model.decode(z), image) <= 1e-5


def test_gradients_match_diffusers():
    """Activations are updated in place only when no gradient needs them: training still gets the right grads."""
    ref, ours = reference_and_ours(CONFIGS["tiny"])
    z = torch.randn(1, 4, 8, 8, requires_grad=True)
    (grad,) = torch.autograd.grad(ours.decode(z).square().sum(), z)
    (expected,) = torch.autograd.grad(ref.decode(z).sample.square().sum(), z)
    assert rel_error(grad, expected) <= 1e-5
