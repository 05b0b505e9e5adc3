"""Loading every SD v1 layout into bit-identical weights, and refusing every broken or hostile file."""

import dataclasses
import json
import struct
import sys
import types
import weakref
from pathlib import Path

import pytest
import torch
from helpers import assert_loaded_exactly, lightning_ckpt, random_checkpoint
from safetensors.torch import save_file

from ldm.checkpoints import diffusers_layout as layout
from ldm.checkpoints.build import load_model
from ldm.checkpoints.convert import write_diffusers_folder, write_single_file
from ldm.checkpoints.detect import infer_config
from ldm.checkpoints.read import PREFIXES, UNUSED_KEYS, ema_key, read_checkpoint
from ldm.config import ModelConfig
from ldm.errors import CheckpointError, ConfigError

DATA = Path(__file__).parent / "data"


@pytest.fixture
def tiny() -> ModelConfig:
    return ModelConfig.preset("tiny")


def test_safetensors_written_by_ldm_round_trips_its_config(tmp_path, tiny):
    tensors = random_checkpoint()
    path = write_single_file(tensors, tmp_path / "tiny.safetensors", tiny)
    model = load_model(path)
    assert model.config == tiny and model.family == "sd-v1"
    assert_loaded_exactly(model, tensors)
    assert sorted(model.unused) == sorted(UNUSED_KEYS)


def test_plain_safetensors_without_metadata_loads_from_its_shapes(tmp_path, tiny):
    tensors = random_checkpoint()
    save_file(tensors, str(tmp_path / "plain.safetensors"))
    model = load_model(tmp_path / "plain.safetensors")
    assert model.config.unet.channel_mult == tiny.unet.channel_mult
    assert model.config.vae == tiny.vae
    assert_loaded_exactly(model, tensors)


def test_real_sd_v1_shapes_infer_the_sd_v1_preset():
    for manifest, preset in (
        ("sd_v1_original_keys.json", "sd-v1"),
        ("sd_v1_inpaint_original_keys.json", "sd-v1-inpaint"),
    ):
        shapes = {k: torch.empty(s, device="meta") for k, (s, _) in json.loads((DATA / manifest).read_text()).items()}
        assert infer_config(shapes) == ModelConfig.preset(preset)


def test_lightning_ckpt_with_framework_objects_loads(tmp_path, tiny, monkeypatch):
    # A real sd-v1-4.ckpt names pytorch_lightning's ModelCheckpoint class in its `callbacks`.
    names = ("pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint")
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    module = sys.modules[names[-1]]
    module.ModelCheckpoint = type("ModelCheckpoint", (), {"__module__": module.__name__})
    tensors = random_checkpoint()
    lightning_ckpt(tensors, tmp_path / "sd.ckpt", callbacks={module.ModelCheckpoint: {"best_model_score": None}})
    for name in names:
        monkeypatch.delitem(sys.modules, name)  # the loader must not need pytorch_lightning
    model = load_model(tmp_path / "sd.ckpt", config=tiny)
    assert_loaded_exactly(model, tensors)


def test_fp16_file_loads_as_float32_and_as_float16(tmp_path, tiny):
    tensors = random_checkpoint(dtype=torch.float16)
    path = write_single_file(tensors, tmp_path / "half.safetensors", tiny)
    assert_loaded_exactly(load_model(path), tensors)
    assert_loaded_exactly(load_model(path, dtype=torch.float16), tensors, dtype=torch.float16)


def test_a_float16_file_lets_each_tensor_go_once_its_float32_copy_exists(tmp_path, tiny, monkeypatch):
    """Peak memory: never the whole file beside the whole converted copy (a mapped tensor's pages go with it)."""
    from ldm.checkpoints import build

    path = write_single_file(random_checkpoint(dtype=torch.float16), tmp_path / "half.safetensors", tiny)
    seen, alive_at_each = [], []
    convert = build._convert

    def spy(tensor, dtype, device):
        alive_at_each.append(sum(ref() is not None for ref in seen))  # the earlier file tensors still held
        seen.append(weakref.ref(tensor))
        return convert(tensor, dtype, device)

    monkeypatch.setattr(build, "_convert", spy)
    checkpoint = read_checkpoint(path)
    build.build_model(checkpoint, dtype=torch.float32)
    assert len(seen) > 100 and max(alive_at_each) == 0 and checkpoint.tensors == {}


