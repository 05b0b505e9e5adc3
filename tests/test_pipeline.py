"""End to end: our Pipeline against diffusers' StableDiffusionPipeline on the same random SD v1 weights."""

import dataclasses
import gc
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import DIFFUSERS_SCHEDULERS, E2E, mappings_of, needs_proc, random_model
from safetensors.torch import load_file

from ldm import Pipeline
from ldm.checkpoints import mapped_safetensors
from ldm.checkpoints.convert import write_diffusers_folder, write_single_file
from ldm.config import ModelConfig
from ldm.cpu.packing import PackedLayer
from ldm.errors import ConfigError
from ldm.models.layers import Upsample


# The tiny test architecture with CLIP's real vocabulary, so the real tokenizer's ids fit.
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("e2e")
    tensors = random_model(E2E)
    return write_single_file(tensors, folder / "tiny.safetensors", E2E), write_diffusers_folder(
        tensors, folder / "d", E2E
    )


@pytest.fixture(scope="module")
def pipe(checkpoint):
    return Pipeline.load(checkpoint[0], device="cpu")


@pytest.fixture(scope="module")
def reference(checkpoint):
    """diffusers loads the folder tools/convert.py's writer made: a real consumer of our diffusers export."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(checkpoint[1], safety_checker=None, requires_safety_checker=False)


SCHEDULERS = {name: DIFFUSERS_SCHEDULERS[name] for name in ("ddim", "plms", "euler_a", "dpmpp_2m", "dpmpp_2m_sde")}


@pytest.mark.parametrize(
    ("sampler", "karras", "width", "height"),
    [
        ("ddim", False, 64, 64),
        ("plms", False, 48, 80),
        ("euler_a", False, 64, 48),
        ("dpmpp_2m", False, 64, 64),
        ("dpmpp_2m", True, 80, 48),
        ("dpmpp_2m_sde", True, 64, 64),
    ],
)
def test_same_images_as_diffusers(pipe, reference, sampler, karras, width, height):
    import diffusers

    cls, extra = SCHEDULERS[sampler]
    reference.scheduler = getattr(diffusers, cls).from_config(
        reference.scheduler.config, **extra, **({"use_karras_sigmas": True} if karras else {})
    )
    settings = {"width": width, "height": height}
    ours = pipe(["a red cube", "a cat"], negative_prompt="blurry", steps=6, guidance=7.5, sampler=sampler,
                karras=karras, seed=42, progress=False, **settings)  # fmt: skip
    theirs = reference(["a red cube", "a cat"], negative_prompt=["blurry", "blurry"], num_inference_steps=6,
                       guidance_scale=7.5, generator=[torch.Generator().manual_seed(s) for s in (42, 43)],
                       **settings).images  # fmt: skip
    for a, b in zip(ours, theirs, strict=True):
        a, b = np.asarray(a).astype(int), np.asarray(b).astype(int)
        assert a.shape == (height, width, 3) and a.std() > 5  # a real picture, not a flat one
        assert np.abs(a - b).max() <= 2


def test_image_of_a_batch_reproduces_alone(pipe):
    request = pipe.request(prompt="a house", steps=3, seed=7, batch_size=3, sampler="euler_a", width=64, height=64)
    result = pipe.generate(request, progress=False)
    batch = result.images
    assert result.seeds == [7, 8, 9]
    assert all(f"Seed: {s}," in t for t, s in zip(result.infotexts, result.seeds, strict=True))
    assert result.latents.shape[:2] == (3, 4) and not hasattr(pipe, "last_seeds")
    alone = pipe("a house", steps=3, seed=8, sampler="euler_a", progress=False, width=64, height=64)
    # Equal up to float rounding: a batch of 3 runs other matmul blocking than a batch of 1.
    assert np.abs(np.asarray(batch[1]).astype(int) - np.asarray(alone[0])).max() <= 1
    assert np.abs(np.asarray(batch[0]).astype(int) - np.asarray(batch[1])).max() > 10


def test_guidance_one_and_negative_prompt_change_the_image(pipe):
    def make(**kw):
        return np.asarray(pipe("a tree", steps=3, seed=1, progress=False, width=64, height=64, **kw)[0]).astype(int)

    assert np.abs(make(guidance=1.0) - make(guidance=7.5)).max() > 0
    assert np.abs(make(negative_prompt="snow") - make()).max() > 0


def test_callback_sees_every_step(pipe):
    seen = []
    pipe(
        "x",
        steps=4,
        sampler="euler",
        seed=0,
        progress=False,
        width=64,
        height=64,
        callback=lambda i, n, x, denoised: seen.append((i, n)),
    )
    assert seen == [(0, 4), (1, 4), (2, 4), (3, 4)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"width": 500}, "multiple of 8"),
        ({"steps": 0}, "steps must be"),
        ({"guidance": float("nan")}, "guidance must be a finite"),
        ({"sampler": "nope"}, "unknown sampler"),
        ({"clip_skip": 5}, "clip_skip must be between 1 and 2"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"eta": 0.5, "sampler": "euler"}, "takes no eta; eta is for ddim"),
        ({"seed": -1}, "seed must be a whole number"),
    ],
)
def test_bad_settings_are_clear_errors(pipe, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        pipe("x", progress=False, **kwargs)


@pytest.fixture(scope="module")
def sd_v1_file() -> tuple[Path, Path]:
    """A random SD v1 single file (float16 on disk, as most files are) and a diffusers folder whose configs are SD
    v1.5's own (tests/data/sd_v1_5_configs.json), built once and kept between runs of the suite."""
    cache = Path(os.environ.get("LDM_TEST_CACHE") or Path.home() / ".cache" / "ldm-tests")
    single, folder = cache / "sd-v1-random-fp16.safetensors", cache / "sd-v1-random-diffusers"
    if not (single.is_file() and (folder / "model_index.json").is_file()):
        cfg = ModelConfig.preset("sd-v1")
        tensors = {k: v.half() for k, v in random_model(cfg).items()}
        write_single_file(tensors, single, cfg, force=True)
        write_diffusers_folder(tensors, folder, cfg, force=True)
    real = json.loads((Path(__file__).parent / "data" / "sd_v1_5_configs.json").read_text())
    for component, name in (("unet", "config"), ("vae", "config"), ("text_encoder", "config"),
                            ("scheduler", "scheduler_config")):  # fmt: skip
        (folder / component / f"{name}.json").write_text(json.dumps(real[component], indent=2))
    return single, folder


