"""Live previews: a picture of the denoiser's current x0 estimate every N sampling steps.

As AUTOMATIC1111 previews (its CFGDenoiser keeps the x0 prediction, not the noisy latent). Methods:
- approx: AUTOMATIC1111's "Approx cheap", a fixed linear map of the 4 latent channels to RGB, upscaled; free.
  SD v1's coefficients are A1111's (modules/sd_vae_approx.py `cheap_approximation`, from
  https://discuss.huggingface.co/t/decoding-latents-to-rgb-without-upscaling/23204/2). The built-in model's VAE
  has its own latent space: its map is fitted by least squares (tools/train_taesd.py) and ships beside it.
- taesd: the pipeline's TAESD decoder (ldm/generate/tiny_decoder.py); about as cheap, much closer to the result
  (in bfloat16 on CPUs that compute it natively).
- full: the model's own VAE; as slow as the final decode, each time.
A preview reads the estimate and changes nothing: no generator draws, no in-place edits, so the final image is
the same with and without (under model offload the U-Net is brought back to the device after a full decode).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ldm.errors import ConfigError
from ldm.generate.pipeline import BUILTIN, Pipeline
from ldm.generate.tiny_decoder import require_taesd, taesd_decode
from ldm.outputs.png import to_pil
from ldm.sampling.samplers import Callback

METHODS = ("none", "approx", "taesd", "full")
# Rows: latent channels 1-4; columns: R, G, B. Scaled latents in, about [-1, 1] out.
BUILTIN_RGB = BUILTIN.with_name("ldm-shapes-approx.json")  # written by tools/train_taesd.py
SD_V1_RGB = ((0.298, 0.207, 0.208), (0.187, 0.286, 0.173), (-0.158, 0.189, 0.264), (-0.184, -0.271, -0.473))
ShowPreview = Callable[[int, int, Image.Image], None]  # (step, total, picture of image 0 of the batch)


@dataclass(frozen=True)
class Preview:
    """What `pipe.generate(..., preview=)` takes: show(step, total, image) after every `every`-th step."""

    show: ShowPreview
    method: str = "approx"
    every: int = 1

    def __post_init__(self) -> None:
        if self.method not in METHODS[1:]:
            raise ConfigError(f"unknown preview method {self.method!r}; choose one of {', '.join(METHODS[1:])}")
        if not isinstance(self.every, int) or self.every < 1:
            raise ConfigError(f"preview every must be a whole number of steps from 1 up, got {self.every}")


def with_preview(pipe: Pipeline, preview: Preview | ShowPreview | None, callback: Callback | None) -> Callback | None:
    """The step callback that also shows previews; checked before sampling starts (a missing TAESD fails now)."""
    if preview is None:
        return callback
    if not isinstance(preview, Preview):
        preview = Preview(preview)
    if preview.method == "taesd":
        require_taesd(pipe, "--preview taesd")

    def on_step(i: int, n: int, x: Tensor, denoised: Tensor) -> Tensor | None:
        replaced = None if callback is None else callback(i, n, x, denoised)
        if (i + 1) % preview.every == 0 and i + 1 < n:  # after the last step comes the image itself
            preview.show(i, n, picture(pipe, denoised[:1], preview.method))
        return replaced  # a callback's replacement for x stands

    return on_step


@torch.no_grad()
def picture(pipe: Pipeline, latents: Tensor, method: str) -> Image.Image:
    """One image of scaled latents (1, 4, h, w), the way `method` decodes them."""
    if method == "approx":
        image = approx_decode(latents, approx_rgb(pipe.source), pipe.model.config.vae.downscale)
    elif method == "taesd":
        image = taesd_decode(pipe, latents, preview=True)
    else:
        image = pipe.decode(latents)
        pipe.activate(pipe.model.unet)  # model offload lent the device to the VAE; sampling goes on
    return to_pil(image.float())[0]


def approx_decode(latents: Tensor, rgb: Tensor, scale: int) -> Tensor:
    """(B, 4, h, w) scaled latents -> (B, 3, h * scale, w * scale) in about [-1, 1]: a 1x1 linear map (+ bias)."""
    weight, bias = rgb[:4].to(latents), rgb[4].to(latents)
    image = torch.einsum("bchw,cr->brhw", latents, weight) + bias[None, :, None, None]
    return F.interpolate(image, scale_factor=scale, mode="nearest")


def approx_rgb(source: Path | None) -> Tensor:
    """(5, 3): the 4 channels' RGB rows and a bias row. The built-in model's fitted map where it ships."""
    if source == BUILTIN and BUILTIN_RGB.is_file():
        return _read_fitted(BUILTIN_RGB).clone()
    return torch.tensor([*SD_V1_RGB, (0.0, 0.0, 0.0)])


@cache
def _read_fitted(path: Path) -> Tensor:
    data = json.loads(path.read_text())
    return torch.tensor([*data["weights"], data["bias"]], dtype=torch.float32)
