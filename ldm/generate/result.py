"""What one generation gives back: everything about the call lives here, nothing on the pipeline."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image
from torch import Tensor

from ldm.generate.request import GenerationRequest


@dataclass(frozen=True)
class Result:
    images: list[Image.Image]
    seeds: list[int]  # the seed of each image, in order: image i reproduces alone with seeds[i]
    infotexts: list[str]  # each image's AUTOMATIC1111 `parameters` text
    latents: Tensor  # the final latents (B, 4, H/8, W/8), as the VAE decodes them
    request: GenerationRequest  # what was asked, with the seed that was used
