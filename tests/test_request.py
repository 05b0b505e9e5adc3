"""GenerationRequest: every setting checked in one place, and a round trip with AUTOMATIC1111's infotext."""

import dataclasses

import pytest

from ldm import GenerationRequest
from ldm.errors import ConfigError
from ldm.generate.request import sampler_from_display
from ldm.sampling.samplers import SPECS

# Texts as AUTOMATIC1111 wrote them (its v1.9 style, and the pre-1.6 style with Karras in the sampler name).
A1111_NEW = (
    "masterpiece, best quality, (red hair:1.2), a girl on a pier\n"
    "Negative prompt: lowres, bad anatomy, (worst quality:1.4)\n"
    "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 3862146123, Size: 512x768, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.5, Clip skip: 2, Hires upscale: 2, "
    'Hires upscaler: Latent, Lora hashes: "add_detail: 7c6bad76eb54", Version: v1.9.4'
)
A1111_OLD = (
    "a castle on a hill, oil painting\n"
    "Steps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 1234, Size: 512x512, Model hash: 81761151, "
    "Model: sd-v1-4, ENSD: 31337, Eta: 0.67"
)
A1111_KARRAS_IN_NAME = "a fox\nSteps: 30, Sampler: DPM++ 2M Karras, CFG scale: 6, Seed: 5, Size: 640x448"


def test_defaults_are_sd_v1s():
    r = GenerationRequest(prompt="x")
    assert (r.steps, r.guidance, r.sampler, r.width, r.height, r.clip_skip, r.eta) == (50, 7.5, "plms", 512, 512, 1, 0)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"width": 500}, "width must be a positive multiple of 8"),
        ({"height": 0}, "height must be a positive multiple of 8"),
        ({"steps": 0}, "steps must be a whole number from 1"),
        ({"guidance": float("inf")}, "guidance must be a finite number"),
        ({"sampler": "dpm_fast"}, "unknown sampler 'dpm_fast'"),
        ({"sampler": "euler_a", "karras": True}, "has no Karras schedule"),
        ({"eta": 0.3}, "takes no eta"),
        ({"eta": -1.0, "sampler": "ddim"}, "eta must be a finite number >= 0"),
        ({"clip_skip": 0}, "clip_skip must be a whole number from 1"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"seed": -5}, "seed must be a whole number"),
        ({"prompt": ("a", "b"), "negative_prompt": ("c",)}, "one negative prompt or one per prompt"),
        ({"prompt": ["a"]}, "as a str or a tuple"),
    ],
)
def test_every_setting_is_checked_with_a_one_line_error(changes, message):
    with pytest.raises(ConfigError, match=message) as caught:
        GenerationRequest(**{"prompt": "x", **changes})
    assert "\n" not in str(caught.value)


def test_a_request_is_frozen_and_replace_checks_again():
    r = GenerationRequest(prompt="x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.steps = 3
    assert r.replace(steps=None, guidance=3.0) == dataclasses.replace(r, guidance=3.0)  # None keeps the value
    with pytest.raises(ConfigError):
        r.replace(width=7)


def test_what_we_write_we_read_back_for_every_sampler():
    for name, spec in SPECS.items():
        request = GenerationRequest(
            prompt='a red circle, on white: "minimal"',
            negative_prompt="blurry,\nlow quality",
            steps=23,
            guidance=6.5,
            sampler=name,
            karras=spec.karras,
            width=512,
            height=384,
            clip_skip=2,
            eta=0.25 if "eta" in spec.options else 0.0,
            seed=1234,
        )
        text = request.to_infotext(model_hash="0123456789", model="v1-5")
        assert f"Sampler: {spec.display}," in text and "Seed: 1234," in text and "Size: 512x384" in text
        back = GenerationRequest.from_infotext(text)
        assert back == request, name
        assert back.extra == {"Model hash": "0123456789", "Model": "v1-5"}
        assert back.to_infotext() == text  # the extra fields are written back where they were


def test_each_image_of_a_batch_has_its_own_prompt_and_seed():
    request = GenerationRequest(prompt=("a cat", "a dog"), negative_prompt=("", "rain"), batch_size=2, seed=10)
    texts = [request.to_infotext(i) for i in range(4)]
    assert [t.split("\n")[0] for t in texts] == ["a cat", "a cat", "a dog", "a dog"]
    assert ["Seed: 10," in texts[0], "Seed: 13," in texts[3], "Negative prompt: rain" in texts[3]] == [True] * 3
    assert "Negative prompt" not in texts[0]


def test_real_automatic1111_texts_are_read_and_unknown_fields_kept():
    new = GenerationRequest.from_infotext(A1111_NEW)
    assert new.prompt == "masterpiece, best quality, (red hair:1.2), a girl on a pier"
    assert new.negative_prompt == "lowres, bad anatomy, (worst quality:1.4)"
    assert (new.steps, new.sampler, new.karras, new.guidance, new.seed) == (28, "dpmpp_2m", True, 7.0, 3862146123)
    assert (new.width, new.height, new.clip_skip) == (512, 768, 2)
    assert (new.strength, new.hires_scale, new.hires_upscaler, new.hires_steps) == (0.5, 2, "Latent", 0)
    assert new.extra == {
        "Model hash": "6ce0161689",
        "Model": "v1-5-pruned-emaonly",
        "Lora hashes": "add_detail: 7c6bad76eb54",
        "Version": "v1.9.4",
    }
    rewritten = new.to_infotext()
    assert "Denoising strength: 0.5, Hires upscale: 2, Hires upscaler: Latent, Lora hashes" in rewritten
    assert 'Lora hashes: "add_detail: 7c6bad76eb54"' in rewritten and "Version: v1.9.4" in rewritten
    assert GenerationRequest.from_infotext(rewritten) == new

    old = GenerationRequest.from_infotext(A1111_OLD)
    assert (old.sampler, old.eta, old.seed, old.negative_prompt) == ("euler_a", 0.0, 1234, "")
    assert old.extra["ENSD"] == "31337" and old.extra["Eta"] == "0.67"  # Euler a takes no eta: kept, not used
    assert GenerationRequest.from_infotext(A1111_KARRAS_IN_NAME).karras is True


@pytest.mark.parametrize(("name", "sampler", "karras"), [("euler a", "euler_a", False), ("dpmpp_2m", "dpmpp_2m", False),
                                                         ("dpm++ 2m karras", "dpmpp_2m", True)])  # fmt: skip
def test_sampler_names_are_read_in_any_case_and_as_ldm_names_them(name, sampler, karras):
    assert sampler_from_display(name) == (sampler, karras)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x\nSteps: 20, Sampler: DPM++ SDE, CFG scale: 7, Seed: 1, Size: 512x512", "SDE' is not one ldm has"),
        ("x\nSteps: twenty, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x512", "not a number"),
        ("x\nSteps: 20, Sampler: Euler, Schedule type: Exponential, CFG scale: 7, Seed: 1", "schedule type"),
    ],
)
def test_infotext_ldm_cannot_run_is_a_clear_error(text, message):
    with pytest.raises(ConfigError, match=message):
        GenerationRequest.from_infotext(text)


