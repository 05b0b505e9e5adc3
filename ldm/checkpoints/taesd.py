"""Read TAESD weights in either layout into ldm's TAESD (ldm/models/taesd.py).

Layouts: madebyollin's `taesd_encoder` / `taesd_decoder` files (.pth, read with torch's weights-only unpickler, or
.safetensors; keys of the bare Sequential, `0.weight`...), ldm's own single file (`encoder.0.weight`,
`decoder.1.weight`: the original keys under a half's name), and diffusers' AutoencoderTiny folders
(`encoder.layers.N`, `decoder.layers.N-1`: the decoder's clamp moved into forward). The architecture is read off
the keys, so the same code loads SD v1's TAESD and the built-in model's smaller one.

TAESDs for other families have the same shapes as SD v1's (SDXL's `taesdxl` is a different latent space in
identical tensors), so nothing in the weights can tell them apart: a file or folder whose name or metadata names
another family is refused, and a wrongly named one cannot be caught.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import Tensor

from ldm.checkpoints.read import read_pickle_checkpoint, read_safetensors
from ldm.errors import CheckpointError
from ldm.models.taesd import TAESD, TAESDConfig

HALVES = ("encoder", "decoder")
# Names madebyollin and diffusers use for the TAESDs of other families (taesdxl, taesd3, taef1, taef2, ...).
OTHER_FAMILY = re.compile(r"taesd_?xl|sdxl|taesd_?3|\bsd3|taef\d|flux|taehv|taew", re.IGNORECASE)
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def load_taesd(*paths: str | Path, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> TAESD:
    """A TAESD from one or two files (an encoder and/or a decoder) or a folder (diffusers', or one holding
    taesd_encoder.* and taesd_decoder.*). A half no file holds is left out (TAESD.encode/decode says so)."""
    state: dict[str, Tensor] = {}
    for path in paths:
        for key, value in read_taesd(path).items():
            if key in state:
                raise CheckpointError(f"{path} holds a TAESD {key.split('.')[0]} that another file already gave")
            state[key] = value
    if not state:
        raise CheckpointError("no TAESD file given")
    cfg = infer_config(state)
    with torch.device("meta"):
        model = TAESD(cfg, **{half: any(k.startswith(half + ".") for k in state) for half in HALVES})
    expected = model.state_dict()
    if expected.keys() != state.keys() or any(state[k].shape != v.shape for k, v in expected.items()):
        missing = sorted(expected.keys() - state.keys()) + sorted(state.keys() - expected.keys())
        raise CheckpointError(f"the TAESD weights do not fit its architecture (first: {missing[:3]}); check the files")
    model.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in state.items()}, assign=True)
    return model.eval().requires_grad_(False)


def read_taesd(path: str | Path) -> dict[str, Tensor]:
    """The tensors of one TAESD file or folder under ldm's keys (`encoder.N.*`, `decoder.N.*`)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; pass a taesd_decoder.pth/.safetensors file or a folder")
    _refuse_other_family(path.name, path)
    if path.is_dir():
        return _read_folder(path)
    tensors = _read_file(path)
    if any(k.startswith(("encoder.layers.", "decoder.layers.")) for k in tensors):
        return from_diffusers(tensors)
    if any(k.startswith(("encoder.", "decoder.")) for k in tensors):
        return tensors  # ldm's own layout
    half = _which_half(tensors, path)
    return {f"{half}.{k}": v for k, v in tensors.items()}