def test_ema_weights_are_taken_when_asked(tmp_path, tiny):
    tensors = random_checkpoint()
    unet_keys = [k[len(PREFIXES["unet"]) :] for k in tensors if k.startswith(PREFIXES["unet"])]
    tensors.update({ema_key(k): torch.randn_like(tensors[PREFIXES["unet"] + k]) for k in unet_keys})
    lightning_ckpt(tensors, tmp_path / "full-ema.ckpt")
    assert_loaded_exactly(load_model(tmp_path / "full-ema.ckpt", config=tiny, ema=True), tensors, ema=True)
    assert_loaded_exactly(load_model(tmp_path / "full-ema.ckpt", config=tiny), tensors)
    with pytest.raises(CheckpointError, match="no EMA weights"):
        load_model(write_single_file(random_checkpoint(), tmp_path / "x.safetensors", tiny), ema=True)


def test_file_without_schedule_buffers_or_extras_loads(tmp_path, tiny):
    tensors = {k: v for k, v in random_checkpoint().items() if k not in UNUSED_KEYS}
    assert_loaded_exactly(load_model(write_single_file(tensors, tmp_path / "pruned.safetensors", tiny)), tensors)


def test_inpainting_file_is_detected(tmp_path):
    tensors = random_checkpoint()
    key = PREFIXES["unet"] + "input_blocks.0.0.weight"
    tensors[key] = torch.randn(32, 9, 3, 3)
    model = load_model(write_single_file(tensors, tmp_path / "inpaint.safetensors", infer_config(tensors)))
    assert model.family == "sd-v1-inpaint" and model.config.unet.in_channels == 9


def test_diffusers_folder_written_by_ldm_loads_back(tmp_path, tiny):
    tensors = random_checkpoint()
    folder = write_diffusers_folder(tensors, tmp_path / "tiny-diffusers", tiny)
    assert sorted(p.name for p in folder.iterdir()) == [
        "model_index.json", "scheduler", "text_encoder", "tokenizer", "unet", "vae",
    ]  # fmt: skip
    model = load_model(folder)
    assert model.config == tiny
    assert_loaded_exactly(model, tensors)


def test_diffusers_folder_variants_load(tmp_path, tiny):
    """.bin weights, fp16 files, old VAE attention names, flattened text keys with position_ids."""
    tensors = random_checkpoint()
    folder = write_diffusers_folder(tensors, tmp_path / "d", tiny)
    vae_file = folder / "vae" / "diffusion_pytorch_model.safetensors"
    vae = read_checkpoint(folder).tensors  # sanity: the folder reads
    assert vae
    from safetensors.torch import load_file

    old = {k.replace("to_q.", "query.").replace("to_out.0.", "proj_attn."): v for k, v in load_file(vae_file).items()}
    vae_file.unlink()
    torch.save(old, folder / "vae" / "diffusion_pytorch_model.bin")
    text_file = folder / "text_encoder" / "model.safetensors"
    text = {k.removeprefix("text_model."): v.half() for k, v in load_file(text_file).items()}
    text["embeddings.position_ids"] = torch.arange(77)[None]
    text_file.unlink()
    save_file(text, str(folder / "text_encoder" / "model.fp16.safetensors"))
    model = load_model(folder)
    assert_loaded_exactly(model, {k: v.half().float() if "cond_stage" in k else v for k, v in tensors.items()})


# ---- bad input: a clear CheckpointError, nothing executed ----


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope.safetensors")


def test_folder_without_model_index(tmp_path):
    with pytest.raises(CheckpointError, match="without model_index.json"):
        load_model(tmp_path)


def test_empty_file(tmp_path):
    with pytest.raises(CheckpointError, match="empty"):
        load_model(write_bytes(tmp_path / "empty.safetensors", b""))


