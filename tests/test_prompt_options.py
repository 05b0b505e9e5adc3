"""The prompt-control options of ldm-txt2img as a user runs them: --emphasis, --lora PATH:WEIGHT, <lora:...> tags
found in --lora-dir, embeddings from the default embeddings/ folder; what they did is in the PNG's parameters and
equals the API's image; bad input is one line and exit 2."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import E2E, random_model
from PIL import Image
from safetensors.torch import save_file

from ldm import GenerationRequest, Pipeline
from ldm.checkpoints.convert import write_single_file
from ldm.cli.prompt_options import parse_lora_option
from ldm.errors import ConfigError

TE = "text_model.encoder.layers.0.self_attn.q_proj"
Q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_q"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_single_file(random_model(E2E, seed=2), tmp_path_factory.mktemp("opts") / "tiny.safetensors", E2E)


def lora(path, seed):
    g = torch.Generator().manual_seed(seed)
    te = f"lora_te_{TE.replace('.', '_')}"
    shapes = {"lora_down.weight": (4, 32), "lora_up.weight": (32, 4)}
    save_file({f"{m}.{k}": torch.randn(*shape, generator=g) for m in (Q, te) for k, shape in shapes.items()}, path)
    return path


def run(cwd, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "ldm.cli.txt2img", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env=env)  # fmt: skip


def test_options_act_and_are_recorded_as_the_api_does(checkpoint, tmp_path):
    (tmp_path / "embeddings").mkdir()
    save_file({"emb_params": torch.randn(2, 32)}, tmp_path / "embeddings" / "qzxstyle.safetensors")
    (tmp_path / "models" / "Lora").mkdir(parents=True)
    lora(tmp_path / "models" / "Lora" / "ink.safetensors", 1)
    extra = lora(tmp_path / "extra.safetensors", 2)
    prompt = "a (lighthouse:1.3) in qzxstyle <lora:ink:0.7>"
    args = ["--checkpoint", str(checkpoint), "--outdir", "out", "--width", "64", "--height", "64", "--steps", "3",
            "--sampler", "ddim", "--seed", "4", "--quiet", "--prompt", prompt, "--emphasis", "no-norm",
            "--lora", f"{extra}:0.5"]  # fmt: skip
    done = run(tmp_path, *args)
    assert done.returncode == 0, done.stderr
    png = Image.open(tmp_path / done.stdout.strip())
    request = GenerationRequest.from_infotext(png.text["parameters"])
    assert request.prompt == prompt and request.emphasis == "no-norm" and "Emphasis: No norm" in png.text["parameters"]
    assert [e.split(":")[0] for e in request.extra["Lora hashes"].split(", ")] == ["extra", "ink"]
    assert request.extra["TI hashes"].startswith("qzxstyle: ")

    pipe = Pipeline.load(checkpoint, device="cpu")
    pipe.lora_dir = tmp_path / "models" / "Lora"
    pipe.load_embedding(tmp_path / "embeddings" / "qzxstyle.safetensors")
    pipe.load_lora(extra, te=0.5)
    api = pipe.generate(request, progress=False)
    assert np.abs(np.asarray(api.images[0]).astype(int) - np.asarray(png.convert("RGB")).astype(int)).max() <= 1
    assert api.infotexts[0] == png.text["parameters"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (
            ["--prompt", "x <lora:inc:1>", "--lora-dir", "models/Lora"],
            "no LoRA named 'inc' in models/Lora; closest there: ink",
        ),
        (["--prompt", "x", "--lora", "missing.safetensors:0.5"], "missing.safetensors does not exist"),
        (["--prompt", "x", "--embeddings-dir", "nowhere"], "--embeddings-dir nowhere is not a folder"),
    ],
)
def test_bad_prompt_options_are_one_line_and_exit_2(checkpoint, tmp_path, args, words):
    (tmp_path / "models" / "Lora").mkdir(parents=True)
    lora(tmp_path / "models" / "Lora" / "ink.safetensors", 1)
    done = run(tmp_path, "--checkpoint", str(checkpoint), "--outdir", "out", "--steps", "2", "--quiet", *args)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and words in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()


def test_lora_option_parsing(tmp_path):
    lora(tmp_path / "a.safetensors", 3)
    assert parse_lora_option(f"{tmp_path / 'a.safetensors'}:0.25", tmp_path) == (tmp_path / "a.safetensors", 0.25)
    assert parse_lora_option(str(tmp_path / "a.safetensors"), tmp_path) == (tmp_path / "a.safetensors", 1.0)
    assert parse_lora_option("a:2", tmp_path) == (tmp_path / "a.safetensors", 2.0)  # a name in the folder
    with pytest.raises(ConfigError, match="no LoRA named 'b'"):
        parse_lora_option("b", tmp_path)
