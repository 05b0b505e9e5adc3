"""TAESD against diffusers' AutoencoderTiny on random weights, loaded from every layout it ships in."""

import pytest
import torch
from helpers import rel_error
from safetensors.torch import save_file

from ldm.checkpoints.taesd import infer_config, load_taesd, to_diffusers
from ldm.config import ModelConfig
from ldm.errors import CheckpointError, ConfigError
from ldm.models.taesd import TAESD, TAESDConfig

# SD v1's TAESD, and the built-in model's shape: 3 levels (a 4x VAE) of 16 channels.
CONFIGS = {"sd-v1": TAESDConfig(), "3-levels": TAESDConfig(16, (1, 2, 2), (2, 2, 1))}


def reference(cfg: TAESDConfig):
    from diffusers import AutoencoderTiny

    ref = AutoencoderTiny(
        encoder_block_out_channels=(cfg.channels,) * len(cfg.encoder_blocks),
        decoder_block_out_channels=(cfg.channels,) * len(cfg.decoder_blocks),
        num_encoder_blocks=cfg.encoder_blocks,
        num_decoder_blocks=cfg.decoder_blocks,
        latent_channels=cfg.latent_channels,
    ).eval()
    with torch.no_grad():
        for p in ref.parameters():  # default init leaves outputs near constant; this exercises every weight
            p.normal_(0, 0.05)
    return ref


def original_halves(ref) -> dict[str, dict[str, torch.Tensor]]:
    """madebyollin's two files: bare Sequential keys, the decoder's shifted up by one for its clamp."""
    ours = {k: v for k, v in _from_reference(ref).items()}
    return {
        h: {k.split(".", 1)[1]: v for k, v in ours.items() if k.startswith(h + ".")} for h in ("encoder", "decoder")
    }


def _from_reference(ref) -> dict[str, torch.Tensor]:
    state = ref.state_dict()
    return {
        f"{half}.{int(index) + (half == 'decoder')}.{rest}": v
        for key, v in state.items()
        for half, _, index, rest in [key.split(".", 3)]
    }


def write_layout(ref, layout: str, root):
    """The files a user would have, in `layout`; returns the paths to hand to load_taesd."""
    if layout == "diffusers":
        ref.save_pretrained(root / "taesd")
        return [root / "taesd"]
    halves = original_halves(ref)
    suffix = ".pth" if layout == "original-pth" else ".safetensors"
    paths = []
    for half, tensors in halves.items():
        path = root / f"taesd_{half}{suffix}"
        if suffix == ".pth":
            torch.save(tensors, path)
        else:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
        paths.append(path)
    return paths


