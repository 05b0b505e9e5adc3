"""ldm-txt2img as a user runs it: a subprocess, files on disk, one-line errors."""

import os
import subprocess
import sys

import pytest
from PIL import Image
from test_pipeline import E2E, random_model

from ldm.convert import write_single_file
from ldm.images import parse_parameters


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_single_file(random_model(E2E), tmp_path_factory.mktemp("cli") / "tiny.safetensors", E2E)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ldm.cli", *args], capture_output=True, text=True, timeout=300,
                          preexec_fn=lambda: os.umask(0o022))  # fmt: skip


def base_args(checkpoint, outdir) -> list[str]:
    return ["--checkpoint", str(checkpoint), "--outdir", str(outdir), "--width", "64", "--height", "48",
            "--steps", "3", "--quiet"]  # fmt: skip


def test_writes_a_png_whose_parameters_read_back_and_never_overwrites(checkpoint, tmp_path):
    args = [*base_args(checkpoint, tmp_path), "--prompt", "a red cube, studio light", "--negative-prompt", "blur",
            "--sampler", "dpmpp_2m", "--karras", "--seed", "1234", "--guidance", "6.5"]  # fmt: skip
    first = run(*args)
    assert first.returncode == 0, first.stderr
    path = tmp_path / "00000-1234.png"
    assert first.stdout.strip() == str(path)
    params = parse_parameters(Image.open(path).text["parameters"])
    assert params["prompt"] == "a red cube, studio light" and params["negative_prompt"] == "blur"
    expected = {"steps": 3, "sampler": "dpmpp_2m", "karras": True, "guidance": 6.5, "seed": 1234, "width": 64,
                "height": 48, "model": "tiny"}  # fmt: skip
    assert {k: params[k] for k in expected} == expected and len(params["model_hash"]) == 10
    assert path.stat().st_mode & 0o777 == 0o644  # not the private 0600 of the temporary file (umask 022 here)
    second = run(*args)
    assert second.returncode == 0 and second.stdout.strip() == str(tmp_path / "00001-1234.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000-1234.png", "00001-1234.png"]


def test_batches_and_iterations_number_seeds_in_order(checkpoint, tmp_path):
    result = run(*base_args(checkpoint, tmp_path), "--prompt", "x", "--seed", "5", "--batch-size", "2", "--n-iter", "2")
    assert result.returncode == 0, result.stderr
    assert [line.rsplit("/", 1)[-1] for line in result.stdout.split()] == [
        "00000-5.png", "00001-6.png", "00002-7.png", "00003-8.png"
    ]  # fmt: skip


def test_a_random_seed_is_recorded_when_none_is_given(checkpoint, tmp_path):
    result = run(*base_args(checkpoint, tmp_path), "--prompt", "x")
    path = result.stdout.strip()
    assert parse_parameters(Image.open(path).text["parameters"])["seed"] == int(path.rsplit("-", 1)[1][:-4])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sampler", "nope"], "invalid choice: 'nope'"),
        (["--width", "500"], "width must be a positive multiple of 8"),
        (["--steps", "0"], "steps must be"),
        (["--guidance", "abc"], "invalid float value: 'abc'"),
        (["--checkpoint", "/no/such/model.safetensors"], "does not exist"),
        (["--outdir", "/proc/forbidden"], "choose a writable --outdir"),
        (["--karras", "--sampler", "ddim"], "has no Karras schedule"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_no_file(checkpoint, tmp_path, args, message):
    result = run(*base_args(checkpoint, tmp_path / "out"), "--prompt", "x", *args)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "out").exists()
