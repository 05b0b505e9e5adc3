"""img2img, inpainting and the hires fix against diffusers' pipelines on the same random SD v1 weights."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import DIFFUSERS_SCHEDULERS, E2E, random_model
from PIL import Image

from ldm import Pipeline
from ldm.checkpoints.convert import write_diffusers_folder, write_single_file
from ldm.errors import ConfigError
from ldm.generate import image_input

SAMPLERS = ("plms", "ddim", "euler", "euler_a", "heun", "dpmpp_2m", "dpmpp_2m_sde", "lms")
SCHEDULERS = {name: DIFFUSERS_SCHEDULERS[name] for name in SAMPLERS}
INPAINT = dataclasses.replace(E2E, unet=dataclasses.replace(E2E.unet, in_channels=9))


def models(tmp_path_factory, config, name):
    folder = tmp_path_factory.mktemp(name)
    tensors = random_model(config, seed=3)
    return write_single_file(tensors, folder / "m.safetensors", config), write_diffusers_folder(
        tensors, folder / "d", config
    )


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    single, folder = models(tmp_path_factory, E2E, "plain")
    return Pipeline.load(single, device="cpu"), folder


@pytest.fixture(scope="module")
def inpainting(tmp_path_factory):
    single, folder = models(tmp_path_factory, INPAINT, "inpaint")
    return Pipeline.load(single, device="cpu"), folder


def picture(width=64, height=48, seed=0) -> Image.Image:
    """A smooth picture with edges: something a VAE round trip keeps."""
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    base = np.stack([np.sin(x / 7 + c) * 90 + 128 + (y > height / 2) * 40 for c in rng.uniform(0, 3, 3)], -1)
    return Image.fromarray(base.clip(0, 255).astype(np.uint8))


def mask(width=64, height=48) -> Image.Image:
    """White box with grey (near one half) edges and sides that are no multiple of 8."""
    m = np.zeros((height, width), np.uint8)
    m[10:33, 21:50] = 255
    m[9, 21:50] = 120
    m[min(33, height - 1), 21:50] = 135
    return Image.fromarray(m, "L")


LOADED: dict = {}  # diffusers pipelines by folder and class, loaded once for the module


def reference(cls_name, folder, sampler):
    import diffusers

    key = (str(folder), cls_name)
    if key not in LOADED:
        LOADED[key] = getattr(diffusers, cls_name).from_pretrained(
            folder, safety_checker=None, requires_safety_checker=False
        )
        LOADED[key].set_progress_bar_config(disable=True)
        LOADED[key].original_scheduler_config = LOADED[key].scheduler.config  # what each sampler is built from
    pipe = LOADED[key]
    cls, extra = SCHEDULERS[sampler]
    pipe.scheduler = getattr(diffusers, cls).from_config(pipe.original_scheduler_config, **extra)
    return pipe


def gens(seed, n=2):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def close(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((ours - theirs).norm() / theirs.norm()).item()


def as_int(images):
    return [np.asarray(i).astype(int) for i in images]


IMG2IMG_CASES = [(sampler, strength) for sampler in SCHEDULERS for strength in (0.5, 0.999)] + [
    (sampler, strength) for sampler in ("plms", "euler", "dpmpp_2m") for strength in (1 / 6, 1.0)
]  # every sampler; the edges (one step of six, the whole schedule) for the three families


@pytest.mark.full  # every sampler end to end; the fast tier has them at the sampler level (tests/test_samplers.py)
@pytest.mark.parametrize(("sampler", "strength"), IMG2IMG_CASES)
def test_img2img_equals_diffusers(plain, sampler, strength):
    pipe, folder = plain
    ref = reference("StableDiffusionImg2ImgPipeline", folder, sampler)
    image = picture()
    ours = pipe.generate(pipe.request(prompt=("a red cube", "a cat"), negative_prompt="blurry", steps=6,
                                      sampler=sampler, seed=42, width=64, height=48, strength=strength),
                         image=image, progress=False)  # fmt: skip
    theirs = ref(["a red cube", "a cat"], negative_prompt=["blurry"] * 2, image=image, strength=strength,
                 num_inference_steps=6, generator=gens(42), output_type="np").images  # fmt: skip
    for a, b in zip(as_int(ours.images), (theirs * 255).round().astype(int), strict=True):
        assert a.shape == (48, 64, 3) and np.abs(a - b).max() <= 2, (sampler, strength, np.abs(a - b).max())
    assert f"Denoising strength: {strength}" in ours.infotexts[0]


def test_img2img_sizes_resize_modes_and_bad_input(plain):
    pipe, _ = plain
    odd = picture(70, 52)
    assert pipe.img2img(odd, "x", steps=2, seed=1, progress=False)[0].size == (64, 48)  # floored to 8
    for mode in ("just-resize", "crop", "fill"):
        fitted = image_input.fit(picture(80, 40), 64, 64, mode)
        assert fitted.size == (64, 64)
    crop, fill = image_input.fit(picture(80, 40), 64, 64, "crop"), image_input.fit(picture(80, 40), 64, 64, "fill")
    assert np.asarray(crop)[0].std() > 0 and np.array_equal(np.asarray(fill)[0], np.asarray(fill)[10])  # stretched
    rgba = Image.new("RGBA", (16, 16), (255, 0, 0, 0))
    assert image_input.to_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)  # transparent: flattened on white
    with pytest.raises(ConfigError, match="use a strength of at least 0.167"):
        pipe.img2img(picture(), "x", steps=6, strength=0.1, progress=False)
    with pytest.raises(ConfigError, match="strength must be"):
        pipe.img2img(picture(), "x", strength=1.5, progress=False)
    with pytest.raises(ConfigError, match="mask of the image's size"):
        pipe.inpaint(picture(), mask(64, 40), "x", steps=2, progress=False)


def inpaint_both(pipe, folder, sampler, strength, image, m):
    """Our inpainting result and diffusers' StableDiffusionInpaintPipeline latents, same weights and seeds."""
    ref = reference("StableDiffusionInpaintPipeline", folder, sampler)
    ours = pipe.generate(pipe.request(prompt=("a red cube", "a cat"), steps=5, sampler=sampler, seed=7, width=64,
                                      height=48, strength=strength), image=image, mask=m, progress=False)  # fmt: skip
    theirs = ref(["a red cube", "a cat"], image=image, mask_image=m, strength=strength, num_inference_steps=5,
                 height=48, width=64, generator=gens(7), output_type="latent").images  # fmt: skip
    return ours, theirs