@pytest.mark.parametrize("layout", ["diffusers", "original-pth", "original-safetensors"])
@pytest.mark.parametrize("name", CONFIGS)
def test_encode_and_decode_match_diffusers(name, layout, tmp_path):
    cfg = CONFIGS[name]
    ref = reference(cfg)
    ours = load_taesd(*write_layout(ref, layout, tmp_path))
    assert ours.config == cfg
    image = torch.rand(2, 3, 32, 48) * 2 - 1
    latents = torch.randn(2, 4, 32 // cfg.downscale, 48 // cfg.downscale)
    with torch.no_grad():
        assert rel_error(ours.encode(image), ref.encode(image).latents) <= 1e-5
        assert rel_error(ours.decode(latents), ref.decode(latents).sample) <= 1e-5


def test_a_folder_of_original_files_and_ldm_s_own_layout_load_the_same(tmp_path):
    ref = reference(CONFIGS["3-levels"])
    write_layout(ref, "original-pth", tmp_path)
    from_folder = load_taesd(tmp_path)
    save_file({k: v.contiguous() for k, v in _from_reference(ref).items()}, str(tmp_path / "one.safetensors"))
    single = load_taesd(tmp_path / "one.safetensors")
    assert from_folder.state_dict().keys() == single.state_dict().keys()
    assert all(torch.equal(from_folder.state_dict()[k], v) for k, v in single.state_dict().items())
    assert to_diffusers(_from_reference(ref)).keys() == ref.state_dict().keys()


def test_a_decoder_only_file_decodes_and_says_which_file_encoding_needs(tmp_path):
    paths = write_layout(reference(CONFIGS["3-levels"]), "original-safetensors", tmp_path)
    decoder_only = load_taesd(paths[1])
    assert decoder_only.encoder is None and decoder_only.config == CONFIGS["3-levels"]
    decoder_only.decode(torch.zeros(1, 4, 4, 4))
    with pytest.raises(ConfigError, match="no encoder.*taesd_encoder"):
        decoder_only.encode(torch.zeros(1, 3, 16, 16))


@pytest.mark.parametrize("name", ["taesdxl_decoder.pth", "taesd_xl_decoder.safetensors", "taef1_decoder.pth"])
def test_a_taesd_named_for_another_family_is_refused(name, tmp_path):
    halves = original_halves(reference(CONFIGS["3-levels"]))
    torch.save(halves["decoder"], tmp_path / name)
    with pytest.raises(CheckpointError, match="another model family.*Shapes cannot tell"):
        load_taesd(tmp_path / name)


def test_metadata_and_diffusers_config_naming_sdxl_are_refused(tmp_path):
    ref = reference(CONFIGS["3-levels"])
    halves = original_halves(ref)
    save_file(halves["decoder"], str(tmp_path / "taesd_decoder.safetensors"), metadata={"model": "madebyollin/taesdxl"})
    with pytest.raises(CheckpointError, match="taesdxl"):
        load_taesd(tmp_path / "taesd_decoder.safetensors")
    ref.register_to_config(_name_or_path="madebyollin/taesdxl")
    ref.save_pretrained(tmp_path / "tiny-vae")
    with pytest.raises(CheckpointError, match="taesdxl"):
        load_taesd(tmp_path / "tiny-vae")


def test_files_that_are_not_a_taesd_are_refused(tmp_path):
    torch.save({"weight": torch.zeros(3)}, tmp_path / "taesd_decoder.pth")
    with pytest.raises(CheckpointError, match="not a TAESD"):
        load_taesd(tmp_path / "taesd_decoder.pth")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_taesd(tmp_path / "missing.pth")


def test_config_says_whether_it_fits_a_vae():
    sd = ModelConfig.preset("sd-v1").vae
    assert TAESDConfig().fits(sd) is None
    assert "1/4" in CONFIGS["3-levels"].fits(sd)
    assert infer_config(_from_reference(reference(CONFIGS["3-levels"]))) == CONFIGS["3-levels"]
    with torch.device("meta"):
        assert TAESD(TAESDConfig(), decoder=False).decoder is None


@pytest.mark.parametrize("pack", [False, True])
def test_fitted_for_speed_it_decodes_the_same_through_its_folded_upsamples(pack, monkeypatch):
    from ldm.cpu import folded
    from ldm.cpu.folded import folded_kernels
    from ldm.cpu.swap_in import swap_in, swap_out
    from ldm.generate.tiny_decoder import fitted

    torch.manual_seed(0)
    plain = TAESD(TAESDConfig()).eval()
    keys = list(plain.state_dict())
    z = torch.randn(1, 4, 12, 10)
    with torch.inference_mode():
        expected = plain.decode(z)
    folds = []
    monkeypatch.setattr(folded, "folded_kernels", lambda conv: folds.append(conv) or folded_kernels(conv))
    fast = fitted(plain, torch.device("cpu")) if pack else swap_in(plain, pack=False)
    with torch.inference_mode():
        got = fast.decode(z)
    assert isinstance(fast.decoder, folded.FoldingSequential) and list(fast.state_dict()) == keys
    assert len(folds) == 2  # 24x20 and 48x40 inputs fold; 12x10 is under FOLD_FROM_AREA, plainly upsampled
    assert rel_error(got, expected) < 1e-5
    assert type(swap_out(fast).decoder) is torch.nn.Sequential and list(fast.state_dict()) == keys
