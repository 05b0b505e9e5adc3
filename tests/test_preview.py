"""Previews of the x0 estimate during sampling, and TAESD as the final decoder, through the public Pipeline."""

import numpy as np
import pytest
import torch
from helpers import E2E, random_model
from safetensors.torch import save_file

from ldm import GenerationRequest, Pipeline
from ldm.checkpoints.convert import write_single_file
from ldm.errors import ConfigError
from ldm.generate.preview import SD_V1_RGB, Preview, approx_decode, approx_rgb
from ldm.generate.tiny_decoder import BUILTIN_TAESD
from ldm.models.taesd import TAESD, TAESDConfig
from ldm.outputs.png import to_pil

TINY_TAESD = TAESDConfig(channels=8, encoder_blocks=(1, 1), decoder_blocks=(1, 1))  # 2x, as E2E's VAE


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("preview")
    checkpoint = write_single_file(random_model(E2E), folder / "tiny.safetensors", E2E)
    torch.manual_seed(1)
    taesd = TAESD(TINY_TAESD)
    save_file({k: v.contiguous() for k, v in taesd.state_dict().items()}, str(folder / "tiny-taesd.safetensors"))
    return checkpoint, folder / "tiny-taesd.safetensors"


@pytest.fixture(scope="module")
def pipe(files):
    return Pipeline.load(files[0], device="cpu", taesd=files[1])


def settings(pipe, **kw) -> GenerationRequest:
    return pipe.request(prompt="a red cube", steps=5, seed=3, width=64, height=48, sampler="dpmpp_2m", **kw)


@pytest.mark.parametrize("method", ["approx", "taesd", "full"])
def test_a_preview_never_changes_the_image(pipe, method):
    plain = pipe.generate(settings(pipe), progress=False)
    shown = []
    preview = Preview(lambda i, n, im: shown.append((i, n, im.size)), method, every=2)
    result = pipe.generate(settings(pipe), progress=False, preview=preview)
    assert result.images[0].tobytes() == plain.images[0].tobytes()
    assert torch.equal(result.latents, plain.latents)
    assert shown == [(1, 5, (64, 48)), (3, 5, (64, 48))]  # every 2nd step, never the last


def test_the_preview_is_the_denoised_estimate_of_image_0(pipe):
    estimates, shown = [], []
    pipe.generate(settings(pipe, batch_size=2), progress=False, callback=lambda i, n, x, d: estimates.append(d),
                  preview=Preview(lambda i, n, im: shown.append(im), "taesd"))  # fmt: skip
    assert len(estimates) == 5 and len(shown) == 4 and estimates[0].shape == (2, 4, 24, 32)
    taesd = pipe.preview_taesd or pipe.taesd  # the bfloat16 copy where this CPU has native bfloat16
    expected = to_pil(taesd.decode(estimates[2][:1].to(taesd.decoder[1].weight.dtype)).float())[0]
    assert shown[2].tobytes() == expected.tobytes()


@pytest.mark.parametrize("native", [True, False])
def test_previews_decode_in_bfloat16_only_where_the_cpu_has_it_and_final_images_never(files, native, monkeypatch):
    from ldm.generate import tiny_decoder

    monkeypatch.setattr(tiny_decoder, "native_bfloat16", lambda: native)
    pipe = Pipeline.load(files[0], device="cpu", taesd=files[1])
    assert (pipe.preview_taesd is not None) == native and pipe.taesd.decoder[1].weight.dtype == torch.float32
    if native:
        assert pipe.preview_taesd.decoder[1].weight.dtype == torch.bfloat16
    z = torch.randn(1, 4, 24, 32, generator=torch.Generator().manual_seed(0))
    fast = tiny_decoder.taesd_decode(pipe, z, preview=True)
    exact = tiny_decoder.taesd_decode(pipe, z)
    assert fast.dtype == exact.dtype == torch.float32
    assert torch.equal(fast, exact) != native and (fast - exact).abs().max() < 0.05


def test_a_bare_function_previews_approx_after_each_step(pipe):
    shown = []
    pipe("x", steps=3, width=64, height=64, seed=0, sampler="euler", progress=False,
         preview=lambda i, n, im: shown.append(im.size))  # fmt: skip
    assert shown == [(64, 64), (64, 64)]


