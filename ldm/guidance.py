"""Classifier-free guidance (Ho & Salimans 2022) around an eps-predicting U-Net, as a denoiser D(x, sigma) -> x0."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


class CFGDenoiser:
    """D(x, sigma) for the samplers: cond and uncond in ONE batched U-Net call; guidance 1 skips the uncond half.

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
    ):
        self.unet, self.guidance, self.timestep_of = unet, guidance, timestep_of
        self.dtype = next(unet.parameters()).dtype
        guided = uncond is not None and guidance != 1
        self.context = torch.cat([uncond, cond]) if guided else cond  # uncond first, as diffusers batches it
        self.concat = None if concat is None else (torch.cat([concat, concat]) if guided else concat)
        self.guided = guided

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        x_in = x / (sigma**2 + 1) ** 0.5
        if self.guided:
            x_in = torch.cat([x_in, x_in])
        if self.concat is not None:
            x_in = torch.cat([x_in, self.concat], dim=1)
        t = self.timestep_of(sigma).to(x.device).expand(x_in.shape[0])
        eps = self.unet(x_in.to(self.dtype), t, self.context).float()
        if self.guided:
            eps_uncond, eps_cond = eps.chunk(2)
            eps = eps_uncond + self.guidance * (eps_cond - eps_uncond)
        return x - sigma * eps
