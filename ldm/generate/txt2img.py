"""txt2img: a request's prompts -> context -> seeded noise -> sampler -> latents -> images."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ldm.cpu.heap import release_free_memory
from ldm.errors import ConfigError
from ldm.generate.denoise import denoise, generators_for, guided_denoiser
from ldm.generate.request import GenerationRequest, check_for_model
from ldm.generate.result import Result
from ldm.outputs.png import to_pil
from ldm.sampling import samplers

if TYPE_CHECKING:
    from ldm.generate.pipeline import Pipeline


@torch.inference_mode()
def txt2img(
    pipe: Pipeline,
    request: GenerationRequest,
    *,
    latents: torch.Tensor | None = None,
    callback: samplers.Callback | None = None,
    progress: bool = True,
    decode: bool = True,
) -> Result:
    """decode=False: latents only (the hires fix's first pass), no images."""
    model = pipe.model
    if model.config.unet.in_channels != model.config.vae.z_channels:
        raise ConfigError(
            f"this is an inpainting model (its U-Net takes {model.config.unet.in_channels} input channels); "
            "give it an init image and a mask, or no latents"
        )
    check_for_model(request, model.config.text_encoder.num_hidden_layers)
    request = request.with_seed()
    prompts, negatives = request.batch()
    seeds = [request.seed + i for i in range(len(prompts))]
    generators = generators_for(seeds)

    plan = samplers.plan(request.sampler, request.steps, karras=request.karras)
    denoiser = guided_denoiser(pipe, request, plan, prompts, negatives)
    factor = model.config.vae.downscale
    shape = (len(prompts), model.config.vae.z_channels, request.height // factor, request.width // factor)
    if latents is None:
        latents = samplers.initial_noise(shape, generators)  # drawn on the CPU: same image on any device
    elif tuple(latents.shape) != shape:
        raise ConfigError(f"latents must have shape {shape} for this batch and size, not {tuple(latents.shape)}")
    x = denoise(pipe, request, denoiser, plan, latents, generators, steps=[callback], progress=progress)
    if not decode:
        return Result([], seeds, [], x, request)
    if pipe.device.type == "cpu":
        release_free_memory()  # the U-Net's freed activations, before the VAE's buffers (peak RSS)
    images = to_pil(pipe.decode(x, tiling=request.vae_tiling, slicing=request.vae_slicing, decoder=request.vae_decoder))
    infotexts = [request.to_infotext(i, **pipe.model_info) for i in range(len(images))]
    return Result(images, seeds, infotexts, x, request)