def test_taesd_as_the_decoder_is_recorded_and_reads_back(pipe):
    full = pipe.generate(settings(pipe), progress=False)
    fast = pipe.generate(settings(pipe, vae_decoder="taesd"), progress=False)
    assert torch.equal(full.latents, fast.latents)
    assert fast.images[0].tobytes() == to_pil(pipe.taesd.decode(fast.latents))[0].tobytes()
    assert fast.images[0].tobytes() != full.images[0].tobytes()
    assert "VAE: taesd" in fast.infotexts[0] and "VAE:" not in full.infotexts[0]
    assert GenerationRequest.from_infotext(fast.infotexts[0]).vae_decoder == "taesd"
    other = GenerationRequest.from_infotext(full.infotexts[0].replace("Steps:", "VAE: vae-ft-mse.safetensors, Steps:"))
    assert other.vae_decoder == "full" and other.extra["VAE"] == "vae-ft-mse.safetensors"


def test_without_a_taesd_both_uses_fail_before_sampling(files):
    plain = Pipeline.load(files[0], device="cpu")
    steps = []
    with pytest.raises(ConfigError, match="--preview taesd needs a TAESD.*--taesd"):
        plain.generate(settings(plain), callback=lambda *a: steps.append(a), progress=False,
                       preview=Preview(print, "taesd"))  # fmt: skip
    with pytest.raises(ConfigError, match="--vae-decoder taesd needs a TAESD"):
        plain.generate(settings(plain, vae_decoder="taesd"), callback=lambda *a: steps.append(a), progress=False)
    assert steps == []


def test_a_taesd_that_does_not_fit_the_model_is_refused(files, tmp_path):
    sd_taesd = TAESD(TAESDConfig(channels=8))
    save_file({k: v.contiguous() for k, v in sd_taesd.state_dict().items()}, str(tmp_path / "taesd.safetensors"))
    with pytest.raises(ConfigError, match="does not fit this model.*1/8.*1/2"):
        Pipeline.load(files[0], device="cpu", taesd=tmp_path / "taesd.safetensors")


@pytest.mark.parametrize(("kwargs", "message"), [({"method": "nn"}, "unknown preview method"),
                                                 ({"every": 0}, "from 1 up")])  # fmt: skip
def test_bad_preview_settings_are_one_line_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Preview(print, **kwargs)
    with pytest.raises(ConfigError, match="vae_decoder must be one of full, taesd"):
        GenerationRequest(vae_decoder="tiny")


def test_approx_is_a1111_s_linear_map_upscaled():
    rgb = approx_rgb(None)
    assert torch.equal(rgb[:4], torch.tensor(SD_V1_RGB)) and not rgb[4].any()
    latents = torch.zeros(1, 4, 2, 3)
    latents[0, 3, 1, 2] = 1.0  # channel 4 alone, at one position
    image = approx_decode(latents, rgb, 8)
    assert image.shape == (1, 3, 16, 24)
    assert not image[0, :, :8].any() and not image[0, :, :, :16].any()  # nearest upscale: one 8x8 block lit
    assert torch.equal(image[0, :, 8:, 16:], torch.tensor(SD_V1_RGB[3])[:, None, None].expand(3, 8, 8))


@pytest.mark.skipif(not BUILTIN_TAESD.is_file(), reason="the built-in TAESD is not in this checkout")
def test_the_built_in_model_previews_and_decodes_with_its_own_taesd():
    pipe = Pipeline.load(device="cpu")
    assert pipe.taesd is None and pipe.taesd_file == BUILTIN_TAESD  # loaded on first use: most commands never preview
    assert not torch.equal(approx_rgb(pipe.source), approx_rgb(None))  # its own fitted map, not SD v1's
    request = pipe.request(prompt="a large red circle at the top left on a white background", seed=0)
    full, fast = (pipe.generate(request.replace(vae_decoder=d), progress=False) for d in ("full", "taesd"))
    assert pipe.taesd.config.downscale == pipe.model.config.vae.downscale
    a, b = (np.asarray(r.images[0]).astype(float) / 255 for r in (full, fast))
    assert 10 * np.log10(1 / ((a - b) ** 2).mean()) > 20  # dB against the full decoder


def test_a_full_preview_under_model_offload_hands_the_device_back_to_the_u_net(files):
    pipe = Pipeline.load(files[0], device="cpu", offload="model", taesd=files[1])
    plain = pipe.generate(settings(pipe), progress=False)
    on_device = []  # checked at each step's callback, which runs before that step's preview
    unet = id(pipe.model.unet)
    result = pipe.generate(settings(pipe), progress=False, preview=Preview(lambda *a: None, "full"),
                           callback=lambda *a: on_device.append(pipe.offload.active == unet))  # fmt: skip
    assert on_device == [True] * 5
    assert result.images[0].tobytes() == plain.images[0].tobytes()
