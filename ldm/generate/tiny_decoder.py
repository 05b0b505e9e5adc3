"""TAESD beside the model's VAE: the decoder of `--preview taesd` and of `--vae-decoder taesd` (fast, approximate).

A pipeline has one when it was loaded with `taesd=` (a taesd_decoder file, a folder, an AutoencoderTiny folder;
ldm/checkpoints/taesd.py) or runs the built-in model, whose distilled TAESD ships in weights/ and loads on first
use (most commands never preview). It lives on the pipeline's device at all times (about 1 M parameters: offload
would cost more than it saves).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ldm.checkpoints.taesd import load_taesd
from ldm.cpu.features import native_bfloat16
from ldm.cpu.swap_in import swap_in
from ldm.errors import ConfigError
from ldm.models.taesd import TAESD
from ldm.shipped import shipped

if TYPE_CHECKING:
    from ldm.generate.pipeline import Pipeline

BUILTIN_TAESD = shipped("weights") / "ldm-shapes-taesd.safetensors"  # made by tools/train_taesd.py


def attach_taesd(pipe: Pipeline, path: str | Path | None) -> None:
    """Load `path` as the pipeline's TAESD (None: the built-in model's, when it ships); refused if it does not fit
    the model's VAE (latent channels, downscale). The built-in one is only noted here: require_taesd loads it."""
    if path is None:
        pipe.taesd_file = BUILTIN_TAESD if BUILTIN_TAESD.is_file() else None
        return
    dtype = pipe.dtype if pipe.device.type == "cuda" else torch.float32  # TAESD has no norms to overflow
    taesd = load_taesd(*(path if isinstance(path, (list, tuple)) else [path]), dtype=dtype, device=pipe.device)
    if (why := taesd.config.fits(pipe.model.config.vae)) is not None:
        raise ConfigError(f"the TAESD {path} does not fit this model: {why}")
    if taesd.decoder is None:
        raise ConfigError(f"{path} is a TAESD encoder only; previews and --vae-decoder taesd need taesd_decoder")
    pipe.taesd = fitted(taesd, pipe.device)
    pipe.preview_taesd = None
    if pipe.device.type == "cpu" and native_bfloat16():  # previews only: a final image stays float32, the same anywhere
        pipe.preview_taesd = fitted(copy.deepcopy(taesd).to(torch.bfloat16), pipe.device)


def fitted(taesd: TAESD, device: torch.device) -> TAESD:
    """TAESD fitted for speed as the model's modules are (ldm/cpu/swap_in.py): upsample-and-conv pairs folded,
    and on a CPU its convs packed for oneDNN."""
    return swap_in(taesd.eval(), pack=device.type == "cpu")


def require_taesd(pipe: Pipeline, what: str) -> TAESD:
    if pipe.taesd is None and pipe.taesd_file is not None:
        attach_taesd(pipe, pipe.taesd_file)
    if pipe.taesd is None:
        raise ConfigError(
            f"{what} needs a TAESD for this model; pass --taesd / Pipeline.load(taesd=) with madebyollin's "
            "taesd_decoder.pth (or .safetensors, or its diffusers folder)"
        )
    return pipe.taesd


@torch.no_grad()
def taesd_decode(pipe: Pipeline, latents: Tensor, *, preview: bool = False) -> Tensor:
    """Scaled latents -> images in [-1, 1], float32, through the TAESD decoder. preview: through its bfloat16 copy
    where the CPU has native bfloat16 (about twice as fast; within a fraction of a percent of the float32 one)."""
    taesd = require_taesd(pipe, "--preview taesd" if preview else "--vae-decoder taesd")
    if preview and pipe.preview_taesd is not None:
        taesd = pipe.preview_taesd
    weight = taesd.decoder[1].weight
    return taesd.decode(latents.to(weight.device, weight.dtype)).float()