def test_a_random_seed_is_drawn_per_request_not_from_the_random_module():
    import random

    random.seed(0)
    first = GenerationRequest(prompt="x").with_seed().seed
    random.seed(0)
    assert GenerationRequest(prompt="x").with_seed().seed != first


def test_image_settings_round_trip_in_a1111s_words_and_bad_ones_are_clear():
    inpaint = GenerationRequest(prompt="x", seed=1, strength=0.6, mask_blur=4, mask_invert=True,
                                inpaint_full_res=True, inpaint_padding=48, inpainting_fill="latent-noise")  # fmt: skip
    text = inpaint.to_infotext()
    assert "Denoising strength: 0.6, Mask blur: 4, Mask mode: Inpaint not masked, Masked content: latent noise" in text
    assert "Inpaint area: Only masked, Masked area padding: 48" in text
    hires = GenerationRequest(prompt="x", seed=1, strength=0.7, hires_resize=(1024, 0), hires_steps=10,
                              hires_upscaler="Latent (bicubic antialiased)")  # fmt: skip
    assert "Hires resize: 1024x0, Hires steps: 10, Hires upscaler: Latent (bicubic antialiased)" in hires.to_infotext()
    for request in (inpaint, hires, GenerationRequest(prompt="x", seed=1, strength=0.3, resize_mode="crop")):
        assert GenerationRequest.from_infotext(request.to_infotext()) == request
    assert "Denoising" not in GenerationRequest(prompt="x", seed=1).to_infotext()  # txt2img writes none of them
    assert "Hires upscale: 2," in GenerationRequest(prompt="x", seed=1, strength=0.7, hires_scale=2.0).to_infotext()
    bad_settings = [({"strength": 1.5}, "strength must be"), ({"resize_mode": "stretch"}, "resize mode"),
                    ({"hires_upscaler": "ESRGAN_4x"}, "hires upscaler"), ({"hires_resize": (1004, 0)}, "multiples"),
                    ({"inpainting_fill": "noise"}, "inpainting fill"), ({"mask_blur": -1}, "mask blur")]  # fmt: skip
    for bad, message in bad_settings:
        with pytest.raises(ConfigError, match=message):
            GenerationRequest(prompt="x", **bad)


@pytest.mark.parametrize("emphasis", ["original", "no-norm", "ignore", "none"])
def test_emphasis_and_network_hashes_round_trip(emphasis):
    extra = {"Lora hashes": "ink: 0123456789ab, oil: ba9876543210", "TI hashes": "qzxstyle: 00ff00ff00ff"}
    request = GenerationRequest(prompt="a (cat:1.2) <lora:ink:0.5>", seed=1, emphasis=emphasis, extra=extra)
    text = request.to_infotext()
    assert ("Emphasis" in text) == (emphasis != "original")  # written when not the default, as A1111 does
    assert 'Lora hashes: "ink: 0123456789ab, oil: ba9876543210"' in text
    again = GenerationRequest.from_infotext(text)
    assert again == request and again.extra == extra and again.to_infotext() == text
    a1111 = "x\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x512, Emphasis: No norm"
    assert GenerationRequest.from_infotext(a1111).emphasis == "no-norm"
    with pytest.raises(ConfigError, match="unknown emphasis 'strong'"):
        GenerationRequest(emphasis="strong")