@pytest.mark.parametrize(("sampler", "strength"), [("plms", 1.0), ("euler", 0.6), ("dpmpp_2m", 1.0), ("ddim", 0.6)])
def test_nine_channel_inpainting_equals_diffusers(inpainting, sampler, strength):
    ours, theirs = inpaint_both(*inpainting, sampler, strength, picture(), mask())
    assert close(ours.latents, theirs) <= 1e-4, sampler
    assert "Mask blur: 0" in ours.infotexts[0] and f"Denoising strength: {strength}" in ours.infotexts[0]


@pytest.mark.parametrize(
    ("sampler", "strength"),
    [("plms", 1.0), ("plms", 0.6), ("euler", 1.0), ("ddim", 0.6), ("heun", 0.6), ("euler_a", 1.0)],
)
def test_any_model_inpaints_as_diffusers_legacy_path_and_keeps_the_original_outside_the_mask(plain, sampler, strength):
    image, m = picture(), mask()
    ours, theirs = inpaint_both(*plain, sampler, strength, image, m)
    assert close(ours.latents, theirs) <= 1e-4, sampler
    keep = np.asarray(m) == 0  # the overlay: untouched pixels are the original's, exactly
    for out in as_int(ours.images):
        assert np.array_equal(out[keep], np.asarray(image).astype(int)[keep])
        assert np.abs(out[~keep] - np.asarray(image).astype(int)[~keep]).mean() > 1  # and the rest was repainted


def test_mask_rules_match_diffusers_processor():
    from diffusers.image_processor import VaeImageProcessor

    processor = VaeImageProcessor(vae_scale_factor=8, do_normalize=False, do_binarize=True, do_convert_grayscale=True)
    for m, size in ((mask(), (64, 48)), (mask(70, 50), (64, 48)), (mask().resize((128, 96)), (64, 48))):
        theirs = processor.preprocess(m, height=size[1], width=size[0])
        ours = image_input.binarize(image_input.mask_array(m, *size))
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("pad", [0, 8, 32])
def test_only_masked_box_matches_diffusers(pad):
    from diffusers.image_processor import VaeImageProcessor

    processor = VaeImageProcessor(vae_scale_factor=8)
    cases = []
    for box in ((0, 0, 5, 5), (10, 30, 60, 33), (30, 2, 32, 46), (40, 20, 41, 21), (50, 40, 64, 48)):
        m = np.zeros((48, 64), np.uint8)
        m[box[1] : box[3], box[0] : box[2]] = 255
        cases.append(m)
    for m in cases:
        for w, h in ((64, 64), (64, 32), (32, 64)):
            theirs = processor.get_crop_region(Image.fromarray(m, "L"), w, h, pad=pad)
            assert image_input.crop_region(m.astype(np.float32) / 255, pad, w, h) == tuple(theirs), (w, h)
    assert image_input.crop_region(np.zeros((48, 64)), pad, 64, 64) is None  # nothing masked: whole picture