def test_truncated_safetensors(tmp_path, tiny):
    full = write_single_file(random_checkpoint(), tmp_path / "full.safetensors", tiny).read_bytes()
    with pytest.raises(CheckpointError, match="safetensors"):
        load_model(write_bytes(tmp_path / "cut.safetensors", full[: len(full) // 2]))


def test_corrupt_header_bad_json(tmp_path):
    header = b"{not json" + b" " * 7
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_model(write_bytes(tmp_path / "bad.safetensors", struct.pack("<Q", len(header)) + header))


def test_corrupt_header_length_beyond_file(tmp_path):
    with pytest.raises(CheckpointError, match="header runs past the end"):
        load_model(write_bytes(tmp_path / "bad.safetensors", struct.pack("<Q", 10**9) + b"{}"))


def test_wrong_shapes_refused_and_nothing_half_loaded(tmp_path, tiny, monkeypatch):
    tensors = random_checkpoint()
    tensors[PREFIXES["vae"] + "decoder.conv_out.weight"] = torch.randn(3, 32, 1, 1)  # the last component checked
    path = write_single_file(tensors, tmp_path / "x.safetensors", tiny)
    loaded = []
    real_load = torch.nn.Module.load_state_dict
    monkeypatch.setattr(
        torch.nn.Module, "load_state_dict", lambda m, *a, **k: loaded.append(m) or real_load(m, *a, **k)
    )
    with pytest.raises(CheckpointError, match="1 with the wrong shape .*decoder.conv_out.weight"):
        load_model(path)
    assert loaded == []  # not the U-Net, not the text encoder: nothing was given a weight


def test_missing_keys_refused(tmp_path, tiny):
    tensors = {k: v for k, v in random_checkpoint().items() if ".mid." not in k}
    with pytest.raises(CheckpointError, match=r"vae: \d+ missing"):
        load_model(write_single_file(tensors, tmp_path / "x.safetensors", tiny))


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": [4],
          "model.diffusion_model.input_blocks.0.0.weight": [32, 4, 3, 3]}, "SDXL"),
        ({"cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight": [12, 4],
          "model.diffusion_model.input_blocks.0.0.weight": [32, 4, 3, 3]}, "Stable Diffusion 2"),
        ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": [4, 32],
          "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": []}, "LoRA"),
        ({"encoder.conv_in.weight": [8, 3, 3, 3], "decoder.conv_in.weight": [8, 4, 3, 3]}, "bare VAE"),
        ({"weight": [3]}, "not a Stable Diffusion checkpoint"),
    ],
)  # fmt: skip
def test_other_model_families_are_named(tmp_path, keys, message):
    save_file({k: torch.zeros(s) for k, s in keys.items()}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match=message):
        load_model(tmp_path / "other.safetensors")


class Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": Exploit(marker)}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="could run code"):
        load_model(tmp_path / "evil.ckpt")
    assert not marker.exists()


def test_png_renamed_ckpt(tmp_path):
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "image.png")
    (tmp_path / "image.png").rename(tmp_path / "model.ckpt")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_model(tmp_path / "model.ckpt")


def test_diffusers_keys_translated_through_the_table_match_ours(tiny):
    """The tiny original manifest, sent to diffusers names and back, is what our modules expect."""
    tensors = random_checkpoint()
    unet = {k[len(PREFIXES["unet"]) :]: v for k, v in tensors.items() if k.startswith(PREFIXES["unet"])}
    back = layout.unet_from_diffusers(layout.unet_to_diffusers(unet, tiny.unet), tiny.unet)
    assert all(torch.equal(back[k], unet[k]) for k in unet)


def test_v_prediction_preset_is_sd_v1_predicting_v():
    sd, v = ModelConfig.preset("sd-v1"), ModelConfig.preset("sd-v1-vpred")
    assert v == dataclasses.replace(sd, unet=dataclasses.replace(sd.unet, prediction_type="v_prediction"))
    with pytest.raises(ConfigError, match="prediction_type"):
        ModelConfig.from_dict({"unet": {"prediction_type": "x0"}})


def test_as_read_keeps_conv_and_linear_weights_in_the_file_dtype(tmp_path, tiny):
    """For layers that convert when they pack (ldm/cpu/packing.py): no float32 copy at load."""
    path = write_single_file(random_checkpoint(dtype=torch.float16), tmp_path / "half.safetensors", tiny)
    model = load_model(path, as_read=("unet",))
    for key, value in model.unet.state_dict().items():
        kept = key.endswith(".weight") and value.dim() in (2, 4)
        assert value.dtype == (torch.float16 if kept else torch.float32), key
    assert {v.dtype for v in model.vae.state_dict().values()} == {torch.float32}
