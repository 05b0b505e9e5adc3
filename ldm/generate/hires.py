"""The hires fix (AUTOMATIC1111's two-pass txt2img): a first image at width x height, upscaled in latent space
(the "Latent" modes) or in pixels (decode, resize, encode), then an img2img pass at the larger size.

Step semantics are A1111's: the second pass runs exactly hires_steps (or the first pass's steps) of a schedule of
int(hires_steps / min(strength, 0.999)) steps, entered where that many remain; diffusers' img2img would run
int(N * strength) of N. Its noise is fresh, drawn at the hires size from each image's own seed, as A1111 draws it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from PIL import Image

from ldm.cpu.heap import release_free_memory
from ldm.errors import ConfigError
from ldm.generate import image_input
from ldm.generate.denoise import StepCallback, denoise, generators_for, guided_denoiser
from ldm.generate.image_settings import LATENT_UPSCALERS, hires_size
from ldm.generate.request import GenerationRequest
from ldm.generate.result import Result
from ldm.generate.txt2img import txt2img
from ldm.outputs.png import to_pil
from ldm.sampling import samplers

if TYPE_CHECKING:
    from ldm.generate.pipeline import Pipeline

DEFAULT_STRENGTH = 0.7  # A1111's and stable-diffusion.cpp's hires denoising strength


def second_pass_plan(request: GenerationRequest) -> samplers.Plan:
    steps = request.hires_steps or request.steps
    if request.strength <= 0:
        raise ConfigError(f"the hires fix's strength must be above 0 (0 would change nothing), got {request.strength}")
    total = int(steps / min(request.strength, 0.999))
    plan = samplers.plan(request.sampler, min(total, samplers.schedule.TRAIN_STEPS), karras=request.karras)
    return plan.last_steps(steps)


def upscale_size(request: GenerationRequest) -> tuple[tuple[int, int], tuple[int, int]]:
    """(size to upscale to, size to crop to): with both hires_resize sides, A1111 covers them, then crops."""
    target = hires_size(request)
    if request.hires_resize is None or 0 in request.hires_resize:
        return target, target
    w, h = target
    if request.width / request.height < w / h:
        return (w, w * request.height // request.width // 8 * 8), target
    return (h * request.width // request.height // 8 * 8, h), target


@torch.inference_mode()
def hires_fix(
    pipe: Pipeline,
    request: GenerationRequest,
    *,
    latents: torch.Tensor | None = None,
    callback: StepCallback | None = None,
    progress: bool = True,
) -> Result:
    if request.strength is None:
        request = request.replace(strength=DEFAULT_STRENGTH)
    request = request.with_seed()
    plan = second_pass_plan(request)  # checked before the first pass's minutes
    first = txt2img(pipe, request, latents=latents, callback=callback, progress=progress, decode=False)
    (up_w, up_h), (w, h) = upscale_size(request)
    factor = pipe.model.config.vae.downscale
    generators = generators_for(first.seeds)
    x = first.latents
    if request.hires_upscaler in LATENT_UPSCALERS:
        mode, antialias = LATENT_UPSCALERS[request.hires_upscaler]
        x = F.interpolate(x, size=(up_h // factor, up_w // factor), mode=mode, antialias=antialias)
    else:
        resample = Image.LANCZOS if request.hires_upscaler == "Lanczos" else Image.NEAREST
        pictures = to_pil(pipe.decode(x, tiling=request.vae_tiling, slicing=request.vae_slicing))
        x = torch.cat([pipe.encode_image(image_input.image_tensor(p.resize((up_w, up_h), resample)), [g])
                       for p, g in zip(pictures, generators, strict=True)])  # fmt: skip
        generators = generators_for(first.seeds)  # the noise is drawn fresh either way
    ty, tx = (up_h - h) // factor, (up_w - w) // factor
    x = x[:, :, ty // 2 : x.shape[2] - (ty + 1) // 2, tx // 2 : x.shape[3] - (tx + 1) // 2]
    prompts, negatives = request.batch()
    noise = samplers.initial_noise(tuple(x.shape), generators)
    denoiser = guided_denoiser(pipe, request, plan, prompts, negatives)
    x = denoise(pipe, request, denoiser, plan, noise, generators, init=x, steps=[callback], progress=progress)
    if pipe.device.type == "cpu":
        release_free_memory()
    images = to_pil(pipe.decode(x, tiling=request.vae_tiling, slicing=request.vae_slicing, decoder=request.vae_decoder))
    infotexts = [request.to_infotext(i, **pipe.model_info) for i in range(len(images))]
    return Result(images, first.seeds, infotexts, x, request)
