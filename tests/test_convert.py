"""tools/convert.py as a user runs it, and a diffusers-saved folder loading into ldm with the same outputs."""

import os
import subprocess
import sys
from pathlib import Path

import torch
from helpers import assert_loaded_exactly, lightning_ckpt, random_checkpoint
from safetensors import safe_open

from ldm.checkpoints.build import load_model
from ldm.checkpoints.read import PREFIXES, ema_key, read_checkpoint

TOOL = Path(__file__).parents[1] / "tools" / "convert.py"


def convert(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(TOOL), *map(str, args)],
        capture_output=True, text=True, timeout=120, preexec_fn=lambda: os.umask(0o022),
    )  # fmt: skip


def test_ckpt_to_half_pruned_safetensors(tmp_path, tiny_config):
    tensors = random_checkpoint()
    unet_keys = [k[len(PREFIXES["unet"]) :] for k in tensors if k.startswith(PREFIXES["unet"])]
    tensors.update({ema_key(k): torch.randn_like(tensors[PREFIXES["unet"] + k]) for k in unet_keys})
    lightning_ckpt(tensors, tmp_path / "sd.ckpt")
    result = convert(tmp_path / "sd.ckpt", tmp_path / "sd.safetensors", "--half", "--ema", "--config",
                     Path(__file__).parents[1] / "configs" / "tiny.json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "float16" in result.stdout and str(tmp_path / "sd.safetensors") in result.stdout
    with safe_open(str(tmp_path / "sd.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert not any(k.startswith("model_ema.") or k == "betas" for k in keys)
    model = load_model(tmp_path / "sd.safetensors")
    half = {k: v.half().float() for k, v in tensors.items()}
    assert model.config == tiny_config
    assert_loaded_exactly(model, half, ema=True)


def test_single_file_to_diffusers_and_back(tmp_path, tiny_config):
    tensors = random_checkpoint()
    lightning_ckpt(tensors, tmp_path / "a.ckpt")
    config = Path(__file__).parents[1] / "configs" / "tiny.json"
    assert convert(tmp_path / "a.ckpt", tmp_path / "folder", "--config", config).returncode == 0
    assert convert(tmp_path / "folder", tmp_path / "b.safetensors").returncode == 0
    assert_loaded_exactly(load_model(tmp_path / "b.safetensors"), tensors)
    # written under a private temporary name, but readable like any file the user creates (umask 022 here)
    assert (tmp_path / "b.safetensors").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o755


def test_never_overwrites_without_force_and_writes_nothing_on_error(tmp_path, tiny_config):
    tensors = random_checkpoint()
    lightning_ckpt(tensors, tmp_path / "a.ckpt")
    (tmp_path / "out.safetensors").write_bytes(b"mine")
    config = Path(__file__).parents[1] / "configs" / "tiny.json"
    refused = convert(tmp_path / "a.ckpt", tmp_path / "out.safetensors", "--config", config)
    assert refused.returncode == 2 and "--force" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert (tmp_path / "out.safetensors").read_bytes() == b"mine"
    assert convert(tmp_path / "a.ckpt", tmp_path / "out.safetensors", "--config", config, "--force").returncode == 0
    assert_loaded_exactly(load_model(tmp_path / "out.safetensors"), tensors)
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    before = sorted(p.name for p in tmp_path.iterdir())
    failed = convert(tmp_path / "bad.ckpt", tmp_path / "new.safetensors")
    assert failed.returncode == 2 and len(failed.stderr.strip().splitlines()) == 1
    assert "bad.ckpt" in failed.stderr and "Traceback" not in failed.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_folder_saved_by_diffusers_loads_and_gives_the_same_outputs(tmp_path, tiny_config):
    """diffusers as the producer: its own save_pretrained output, read by ldm."""
    import json

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ldm.checkpoints import diffusers_layout as layout

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**layout.unet_config_to_diffusers(tiny_config.unet)).eval()
    vae = AutoencoderKL(**layout.vae_config_to_diffusers(tiny_config.vae)).eval()
    text = CLIPTextModel(CLIPTextConfig(**layout.text_encoder_config_to_diffusers(tiny_config.text_encoder))).eval()
    with torch.no_grad():
        for module in (unet, vae, text):
            for p in module.parameters():
                p.normal_(0, 0.05)
    for name, module in (("unet", unet), ("vae", vae), ("text_encoder", text)):
        module.save_pretrained(tmp_path / name)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    model = load_model(tmp_path)
    assert model.config.unet == tiny_config.unet and model.config.vae == tiny_config.vae
    x, t, ctx = torch.randn(1, 4, 8, 8), torch.tensor([300.0]), torch.randn(1, 77, 32)
    ids = torch.randint(0, 1000, (1, 77))
    with torch.no_grad():
        assert torch.allclose(model.unet(x, t, ctx), unet(x, t, ctx).sample, atol=1e-5)
        assert torch.allclose(model.vae.decode(x), vae.decode(x).sample, atol=1e-5)
        assert torch.allclose(model.text_encoder(ids), text(ids).last_hidden_state, atol=1e-5)
    assert read_checkpoint(tmp_path).config.text_encoder == tiny_config.text_encoder