def from_diffusers(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """AutoencoderTiny keys -> ldm's: encoder indices are the same; decoder ones are one up (the clamp is 0)."""
    out = {}
    for key, value in tensors.items():
        half, layers, index, rest = key.split(".", 3)
        if half not in HALVES or layers != "layers":
            raise CheckpointError(f"unexpected key {key!r} in an AutoencoderTiny file")
        out[f"{half}.{int(index) + (half == 'decoder')}.{rest}"] = value
    return out


def to_diffusers(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """ldm keys -> AutoencoderTiny's (the inverse of from_diffusers)."""
    out = {}
    for key, value in tensors.items():
        half, index, rest = key.split(".", 2)
        out[f"{half}.layers.{int(index) - (half == 'decoder')}.{rest}"] = value
    return out


def infer_config(state: dict[str, Tensor]) -> TAESDConfig:
    """Width, Blocks per level and latent channels, read off the keys of whichever halves are present."""
    levels: dict[str, tuple[int, ...]] = {}
    for half in HALVES:
        convs = _plain_convs(state, half)
        if convs:
            levels[half] = _blocks_per_level(state, half, convs)
    if "encoder" in levels:
        conv_out = state[f"encoder.{_plain_convs(state, 'encoder')[-1]}.weight"]
        channels, latent = state["encoder.0.weight"].shape[0], conv_out.shape[0]
    else:
        channels, latent = state["decoder.1.weight"].shape[0], state["decoder.1.weight"].shape[1]
    encoder = levels.get("encoder") or tuple(reversed(levels["decoder"]))
    decoder = levels.get("decoder") or tuple(reversed(encoder))
    try:
        return TAESDConfig(channels=channels, encoder_blocks=encoder, decoder_blocks=decoder, latent_channels=latent)
    except ValueError as e:
        raise CheckpointError(f"these TAESD halves do not belong together ({e})") from None


def _plain_convs(state: dict[str, Tensor], half: str) -> list[int]:
    """Sequential indices of the half's plain convs (those with `N.weight`), in order."""
    return sorted(int(m.group(1)) for k in state if (m := re.fullmatch(rf"{half}\.(\d+)\.weight", k)))


def _blocks_per_level(state: dict[str, Tensor], half: str, convs: list[int]) -> tuple[int, ...]:
    """Blocks between consecutive plain convs: a bias-less conv starts a new level (stride 2 or after upsample)."""
    blocks = sorted({int(m.group(1)) for k in state if (m := re.fullmatch(rf"{half}\.(\d+)\.conv\.0\.weight", k))})
    cuts = [i for i in convs[1:-1] if f"{half}.{i}.bias" not in state]
    bounds = [convs[0], *cuts, convs[-1]]
    return tuple(sum(lo < b < hi for b in blocks) for lo, hi in zip(bounds, bounds[1:], strict=False))


def _which_half(tensors: dict[str, Tensor], path: Path) -> str:
    """An original file is one bare Sequential: the encoder starts with a conv at 0, the decoder's 0 is its clamp."""
    if "0.weight" in tensors and tensors["0.weight"].ndim == 4 and tensors["0.weight"].shape[1] == 3:
        return "encoder"
    if "1.weight" in tensors and "0.weight" not in tensors:
        return "decoder"
    raise CheckpointError(f"{path} is not a TAESD encoder or decoder (its keys: {', '.join(list(tensors)[:3])}...)")


def _read_file(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        tensors, metadata, _ = read_safetensors(path)
        for value in metadata.values():
            _refuse_other_family(value, path)
        return dict(tensors)
    tensors, _ = read_pickle_checkpoint(path)
    return tensors


def _read_folder(path: Path) -> dict[str, Tensor]:
    config = path / "config.json"
    if config.is_file():  # a diffusers AutoencoderTiny folder
        try:
            settings = json.loads(config.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{config} is not valid JSON ({e})") from None
        if settings.get("_class_name") != "AutoencoderTiny":
            raise CheckpointError(f"{path} is a {settings.get('_class_name')} folder, not a TAESD (AutoencoderTiny)")
        _refuse_other_family(str(settings.get("_name_or_path", "")), path)
        if settings.get("act_fn", "relu") != "relu" or settings.get("upsample_fn", "nearest") != "nearest":
            raise CheckpointError(f"{path} is an AutoencoderTiny variant ldm does not have (act_fn/upsample_fn)")
        weights = next((path / n for n in DIFFUSERS_WEIGHTS if (path / n).is_file()), None)
        if weights is None:
            raise CheckpointError(f"{path} has no {DIFFUSERS_WEIGHTS[0]}; the AutoencoderTiny folder is incomplete")
        return from_diffusers(_read_file(weights))
    files = sorted(p for p in path.iterdir() if p.suffix in (".pth", ".safetensors") and "taesd_" in p.name)
    halves = {half: next((p for p in files if p.name.startswith(f"taesd_{half}")), None) for half in HALVES}
    if not any(halves.values()):
        raise CheckpointError(f"{path} holds neither an AutoencoderTiny (config.json) nor taesd_encoder/decoder files")
    state: dict[str, Tensor] = {}
    for file in filter(None, halves.values()):
        state.update(read_taesd(file))
    return state


def _refuse_other_family(text: str, path: Path) -> None:
    found = OTHER_FAMILY.search(text)
    if found:
        raise CheckpointError(
            f"{path} is a TAESD for another model family (its name or metadata says {found.group(0)!r}); "
            "SD v1 needs madebyollin's taesd. Shapes cannot tell them apart, so ldm goes by the name"
        )
