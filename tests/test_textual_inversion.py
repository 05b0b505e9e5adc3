"""Textual inversion: our context for a prompt with a trigger word == diffusers' load_textual_inversion +
encode_prompt, for 1- and 3-vector embeddings in A1111's .pt and kohya's safetensors; images too; bad files refused."""

import os

import numpy as np
import pytest
import torch
from helpers import E2E, ddim_reference, single_file_and_folder
from safetensors.torch import save_file

from ldm import Pipeline
from ldm.errors import LdmError
from ldm.generate.request import GenerationRequest
from ldm.text.chunking import PLACEHOLDER, chunk_prompt

WIDTH = E2E.text_encoder.hidden_size
TOKEN = "zqxtoken"  # not in CLIP's vocabulary: diffusers adds it as a token of its own


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return single_file_and_folder(tmp_path_factory.mktemp("ti"), seed=5)


def reference_pipe(folder):
    return ddim_reference(folder)


def write_embedding(folder, vectors: torch.Tensor, layout: str):
    """A1111's .pt (its `name` differs from the file's stem: A1111 ignores it) or kohya's emb_params safetensors."""
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "a1111":
        path = folder / f"{TOKEN}.pt"
        data = {"string_to_token": {"*": 265}, "string_to_param": {"*": torch.nn.Parameter(vectors.clone())},
                "name": "something-else", "step": 1200, "sd_checkpoint": None, "sd_checkpoint_name": None}  # fmt: skip
        torch.save(data, path)
    else:
        path = folder / f"{TOKEN}.safetensors"
        save_file({"emb_params": vectors.clone()}, path)
    return path


@pytest.mark.parametrize("layout", ["a1111", "kohya"])
@pytest.mark.parametrize("count", [1, 3])
def test_context_equals_diffusers_textual_inversion(checkpoint, tmp_path, layout, count):
    vectors = torch.randn(count, WIDTH, generator=torch.Generator().manual_seed(count))
    path = write_embedding(tmp_path / layout, vectors, layout)
    ours = Pipeline.load(checkpoint[0], device="cpu")
    prompt = f"a photo of {TOKEN}, red"
    before = ours.encode([prompt], 1)
    assert ours.load_embedding(path).name == TOKEN
    context = ours.encode([prompt], 1)
    reference = reference_pipe(checkpoint[1])
    reference.load_textual_inversion(str(path), token=TOKEN)
    with torch.no_grad():
        expected, _ = reference.encode_prompt(prompt, "cpu", 1, False)
    torch.testing.assert_close(context, expected, rtol=1e-5, atol=1e-5)
    assert (context - before).abs().max() > 1e-2  # the cache did not serve the encoding from before the load


def test_images_equal_diffusers_with_a_3_vector_embedding(checkpoint, tmp_path):
    path = write_embedding(tmp_path, torch.randn(3, WIDTH, generator=torch.Generator().manual_seed(7)), "kohya")
    ours = Pipeline.load(checkpoint[0], device="cpu")
    ours.load_embedding(path)
    reference = reference_pipe(checkpoint[1])
    reference.load_textual_inversion(str(path), token=TOKEN)
    prompt, settings = f"a photo of {TOKEN}, red", {"width": 64, "height": 64}
    result = ours.generate(ours.request(prompt=prompt, steps=4, sampler="ddim", seed=3, **settings), progress=False)
    theirs = reference(prompt, num_inference_steps=4, generator=torch.Generator().manual_seed(3), **settings).images[0]
    a, b = np.asarray(result.images[0]).astype(int), np.asarray(theirs).astype(int)
    assert a.std() > 5 and np.abs(a - b).max() <= 2
    # A1111's TI hashes: the file's short SHA-256, written into the parameters and read back.
    import hashlib

    expected = f"{TOKEN}: {hashlib.sha256(path.read_bytes()).hexdigest()[:12]}"
    assert f'TI hashes: "{expected}"' in result.infotexts[0]
    again = GenerationRequest.from_infotext(result.infotexts[0])
    assert again.extra["TI hashes"] == expected and again.to_infotext() == result.infotexts[0]


def test_an_embedding_never_straddles_a_chunk_and_takes_the_weight(checkpoint, tmp_path):
    pipe = Pipeline.load(checkpoint[0], device="cpu")
    pipe.load_embedding(write_embedding(tmp_path, torch.randn(3, WIDTH), "kohya"))
    first, second = chunk_prompt("word " * 73 + TOKEN, pipe.tokenizer, embeddings=pipe.embeddings)
    assert first.ids[74:] == [pipe.tokenizer.end] * 3 and not first.embeddings
    assert second.ids[1:4] == [PLACEHOLDER] * 3 and [at for at, _ in second.embeddings] == [1]
    (weighted,) = chunk_prompt(f"a ({TOKEN}:1.2)", pipe.tokenizer, embeddings=pipe.embeddings)
    assert weighted.weights[2:5] == [1.2] * 3


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch ran-code",))


def test_bad_embedding_files_are_refused_in_one_line(checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pipe = Pipeline.load(checkpoint[0], device="cpu")
    torch.save({"string_to_param": {"*": RunsCode()}}, tmp_path / "evil.pt")
    save_file({"clip_g": torch.zeros(1, 1280), "clip_l": torch.zeros(1, 768)}, tmp_path / "xl.safetensors")
    save_file({"emb_params": torch.zeros(2, 1024)}, tmp_path / "sd2.safetensors")
    save_file({"emb_params": torch.full((2, WIDTH), float("nan"))}, tmp_path / "nan.safetensors")
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    cases = {"evil.pt": "refused", "xl.safetensors": "SDXL", "sd2.safetensors": "SD 2.x",
             "nan.safetensors": "NaN", "corrupt.safetensors": "not a readable safetensors"}  # fmt: skip
    for name, words in cases.items():
        with pytest.raises(LdmError, match=words) as caught:
            pipe.load_embedding(tmp_path / name)
        assert "\n" not in str(caught.value)
    assert not (tmp_path / "ran-code").exists() and pipe.embeddings.revision == 0


def test_a_folder_skips_embeddings_for_other_models(checkpoint, tmp_path):
    pipe = Pipeline.load(checkpoint[0], device="cpu")
    write_embedding(tmp_path / "sub", torch.randn(2, WIDTH), "kohya")  # found below the folder too
    save_file({"emb_params": torch.zeros(2, 1024)}, tmp_path / "sd2thing.safetensors")
    assert [e.name for e in pipe.embeddings.load_folder(tmp_path)] == [TOKEN]
    assert [p.name for p in pipe.embeddings.skipped] == ["sd2thing.safetensors"]
