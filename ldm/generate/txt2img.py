"""txt2img: a request's prompts -> context -> seeded noise -> sampler -> latents -> images."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from ldm.cpu.heap import release_free_memory
from ldm.errors import ConfigError
from ldm.generate.request import GenerationRequest, check_for_model
from ldm.generate.result import Result
from ldm.outputs.png import to_pil
from ldm.sampling import samplers
from ldm.sampling.guidance import CFGDenoiser

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
) -> Result:
    model = pipe.model
    if model.config.unet.in_channels != model.config.vae.z_channels:
        raise ConfigError(
            f"this is an inpainting model (its U-Net takes {model.config.unet.in_channels} input channels); "
            "txt2img needs an ordinary SD v1 checkpoint"
        )
    check_for_model(request, model.config.text_encoder.num_hidden_layers)
    request = request.with_seed()
    prompts, negatives = request.batch()
    seeds = [request.seed + i for i in range(len(prompts))]
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]

    guided = request.guidance != 1  # guidance 1 needs no unconditional side
    context = pipe.encode(prompts + negatives if guided else prompts, request.clip_skip)  # one encoder batch
    context, uncond = (context[: len(prompts)], context[len(prompts) :]) if guided else (context, None)
    plan = samplers.plan(request.sampler, request.steps, karras=request.karras)
    prediction_type = model.config.unet.prediction_type
    denoiser = CFGDenoiser(model.unet, context, uncond, request.guidance, plan.timestep,
                           prediction_type=prediction_type, dtype=pipe.dtype)  # fmt: skip
    factor = model.config.vae.downscale
    shape = (len(prompts), model.config.vae.z_channels, request.height // factor, request.width // factor)
    if latents is None:
        latents = samplers.initial_noise(shape, generators)  # drawn on the CPU: same image on any device
    elif tuple(latents.shape) != shape:
        raise ConfigError(f"latents must have shape {shape} for this batch and size, not {tuple(latents.shape)}")
    pipe.activate(model.unet)
    with tqdm(total=len(plan.sigmas) - 1, disable=not progress, desc="sampling", unit="step", leave=False) as bar:

        def on_step(i: int, n: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
            bar.update(1)
            if callback is not None:
                callback(i, n, x, denoised)

        x = samplers.run(plan, denoiser, latents.to(pipe.device, torch.float32), generators=generators,
                         eta=request.eta, callback=on_step, prediction_type=prediction_type)  # fmt: skip
    if pipe.device.type == "cpu":
        release_free_memory()  # the U-Net's freed activations, before the VAE's buffers (peak RSS)
    images = to_pil(pipe.decode(x, tiling=request.vae_tiling, slicing=request.vae_slicing, decoder=request.vae_decoder))
    infotexts = [request.to_infotext(i, **pipe.model_info) for i in range(len(images))]
    return Result(images, seeds, infotexts, x, request)
