"""img2img and inpainting: an init image (and a mask) -> the VAE's latents -> noised part way -> sampled -> images.

Diffusers' StableDiffusionImg2ImgPipeline and StableDiffusionInpaintPipeline define the numbers, draw for draw
from each image's own generator (seed + i): the init image's posterior sample, then the noise. Inpainting, as
diffusers does it, samples the init and masked pictures once, from the first image's generator, for the batch.
A 9-channel inpainting U-Net sees [latents, mask, masked-image latents]; any 4-channel model inpaints by putting
the kept region back after every step, re-noised to where the step ended (clean after the last). The final
picture keeps the original pixels outside the mask exactly (the overlay). AUTOMATIC1111's options on top:
mask blur, "only masked" with padding, and masked content for 4-channel models.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps

from ldm.cpu.heap import release_free_memory
from ldm.errors import ConfigError
from ldm.generate import image_input
from ldm.generate.denoise import StepCallback, denoise, generators_for, guided_denoiser
from ldm.generate.request import GenerationRequest, check_for_model
from ldm.generate.result import Result
from ldm.outputs.png import to_pil
from ldm.sampling import samplers

if TYPE_CHECKING:
    from ldm.generate.pipeline import Pipeline


def is_inpainting_model(pipe: Pipeline) -> bool:
    return pipe.model.config.unet.in_channels == pipe.model.config.vae.z_channels * 2 + 1


@torch.inference_mode()
def img2img(
    pipe: Pipeline,
    request: GenerationRequest,
    image: Image.Image,
    mask: Image.Image | None = None,
    *,
    callback: StepCallback | None = None,
    progress: bool = True,
) -> Result:
    """`request` at its width x height from `image` (fitted by its resize mode); with `mask`, only where it is white
    (or black, mask_invert). strength None: 0.75 for img2img, 1.0 for inpainting (diffusers' and A1111's)."""
    check_for_model(request, pipe.model.config.text_encoder.num_hidden_layers)
    if request.strength is None:
        request = request.replace(strength=1.0 if mask is not None else 0.75)
    source = image_input.to_rgb(image)
    if mask is None and is_inpainting_model(pipe):  # A1111: an inpainting model repaints everything
        mask = Image.new("L", source.size, 255)
    if mask is not None and request.mask_blur is None:
        request = request.replace(mask_blur=0)
    request = request.with_seed()
    if mask is None:
        work, work_mask, box, full_mask = (
            image_input.fit(source, request.width, request.height, request.resize_mode),
            None,
            None,
            None,
        )
    else:
        if mask.size != source.size:
            sizes = f"the mask is {mask.width}x{mask.height} but the image is {source.width}x{source.height}"
            raise ConfigError(f"{sizes}; give a mask of the image's size")
        if not image_input.mask_array(mask, *mask.size, request.mask_invert).any():
            raise ConfigError("the mask repaints nothing (all black); paint white where the picture should change")
        work, work_mask, box, full_mask = _inpaint_region(source, mask, request)
    latents, seeds = _sample(pipe, request, work, work_mask, callback, progress)
    if pipe.device.type == "cpu":
        release_free_memory()
    images = to_pil(
        pipe.decode(latents, tiling=request.vae_tiling, slicing=request.vae_slicing, decoder=request.vae_decoder)
    )
    if work_mask is not None:
        images = [_compose(generated, source, work, work_mask, box, full_mask) for generated in images]
    infotexts = [request.to_infotext(i, **pipe.model_info) for i in range(len(images))]
    return Result(images, seeds, infotexts, latents, request)


def _inpaint_region(source: Image.Image, mask: Image.Image, request: GenerationRequest):
    """The picture and blurred mask to sample at width x height: the whole (fitted) picture, or the mask's box
    ("only masked"), with the box and the full-size mask to paste back through."""
    w, h = request.width, request.height
    if request.inpaint_full_res:
        full = image_input.blur(image_input.mask_array(mask, *source.size, request.mask_invert), request.mask_blur)
        box = image_input.crop_region(full, request.inpaint_padding, w, h)
        if box is not None:  # an empty mask falls back to the whole picture, as A1111 does
            crop = source.crop(box)
            crop_mask = Image.fromarray(np.round(full * 255).astype(np.uint8)).crop(box)
            work = image_input.fit(crop, w, h, "fill")
            work_mask = np.asarray(image_input.fit(crop_mask.convert("RGB"), w, h, "fill").convert("L"), np.float32)
            return work, work_mask / 255, box, full
    work = image_input.fit(source, w, h, request.resize_mode)
    fitted_mask = image_input.fit(mask.convert("RGB") if mask.mode != "RGBA" else mask, w, h, request.resize_mode)
    work_mask = image_input.blur(image_input.mask_array(fitted_mask, w, h, request.mask_invert), request.mask_blur)
    return work, work_mask, None, None


def _compose(generated: Image.Image, source: Image.Image, work: Image.Image, mask: np.ndarray, box, full_mask):
    if box is None:
        return image_input.overlay(generated, work, mask)
    x1, y1, x2, y2 = box
    pasted = source.copy()
    pasted.paste(generated.resize((x2 - x1, y2 - y1), Image.LANCZOS), (x1, y1))
    return image_input.overlay(pasted, source, full_mask)


def _sample(pipe: Pipeline, request: GenerationRequest, work: Image.Image, mask: np.ndarray | None,
            callback: StepCallback | None, progress: bool) -> tuple[torch.Tensor, list[int]]:  # fmt: skip
    model = pipe.model
    prompts, negatives = request.batch()
    seeds = [request.seed + i for i in range(len(prompts))]
    generators = generators_for(seeds)
    plan = samplers.plan(request.sampler, request.steps, karras=request.karras)
    entered = plan.from_strength(request.strength)
    pixels = image_input.image_tensor(work)
    factor = model.config.vae.downscale
    if mask is None:
        init = pipe.encode_image(pixels, generators)  # draw 1: the posterior sample
        noise = samplers.initial_noise(tuple(init.shape), generators)  # draw 2
        denoiser = guided_denoiser(pipe, request, plan, prompts, negatives)
        return denoise(pipe, request, denoiser, entered, noise, generators, init=init, steps=[callback],
                       progress=progress), seeds  # fmt: skip
    binary = image_input.binarize(mask)
    nine_channels = is_inpainting_model(pipe)
    full_strength = request.strength == 1
    image_latents = None
    # Diffusers' inpainting encodes the one picture once, from the first image's generator, for the whole batch.
    batch = len(prompts)
    if not nine_channels or not full_strength:
        image_latents = pipe.encode_image(pixels, generators[:1]).expand(batch, -1, -1, -1)  # draw 1
    shape = (len(prompts), model.config.vae.z_channels, request.height // factor, request.width // factor)
    noise = samplers.initial_noise(shape, generators)  # draw 2
    masked = pipe.encode_image(pixels * (binary < 0.5), generators[:1])  # draw 3, for 4-channel models too
    masked = masked.expand(batch, -1, -1, -1)
    small_mask = image_input.latent_mask(binary, factor).to(pipe.device)
    init = None if full_strength else image_latents
    run_plan = plan if full_strength else entered
    if nine_channels:
        concat = torch.cat([small_mask.expand(len(prompts), -1, -1, -1), masked.to(pipe.device)], dim=1)
        denoiser = guided_denoiser(pipe, request, plan, prompts, negatives, concat=concat.to(pipe.dtype))
        return denoise(pipe, request, denoiser, run_plan, noise, generators, init=init, steps=[callback],
                       progress=progress), seeds  # fmt: skip
    init = _masked_content(request, init, small_mask, pixels, mask, pipe, generators)
    kept_latents, kept_noise = image_latents.to(pipe.device), noise.to(pipe.device)

    def keep_original(i: int, n: int, x: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
        sigma = run_plan.sigma_after(i)
        # the original re-noised to where the step ended, clean after the last (in x = x0 + sigma * noise)
        kept = kept_latents + sigma * kept_noise if i < n - 1 else kept_latents * math.sqrt(sigma**2 + 1)
        return (1 - small_mask) * kept + small_mask * x

    denoiser = guided_denoiser(pipe, request, plan, prompts, negatives)
    return denoise(pipe, request, denoiser, run_plan, noise, generators, init=init,
                   steps=[keep_original, callback], progress=progress), seeds  # fmt: skip


def _masked_content(request, init, small_mask, pixels, mask, pipe, generators):
    """A1111's masked content for a 4-channel model: the original (default), its surroundings blurred in ("fill"),
    noise or nothing in the latents under the mask."""
    if init is None or request.inpainting_fill == "original":
        return init
    if request.inpainting_fill == "fill":
        picture = Image.fromarray(np.round((pixels[0].permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.uint8))
        filled = fill(picture, Image.fromarray(np.round(mask * 255).astype(np.uint8)))
        return pipe.encode_image(image_input.image_tensor(filled), generators)
    small_mask = small_mask.to(init.device)
    if request.inpainting_fill == "latent-noise":
        return init * (1 - small_mask) + samplers.initial_noise(tuple(init.shape), generators) * small_mask
    return init * (1 - small_mask)  # latent-nothing


def fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's masking.fill: the masked area painted with ever sharper blurs of what surrounds it."""
    result = Image.new("RGBA", image.size)
    kept = Image.new("RGBa", image.size)
    kept.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blurred = kept.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            result.alpha_composite(blurred)
    return result.convert("RGB")