@pytest.mark.full
def test_real_sd_v1_shapes_give_diffusers_image_from_the_same_single_file(sd_v1_file):
    from diffusers import StableDiffusionPipeline

    single, folder = sd_v1_file
    reference = StableDiffusionPipeline.from_single_file(str(single), config=str(folder), local_files_only=True,
                                                         torch_dtype=torch.float32, safety_checker=None,
                                                         requires_safety_checker=False)  # fmt: skip
    reference.set_progress_bar_config(disable=True)
    prompt, negative = "a cabin on a snowy mountain", "blurry"
    theirs = reference(prompt, negative_prompt=negative, num_inference_steps=2, guidance_scale=7.5, width=64,
                       height=64, generator=torch.Generator().manual_seed(0)).images[0]  # fmt: skip
    del reference
    gc.collect()
    ours = Pipeline.load(single, device="cpu")("a cabin on a snowy mountain", negative_prompt=negative, steps=2,
                                               width=64, height=64, seed=0, progress=False)[0]  # fmt: skip
    a, b = np.asarray(ours).astype(int), np.asarray(theirs).astype(int)
    assert a.std() > 5  # a picture, not a flat field
    assert np.abs(a - b).max() <= 2


def test_vae_slicing_and_tiling_decode_the_same_picture(pipe):
    def decode(latents, slicing=False, tiling=False):
        return pipe.decode(latents, slicing=slicing, tiling=tiling)

    small = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(decode(small, slicing=True), decode(small), atol=1e-5, rtol=0)
    large = torch.randn(1, 4, 150, 80, generator=torch.Generator().manual_seed(1))  # 3 x 2 tiles of 64
    untiled, tiled = decode(large), decode(large, tiling=True)
    scale = pipe.model.config.vae.downscale
    assert tiled.shape == untiled.shape == (1, 3, 150 * scale, 80 * scale)
    # Random weights and per-tile norm statistics: close, not equal (tools/bench.py reports trained figures).
    assert (tiled - untiled).abs().mean() < 0.05, (tiled - untiled).abs().mean()


def test_a_float16_vae_that_overflows_decodes_again_in_float32(checkpoint, monkeypatch):
    half = Pipeline.load(checkpoint[0], device="cpu", dtype=torch.float16)
    vae = half.model.vae
    decode, seen = vae.decode, []

    def overflowing(z):  # float16 overflows as it does on some real images; float32 does not
        seen.append(z.dtype)
        out = decode(z)
        return (
            out.masked_fill(torch.ones_like(out, dtype=torch.bool), float("inf")) if z.dtype == torch.float16 else out
        )

    monkeypatch.setattr(vae, "decode", overflowing)
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    image = half.decode(latents)
    assert seen == [torch.float16, torch.float32] and torch.isfinite(image).all()
    assert half.vae_dtype == torch.float32 and next(vae.parameters()).dtype == torch.float32
    expected = Pipeline.load(checkpoint[0], device="cpu").decode(latents)
    torch.testing.assert_close(image, expected, atol=1e-2, rtol=0)  # float16-rounded weights, decoded in float32
    half.decode(latents)
    assert seen == [torch.float16, torch.float32, torch.float32]  # float32 from now on, no second overflow


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_gives_nearly_the_float32_image(pipe, checkpoint, dtype):
    half = Pipeline.load(checkpoint[0], device="cpu", dtype=dtype)
    assert next(half.model.unet.parameters()).dtype == dtype

    def make(p):
        return np.asarray(p("a red cube", steps=4, seed=5, progress=False, width=64, height=64)[0]).astype(int)

    error = np.abs(make(half) - make(pipe))
    assert error.mean() < 2 and error.max() <= 16, (error.mean(), error.max())


