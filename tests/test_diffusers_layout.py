"""The original <-> diffusers key table, checked against the real SD v1 layouts and against diffusers itself."""

import json
from pathlib import Path

import pytest
import torch

from ldm.checkpoints import diffusers_layout as dl
from ldm.config import ModelConfig, UNetConfig, VAEConfig
from ldm.errors import CheckpointError

DATA = Path(__file__).parent / "data"
PREFIXES = {
    "unet": "model.diffusion_model.",
    "vae": "first_stage_model.",
    "text_encoder": "cond_stage_model.transformer.",
}
DIFFUSERS_FILES = {
    "unet": "unet/diffusion_pytorch_model.safetensors",
    "vae": "vae/diffusion_pytorch_model.safetensors",
    "text_encoder": "text_encoder/model.safetensors",
}


def original_manifest(name: str, component: str) -> dict[str, torch.Tensor]:
    """Meta tensors with the manifest's shapes, for one component, prefix removed."""
    manifest = json.loads((DATA / name).read_text())
    prefix = PREFIXES[component]
    return {
        k[len(prefix) :]: torch.empty(shape, device="meta")
        for k, (shape, _) in manifest.items()
        if k.startswith(prefix) and not k.endswith("position_ids")
    }


def shapes(state: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in state.items()}


@pytest.mark.parametrize("component", ["unet", "vae", "text_encoder"])
def test_real_sd_v1_layout_maps_to_the_real_diffusers_layout_and_back(component):
    cfg = ModelConfig.preset("sd-v1")
    original = original_manifest("sd_v1_original_keys.json", component)
    expected = json.loads((DATA / "sd_v1_diffusers_keys.json").read_text())[DIFFUSERS_FILES[component]]
    to, back = {
        "unet": (lambda s: dl.unet_to_diffusers(s, cfg.unet), lambda s: dl.unet_from_diffusers(s, cfg.unet)),
        "vae": (lambda s: dl.vae_to_diffusers(s, cfg.vae), lambda s: dl.vae_from_diffusers(s, cfg.vae)),
        "text_encoder": (dl.text_encoder_to_diffusers, dl.text_encoder_from_diffusers),
    }[component]
    converted = to(original)
    assert shapes(converted) == {k: shape for k, (shape, _) in expected.items()}
    assert shapes(back(converted)) == shapes(original)


def diffusers_shapes(cfg: ModelConfig) -> tuple[dict, dict]:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**dl.unet_config_to_diffusers(cfg.unet))
        vae = AutoencoderKL(**dl.vae_config_to_diffusers(cfg.vae))
    return shapes(unet.state_dict()), shapes(vae.state_dict())


def test_tiny_layout_maps_to_what_diffusers_builds_from_the_translated_config(tiny_config):
    unet_shapes, vae_shapes = diffusers_shapes(tiny_config)
    unet = original_manifest("sd_v1_tiny_original_keys.json", "unet")
    vae = original_manifest("sd_v1_tiny_original_keys.json", "vae")
    assert shapes(dl.unet_to_diffusers(unet, tiny_config.unet)) == unet_shapes
    assert shapes(dl.vae_to_diffusers(vae, tiny_config.vae)) == vae_shapes


def test_config_translation_round_trips():
    odd = ModelConfig(
        unet=UNetConfig(
            model_channels=24,
            channel_mult=(1, 3, 2),
            attention_resolutions=(4, 2),
            num_heads=3,
            num_res_blocks=1,
            context_dim=20,
            norm_groups=4,
            in_channels=9,
        ),
        vae=VAEConfig(ch=12, ch_mult=(1, 2, 2), num_res_blocks=1, norm_groups=4),
    )
    for cfg in (ModelConfig.preset("sd-v1"), ModelConfig.preset("tiny"), odd):
        assert dl.unet_config_from_diffusers(dl.unet_config_to_diffusers(cfg.unet)) == cfg.unet
        assert dl.vae_config_from_diffusers(dl.vae_config_to_diffusers(cfg.vae)) == cfg.vae
        te = dl.text_encoder_config_to_diffusers(cfg.text_encoder)
        assert dl.text_encoder_config_from_diffusers(te) == cfg.text_encoder


def test_old_diffusers_vae_attention_names_are_accepted(tiny_config):
    """Folders saved by diffusers before 0.14 name the VAE's attention query/key/value/proj_attn: every one of
    them lands on the same original key, with the same values, as the modern names do."""
    generator = torch.Generator().manual_seed(0)
    manifest = original_manifest("sd_v1_tiny_original_keys.json", "vae")
    vae = {k: torch.randn(t.shape, generator=generator) for k, t in manifest.items()}
    modern = dl.vae_to_diffusers(vae, tiny_config.vae)
    old = {}
    for key, value in modern.items():
        for old_name, new_name in dl.OLD_VAE_ATTENTION.items():
            key = key.replace(f".attentions.0.{new_name}", f".attentions.0.{old_name}")
        old[key] = value
    assert {n for n in dl.OLD_VAE_ATTENTION if any(f".attentions.0.{n}" in k for k in old)} == set(dl.OLD_VAE_ATTENTION)
    back = dl.vae_from_diffusers(old, tiny_config.vae)
    assert back.keys() == vae.keys() and all(torch.equal(back[k], vae[k]) for k in vae)


def test_flattened_transformers_text_encoder_keys_are_accepted():
    flat = {"embeddings.token_embedding.weight": torch.zeros(3), "final_layer_norm.bias": torch.zeros(3)}
    assert set(dl.text_encoder_from_diffusers(flat)) == {"text_model." + k for k in flat}


def test_a_key_with_no_place_is_refused(tiny_config):
    with pytest.raises(CheckpointError, match="1 diffusers U-Net key"):
        dl.unet_from_diffusers({"add_embedding.linear_1.weight": torch.zeros(1)}, tiny_config.unet)
