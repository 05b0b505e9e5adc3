"""The part every kind of generation shares: prompts -> guided denoiser -> a sampler run from noise to latents.

txt2img starts from pure noise; img2img and inpainting from an encoded image noised part way (`init`), and
inpainting also gives the U-Net extra input channels (`concat`) or puts the kept region back after each step
(through the step callback, which may replace the latents).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from ldm.generate.request import GenerationRequest
from ldm.sampling import samplers
from ldm.sampling.guidance import CFGDenoiser

if TYPE_CHECKING:
    from ldm.generate.pipeline import Pipeline

StepCallback = samplers.Callback  # (step, total, x, denoised); may return a replacement for x


def generators_for(seeds: list[int]) -> list[torch.Generator]:
    """One CPU generator per image, so each image reproduces alone and on any device."""
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def guided_denoiser(
    pipe: Pipeline, request: GenerationRequest, plan: samplers.Plan, prompts: list[str], negatives: list[str],
    concat: torch.Tensor | None = None,
) -> CFGDenoiser:  # fmt: skip
    guided = request.guidance != 1  # guidance 1 needs no unconditional side
    context = pipe.encode(prompts + negatives if guided else prompts, request.clip_skip, request.emphasis)  # one batch
    context, uncond = (context[: len(prompts)], context[len(prompts) :]) if guided else (context, None)
    return CFGDenoiser(pipe.model.unet, context, uncond, request.guidance, plan.timestep, concat=concat,
                       prediction_type=pipe.model.config.unet.prediction_type, dtype=pipe.dtype)  # fmt: skip


def denoise(
    pipe: Pipeline,
    request: GenerationRequest,
    denoiser: CFGDenoiser,
    plan: samplers.Plan,
    noise: torch.Tensor,
    generators: list[torch.Generator],
    *,
    init: torch.Tensor | None = None,
    steps: list[StepCallback | None] = (),
    progress: bool = True,
) -> torch.Tensor:
    """Run the sampler; each callback in `steps` sees every step (and may replace the latents, in order)."""
    pipe.activate(pipe.model.unet)
    with tqdm(total=plan.steps_run, disable=not progress, desc="sampling", unit="step", leave=False) as bar:

        def on_step(i: int, n: int, x: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
            bar.update(1)
            for callback in steps:
                if callback is not None:
                    replaced = callback(i, n, x, denoised)
                    x = x if replaced is None else replaced
            return x

        device = pipe.device
        return samplers.run(plan, denoiser, noise.to(device, torch.float32), generators=generators, eta=request.eta,
                            init=None if init is None else init.to(device, torch.float32), callback=on_step,
                            prediction_type=pipe.model.config.unet.prediction_type)  # fmt: skip