def test_compiled_unet_makes_the_same_image(checkpoint, pipe):
    compiled = Pipeline.load(checkpoint[0], device="cpu", compile=True)

    def make(p):
        return np.asarray(p("a red cube", steps=2, seed=5, progress=False, width=64, height=64)[0]).astype(int)

    assert np.abs(make(compiled) - make(pipe)).max() <= 1
    with pytest.raises(ConfigError, match="compile and offload"):
        Pipeline.load(checkpoint[0], device="cpu", compile=True, offload="model")


def encoder_batches(pipe: Pipeline) -> list[int]:
    """Records the batch size of every text encoder call from now on."""
    calls = []
    pipe.model.text_encoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    return calls


def test_each_distinct_prompt_is_encoded_once_and_remembered(checkpoint):
    pipe = Pipeline.load(checkpoint[0], device="cpu")
    prompts = ["a red circle", "", "a red circle", "a blue square"]
    with torch.no_grad():
        direct = pipe.model.text_encoder(pipe.tokenizer(prompts))
    calls = encoder_batches(pipe)
    context = pipe.encode(prompts, 1)
    torch.testing.assert_close(context, direct, rtol=0, atol=1e-6)
    assert calls == [3]
    pipe.encode(["a blue square", ""], 1)  # both remembered
    pipe.encode(["a blue square", "a green one"], 2)  # another clip_skip is another encoding
    assert calls == [3, 2]
    pipe(["a red circle"] * 2, negative_prompt="", steps=2, width=64, height=64, progress=False)
    assert calls == [3, 2]
    pipe(["a cat", "a dog"], negative_prompt="blurry", steps=2, width=64, height=64, progress=False)
    assert calls == [3, 2, 3]  # prompts and negative prompt in one encoder batch


def test_new_weights_are_never_served_a_stale_encoding(checkpoint):
    pipe = Pipeline.load(checkpoint[0], device="cpu")
    before = pipe.encode(["a red circle"], 1)
    with pipe.edit_weights("text_encoder") as weights:
        weights["text_model.final_layer_norm.bias"].add_(1.0)  # edited in place
    after = pipe.encode(["a red circle"], 1)
    torch.testing.assert_close(after, before + 1.0, rtol=0, atol=1e-5)
    with pipe.edit_weights("text_encoder") as weights:  # a packed layer gives its weight back to be edited
        weights["text_model.encoder.layers.0.mlp.fc2.weight"].mul_(2.0)
    assert (pipe.encode(["a red circle"], 1) - after).abs().max() > 1e-3
    pipe.model.text_encoder.double()  # cast: another dtype
    assert pipe.encode(["a red circle"], 1).dtype == torch.float64


def test_prompt_cache_keeps_only_the_most_recent_prompts(checkpoint):
    pipe = Pipeline.load(checkpoint[0], device="cpu")
    pipe.prompt_cache.size = 2
    calls = encoder_batches(pipe)
    for prompt in ("one", "two", "one", "three", "one", "two"):
        pipe.encode([prompt], 1)
    assert calls == [1, 1, 1, 1]  # "one" stays (used again), "two" was dropped for "three"
    assert len(pipe.prompt_cache.entries) == 2


@pytest.mark.parametrize("sampler", ["ddim", "plms", "euler_a", "dpmpp_2m"])
def test_v_prediction_model_gives_diffusers_image(tmp_path, sampler):
    """A U-Net that predicts v (config prediction_type, diffusers' scheduler prediction_type) samples as
    diffusers samples it, from our single file and from the diffusers folder we write."""
    import diffusers
    from diffusers import StableDiffusionPipeline

    config = dataclasses.replace(E2E, unet=dataclasses.replace(E2E.unet, prediction_type="v_prediction"))
    tensors = random_model(config, seed=3)
    folder = write_diffusers_folder(tensors, tmp_path / "d", config)
    reference = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    cls, extra = SCHEDULERS[sampler]
    reference.scheduler = getattr(diffusers, cls).from_config(reference.scheduler.config, **extra)
    assert reference.scheduler.config.prediction_type == "v_prediction"
    theirs = reference("a red cube", num_inference_steps=5, guidance_scale=7.5, width=64, height=64,
                       generator=torch.Generator().manual_seed(5)).images[0]  # fmt: skip
    for source in (write_single_file(tensors, tmp_path / "v.safetensors", config), folder):
        ours = Pipeline.load(source, device="cpu")
        assert ours.model.config.unet.prediction_type == "v_prediction"
        image = ours("a red cube", steps=5, sampler=sampler, seed=5, width=64, height=64, progress=False)[0]
        a, b = np.asarray(image).astype(int), np.asarray(theirs).astype(int)
        assert a.std() > 5 and np.abs(a - b).max() <= 2