def test_a1111_options_only_masked_blur_fill_outpaint(plain):
    pipe, _ = plain
    image, m = picture(), mask()
    settings = {"steps": 3, "seed": 2, "width": 32, "height": 32, "progress": False}
    out = pipe.inpaint(image, m, "x", mask_blur=4, inpaint_full_res=True, inpaint_padding=4, **settings)[0]
    far = np.zeros((48, 64), bool)
    far[40:, :10] = True  # far from the blurred mask
    assert out.size == image.size and np.array_equal(np.asarray(out)[far], np.asarray(image)[far])
    for fill in ("fill", "latent-noise", "latent-nothing"):
        assert pipe.inpaint(image, m, "x", strength=0.7, inpainting_fill=fill, **settings)[0].size == (32, 32)
    inverted = pipe.inpaint(image, m, "x", mask_invert=True, **settings | {"width": 64, "height": 48})[0]
    assert np.array_equal(np.asarray(inverted)[15:25, 25:45], np.asarray(image)[15:25, 25:45])  # white now kept
    canvas, border = image_input.outpaint_canvas(image, 16, 0, 8, 0)
    assert canvas.size == (80, 56) and np.asarray(border)[30, 30] == 0 and np.asarray(border)[30, 20] == 255
    grown = pipe.inpaint(canvas, border, "x", steps=3, seed=2, progress=False)[0]
    assert grown.size == (80, 56) and np.array_equal(np.asarray(grown)[30:, 40:], np.asarray(canvas)[30:, 40:])
    with pytest.raises(ConfigError, match="multiples of 8"):
        image_input.outpaint_canvas(image, 5, 0, 0, 0)


def test_a_nine_channel_model_does_txt2img_and_plain_img2img_as_a1111(inpainting):
    pipe, _ = inpainting
    images = pipe("x", steps=2, seed=1, width=64, height=48, progress=False)
    assert images[0].size == (64, 48) and np.asarray(images[0]).std() > 0
    assert pipe.img2img(picture(), "x", steps=2, seed=1, progress=False)[0].size == (64, 48)


@pytest.mark.parametrize(("sampler", "upscaler"), [("euler", "Latent"), ("dpmpp_2m", "Latent (bicubic antialiased)")])
def test_hires_fix_equals_diffusers_txt2img_then_upscaled_img2img(plain, sampler, upscaler):
    """diffusers has no hires fix; its composition with A1111's step semantics is the reference."""
    pipe, folder = plain
    import diffusers

    txt = reference("StableDiffusionPipeline", folder, sampler)
    img = diffusers.StableDiffusionImg2ImgPipeline(**txt.components)
    img.set_progress_bar_config(disable=True)
    hires_steps, strength = 4, 0.6
    ours = pipe.generate(pipe.request(prompt="a red cube", steps=5, sampler=sampler, seed=11, width=32, height=32,
                                      hires_scale=2, hires_steps=hires_steps, strength=strength,
                                      hires_upscaler=upscaler), progress=False)  # fmt: skip
    low = txt("a red cube", num_inference_steps=5, height=32, width=32, generator=gens(11, 1), output_type="latent")
    mode, antialias = {"Latent": ("bilinear", False), "Latent (bicubic antialiased)": ("bicubic", True)}[upscaler]
    up = F.interpolate(low.images, scale_factor=2, mode=mode, antialias=antialias)
    total = int(hires_steps / strength)  # A1111: exactly hires_steps of a longer schedule
    theirs = img("a red cube", image=up, strength=(hires_steps + 0.5) / total, num_inference_steps=total,
                 generator=gens(11, 1), output_type="latent").images  # fmt: skip
    assert close(ours.latents, theirs) <= 1e-4
    assert ours.images[0].size == (64, 64)
    text = ours.infotexts[0]
    assert (
        "Size: 32x32" in text
        and "Hires upscale: 2" in text
        and "Hires steps: 4" in text
        and "Denoising strength: 0.6" in text
    )


def test_hires_resize_and_pixel_upscalers(plain):
    pipe, _ = plain
    settings = {"prompt": "x", "steps": 2, "seed": 1, "width": 32, "height": 32}
    wide = pipe.generate(pipe.request(**settings, hires_resize=(64, 40)), progress=False)
    assert wide.images[0].size == (64, 40) and "Hires resize: 64x40" in wide.infotexts[0]
    kept_aspect = pipe.generate(
        pipe.request(**settings, hires_resize=(48, 0), hires_upscaler="Lanczos"), progress=False
    )
    assert kept_aspect.images[0].size == (48, 48)
