"""Weighted, chunked prompt encodings against references: diffusers' encode_prompt for plain prompts, the notes'
formula over transformers' CLIP chunk by chunk for weighted ones, and diffusers' StableDiffusionPipeline given the
reference embeddings for whole images of long prompts (round2-references.md section 3.4)."""

import numpy as np
import pytest
import torch
from helpers import ddim_reference, single_file_and_folder
from test_chunking import reference_chunks

from ldm import Pipeline


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return single_file_and_folder(tmp_path_factory.mktemp("weighted"), seed=4)


@pytest.fixture(scope="module")
def pipe(checkpoint):
    return Pipeline.load(checkpoint[0], device="cpu")


@pytest.fixture(scope="module")
def reference(checkpoint):
    return ddim_reference(checkpoint[1])


@torch.no_grad()
def reference_context(reference, prompt: str, clip_skip: int = 1, emphasis: str = "original") -> torch.Tensor:
    """(1, 77 k, C): each chunk through transformers' CLIPTextModel, then z * w rescaled to the chunk's old mean."""
    zs = []
    for ids, weights in reference_chunks(prompt, reference.tokenizer_ours):
        out = reference.text_encoder(torch.tensor([ids]), output_hidden_states=True)
        norm = getattr(reference.text_encoder, "text_model", reference.text_encoder).final_layer_norm
        z = out[0] if clip_skip == 1 else norm(out[2][-clip_skip])  # transformers 5 has no text_model level
        w = torch.tensor(weights)[None, :, None]
        weighted = z * w
        if emphasis == "original":
            weighted = weighted * (z.mean() / weighted.mean())
        zs.append(weighted)
    return torch.cat(zs, dim=1)


@pytest.fixture(autouse=True)
def _tokenizer_for_reference(reference, pipe):
    reference.tokenizer_ours = pipe.tokenizer  # the notes' algorithm over the same BPE (checked in test_tokenizer)


LONG = ", ".join(["a (castle:1.3) on a hill", "[misty] forest", "((golden light))", "river"] * 9)  # ~150 tokens


def test_plain_prompts_give_encode_prompts_context(pipe, reference):
    prompts, negative = ["a red cube on a table", "a cat"], "blurry"
    ours = pipe.encode([*prompts, negative, negative], 1)
    with torch.no_grad():
        cond, uncond = reference.encode_prompt(prompts, "cpu", 1, True, [negative, negative])
    torch.testing.assert_close(ours, torch.cat([cond, uncond]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("clip_skip", [1, 2])
@pytest.mark.parametrize("emphasis", ["original", "no-norm"])
@pytest.mark.parametrize("prompt", ["a (red:1.4) cube on a [table]", LONG, "a cube BREAK (on a table:0.7)"])
def test_weighted_long_prompts_give_the_reference_context(pipe, reference, prompt, clip_skip, emphasis):
    ours = pipe.encode([prompt], clip_skip, emphasis)
    expected = reference_context(reference, prompt, clip_skip, emphasis)
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_weights_change_the_context_and_ignore_drops_them(pipe):
    plain = pipe.encode(["a red cube"], 1)
    assert (pipe.encode(["a (red:1.5) cube"], 1) - plain).abs().max() > 1e-3
    torch.testing.assert_close(pipe.encode(["a (red:1.5) cube"], 1, "ignore"), plain, rtol=0, atol=0)


def test_long_prompt_images_equal_diffusers_given_the_reference_embeddings(pipe, reference):
    """Prompt of 2 chunks, negative of 1: ours runs them at their own lengths (tiled); diffusers is given the
    reference embeddings with the negative tiled to the prompt's length, the equal-result form of the notes."""
    negative = "blurry, (low quality:1.2)"
    settings = {"width": 64, "height": 64}
    ours = pipe(LONG, negative_prompt=negative, steps=4, sampler="ddim", seed=9, progress=False, **settings)[0]
    cond, uncond = reference_context(reference, LONG), reference_context(reference, negative)
    assert cond.shape[1] == 2 * 77 and uncond.shape[1] == 77
    theirs = reference(prompt_embeds=cond, negative_prompt_embeds=uncond.repeat(1, 2, 1), num_inference_steps=4,
                       generator=torch.Generator().manual_seed(9), **settings).images[0]  # fmt: skip
    a, b = np.asarray(ours).astype(int), np.asarray(theirs).astype(int)
    assert a.std() > 5 and np.abs(a - b).max() <= 2


def test_the_cache_keys_on_emphasis(pipe):
    weighted = pipe.encode(["a (red:1.5) cube"], 1, "original")
    assert (pipe.encode(["a (red:1.5) cube"], 1, "no-norm") - weighted).abs().max() > 0
    torch.testing.assert_close(pipe.encode(["a (red:1.5) cube"], 1, "original"), weighted, rtol=0, atol=0)