@needs_proc
def test_on_a_cpu_weights_are_packed_on_first_use_and_their_file_pages_given_back(checkpoint, monkeypatch):
    # A model's worth of mappings: the tiny file would be read into memory otherwise (mapped_safetensors.py).
    monkeypatch.setattr(mapped_safetensors, "PLAIN_READ_BELOW", 0)
    monkeypatch.setattr(mapped_safetensors, "OWN_MAPPING_FROM", 0)
    path = checkpoint[0].resolve()
    pipe = Pipeline.load(path, device="cpu")
    mapped = mappings_of(path)
    pipe("a red cube", steps=1, width=64, height=64, progress=False)
    packed = [m for m in pipe.model.unet.modules() if isinstance(m, PackedLayer) and id(m) not in folded(pipe)]
    assert packed and all(m.packed is not None for m in packed)
    gc.collect()
    assert mappings_of(path) <= mapped - len(packed)  # each packed layer's dense weight was unmapped


def folded(pipe: Pipeline) -> set[int]:
    """The U-Net's upsampling convs that ran folded (ldm/cpu/folded.py): they never pack."""
    ups = [m for m in pipe.model.unet.modules() if isinstance(m, Upsample)]
    return {id(m.conv) for m in ups if isinstance(m.conv, PackedLayer) and m.conv.packed is None}


@needs_proc
def test_a_pickles_weights_are_packed_too_and_make_the_same_image(checkpoint, tmp_path, monkeypatch):
    """A .ckpt's storages get a mapping each (mapped_pickle.py), so packing gives their pages back too."""
    # A model's worth of mappings: the tiny file would be read into memory otherwise (mapped_safetensors.py).
    monkeypatch.setattr(mapped_safetensors, "PLAIN_READ_BELOW", 0)
    monkeypatch.setattr(mapped_safetensors, "OWN_MAPPING_FROM", 0)
    tensors = load_file(checkpoint[0])
    path = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": tensors, "optimizer_states": [torch.zeros(5)]}, path)
    from_pickle = Pipeline.load(path, device="cpu", config=E2E)
    from_safetensors = Pipeline.load(checkpoint[0], device="cpu")

    def make(p):
        return np.asarray(p("a red cube", steps=2, seed=5, progress=False, width=64, height=64)[0]).astype(int)

    mapped = mappings_of(path)
    assert np.abs(make(from_pickle) - make(from_safetensors)).max() <= 1
    packed = [
        m for m in from_pickle.model.unet.modules() if isinstance(m, PackedLayer) and id(m) not in folded(from_pickle)
    ]
    assert packed and all(m.packed is not None for m in packed)
    gc.collect()
    assert mappings_of(path) <= mapped - len(packed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_float16_file_converts_each_packed_weight_once_when_it_packs_and_computes_as_its_values(tmp_path, dtype):
    """The U-Net's and VAE's packed layers keep the file's float16 weights until their first call, and the image
    is the one the same values give from a float32 file."""
    tensors = {k: v.half() for k, v in random_model(E2E, seed=4).items()}
    half = write_single_file(tensors, tmp_path / "half.safetensors", E2E)
    full = write_single_file({k: v.float() for k, v in tensors.items()}, tmp_path / "full.safetensors", E2E)
    pipe = Pipeline.load(half, device="cpu", dtype=dtype)
    waiting = [m for c in pipe.components() for m in c.modules() if isinstance(m, PackedLayer)]
    assert waiting and all(m.weight_as_read.dtype == torch.float16 for m in waiting)
    assert all(p.dtype == dtype for c in pipe.components() for p in c.parameters())  # what they list
    settings = dict(prompt="a red cube", steps=3, width=64, height=64, seed=2, progress=False)
    image = np.asarray(pipe(**settings)[0])
    assert np.array_equal(image, np.asarray(Pipeline.load(full, device="cpu", dtype=dtype)(**settings)[0]))
    used = [m for m in waiting if m.packed is not None]  # the VAE encoder's layers wait on (txt2img needs none)
    assert used and all(m.packed[0].dtype == dtype and "weight" not in m._parameters for m in used)
    tokens = pipe.model.text_encoder.text_model.embeddings.token_embedding
    assert tokens.table_as_read.dtype == torch.float16  # a prompt reads its rows of the table, nothing more
