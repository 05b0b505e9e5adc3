"""Classifier-free guidance (Ho & Salimans 2022) around a U-Net, as a denoiser D(x, sigma) -> x0.

The U-Net predicts the noise (epsilon, SD v1) or v = sqrt(a) noise - sqrt(1 - a) x0 (v_prediction); guidance mixes
its raw outputs, as diffusers does, and the mix is turned into x0 (both are affine in the output, so it is the
same as mixing x0 as k-diffusion does).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ldm.config import PREDICTION_TYPES
from ldm.errors import ConfigError


class CFGDenoiser:
    """D(x, sigma) for the samplers: cond and uncond in ONE batched U-Net call; guidance 1 skips the uncond half.

    The call gives x once and the contexts stacked (uncond, then cond): ldm's U-Net repeats x only from its first
    cross-attention on, where the two halves start to differ. So `unet` must take that guided batch, as
    ldm.models.unet.UNetModel does (a U-Net wanting x and context with the same rows, as diffusers', would not).

    `x` is k-diffusion's variable x0 + sigma * noise; the U-Net sees x / sqrt(sigma^2 + 1) (the DDPM scale it
    was trained on) and the timestep `timestep_of(sigma)`. `concat` holds extra input channels (inpainting).
    """

    def __init__(
        self,
        unet: nn.Module,
        cond: Tensor,
        uncond: Tensor | None,
        guidance: float,
        timestep_of: Callable[[Tensor], Tensor],
        concat: Tensor | None = None,
        prediction_type: str = "epsilon",
        dtype: torch.dtype | None = None,
    ):
        if prediction_type not in PREDICTION_TYPES:
            raise ConfigError(f"unknown prediction_type {prediction_type!r}; use one of {', '.join(PREDICTION_TYPES)}")
        self.unet, self.guidance, self.timestep_of = unet, guidance, timestep_of
        self.prediction_type = prediction_type
        self.dtype = dtype or next(unet.parameters()).dtype  # what the U-Net computes in
        guided = uncond is not None and guidance != 1
        self.context = torch.cat([uncond, cond]) if guided else cond  # uncond first, as diffusers batches it
        self.concat, self.guided = concat, guided

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        x_in = x / (sigma**2 + 1) ** 0.5
        if self.concat is not None:
            x_in = torch.cat([x_in, self.concat], dim=1)
        t = self.timestep_of(sigma).to(x.device).expand(x_in.shape[0])
        out = self.unet(x_in.to(self.dtype), t, self.context).float()
        if self.guided:
            out_uncond, out_cond = out.chunk(2)
            out = out_uncond + self.guidance * (out_cond - out_uncond)
        if self.prediction_type == "v_prediction":  # x0 = sqrt(a) x_in - sqrt(1 - a) v, in sigma terms
            return x / (sigma**2 + 1) - out * sigma / (sigma**2 + 1) ** 0.5
        return x - sigma * out
