"""Our presets against SD v1.5's real configs (tests/data/sd_v1_5_configs.json), not against our own translation:
a setting wrong on both sides of a parity test (an activation, an epsilon, a scale factor) is caught here."""

import json
from pathlib import Path

import pytest
import torch

from ldm.checkpoints import diffusers_layout as layout
from ldm.checkpoints.convert import SD_V1_SCHEDULER
from ldm.config import ModelConfig
from ldm.sampling import schedule

REAL = json.loads((Path(__file__).parent / "data" / "sd_v1_5_configs.json").read_text())
BOOKKEEPING = ("_class_name", "_diffusers_version", "_name_or_path", "transformers_version", "torch_dtype", "dtype")


def same(ours: object, theirs: object) -> bool:
    """Equal, or both "off": diffusers reads a null `upcast_attention` (SD v1.5's file) as its default False."""
    return ours == theirs or all(v is None or v is False for v in (ours, theirs))


def kwargs(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in BOOKKEEPING and k != "architectures"}


@pytest.mark.parametrize("component", ["unet", "vae"])
def test_the_sd_v1_preset_builds_the_diffusers_model_sd_v1_5_describes(component):
    import diffusers

    cls = {"unet": diffusers.UNet2DConditionModel, "vae": diffusers.AutoencoderKL}[component]
    ours = layout.model_config_to_diffusers(ModelConfig.preset("sd-v1"))[component]
    with torch.device("meta"):  # every default filled in, as diffusers records it
        theirs_config, ours_config = cls(**kwargs(REAL[component])).config, cls(**kwargs(ours)).config
    names = {k for k in {*theirs_config, *ours_config} if not k.startswith("_")}
    values = {k: (ours_config.get(k), theirs_config.get(k)) for k in names}
    assert {k: v for k, v in values.items() if not same(*v)} == {}


def test_the_sd_v1_preset_builds_the_clip_text_config_sd_v1_5_describes():
    from transformers import CLIPTextConfig

    ours = layout.model_config_to_diffusers(ModelConfig.preset("sd-v1"))["text_encoder"]
    theirs_config, ours_config = CLIPTextConfig(**kwargs(REAL["text_encoder"])), CLIPTextConfig(**kwargs(ours))
    names = set(kwargs(CLIPTextConfig().to_dict()))  # what transformers reads (SD v1.5's file has unused extras)
    values = {k: (getattr(ours_config, k, None), getattr(theirs_config, k, None)) for k in names}
    assert {k: v for k, v in values.items() if not same(*v)} == {}


def test_the_settings_ldm_holds_itself_are_sd_v1_5s():
    preset = ModelConfig.preset("sd-v1")
    assert preset.vae.scale_factor == REAL["vae"]["scaling_factor"]
    assert preset.text_encoder.layer_norm_eps == REAL["text_encoder"]["layer_norm_eps"]
    assert preset.unet.prediction_type == REAL["scheduler"]["prediction_type"]
    assert REAL["scheduler"]["num_train_timesteps"] == schedule.TRAIN_STEPS
    assert REAL["scheduler"]["steps_offset"] == schedule.STEPS_OFFSET
    from diffusers import PNDMScheduler

    reference = PNDMScheduler.from_config(REAL["scheduler"])
    torch.testing.assert_close(schedule.alphas_cumprod(), reference.alphas_cumprod, rtol=0, atol=0)


def test_the_folder_ldm_writes_describes_the_same_models():
    """What `tools/convert.py --to diffusers` writes for an SD v1 model reads back as SD v1.5's configs."""
    configs = layout.model_config_to_diffusers(ModelConfig.preset("sd-v1"))
    assert layout.unet_config_from_diffusers(REAL["unet"]) == ModelConfig.preset("sd-v1").unet
    assert layout.vae_config_from_diffusers(REAL["vae"]) == ModelConfig.preset("sd-v1").vae
    assert layout.text_encoder_config_from_diffusers(REAL["text_encoder"]) == ModelConfig.preset("sd-v1").text_encoder
    assert configs["vae"]["scaling_factor"] == REAL["vae"]["scaling_factor"]
    written = {**SD_V1_SCHEDULER, "prediction_type": "epsilon"}  # the scheduler_config.json ldm writes
    assert {k: REAL["scheduler"][k] for k in written} == written
