"""ldm-txt2img as a user runs it: a subprocess, files on disk, one-line errors."""

import dataclasses
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import E2E, random_model
from PIL import Image

from ldm import GenerationRequest
from ldm.checkpoints.convert import write_single_file


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_single_file(random_model(E2E), tmp_path_factory.mktemp("cli") / "tiny.safetensors", E2E)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ldm.cli.txt2img", *args], capture_output=True, text=True, timeout=300,
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
    request = GenerationRequest.from_infotext(Image.open(path).text["parameters"])
    assert request.prompt == "a red cube, studio light" and request.negative_prompt == "blur"
    expected = {"steps": 3, "sampler": "dpmpp_2m", "karras": True, "guidance": 6.5, "seed": 1234, "width": 64,
                "height": 48}  # fmt: skip
    assert {k: getattr(request, k) for k in expected} == expected
    assert request.extra["Model"] == "tiny" and len(request.extra["Model hash"]) == 10
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
    seed = GenerationRequest.from_infotext(Image.open(path).text["parameters"]).seed
    assert seed == int(path.rsplit("-", 1)[1][:-4])


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    """A corrupt checkpoint, a config with an unknown field, and a 9-channel (inpainting) model (which works)."""
    folder = tmp_path_factory.mktemp("bad")
    (folder / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    (folder / "config.json").write_text('{"unet": {"model_channels": 32, "wings": 2}}')
    inpaint = dataclasses.replace(E2E, unet=dataclasses.replace(E2E.unet, in_channels=9))
    write_single_file(random_model(inpaint), folder / "inpaint.safetensors", inpaint)
    return folder


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device", "nonsense"], "unknown device 'nonsense'"),
        (["--device", "cuda"], "no CUDA device; use --device cpu"),
        (["--attention", "xformers"], "needs a CUDA device"),
        (["--batch-size", "0"], "--batch-size and --n-iter must be at least 1"),
        (["--height", "0"], "height must be a positive multiple of 8"),
        (["--clip-skip", "5"], "clip_skip must be between 1 and 2"),
        (["--eta", "-1", "--sampler", "ddim"], "eta must be a finite number >= 0"),
        (["--eta", "0.5", "--sampler", "euler"], "takes no eta"),
        (["--checkpoint", "{bad}/corrupt.safetensors"], "corrupt.safetensors"),
        (["--config", "{bad}/config.json"], "wings"),
        (["--hires-scale", "0.5"], "hires scale must be"),
        (["--hires-resize", "1000x"], "is not WxH"),
        (["--hires-scale", "2", "--hires-strength", "0"], "strength must be above 0"),
    ],
)
def test_each_error_path_exits_2_one_line_no_traceback_no_file(checkpoint, bad_files, tmp_path, args, message):
    args = [a.replace("{bad}", str(bad_files)) for a in args]
    result = run(*base_args(checkpoint, tmp_path / "out"), "--prompt", "x", *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.startswith("ldm-txt2img: error: ")
    assert not (tmp_path / "out").exists()


def test_an_inpainting_model_makes_txt2img_images_and_the_hires_fix_is_recorded(checkpoint, bad_files, tmp_path):
    args = base_args(bad_files / "inpaint.safetensors", tmp_path / "inpainted")
    result = run(*args, "--prompt", "x", "--seed", "4")
    assert result.returncode == 0 and result.stdout.strip().endswith("-4.png"), result.stderr
    refused = run(*args, "--prompt", "x", "--hires-scale", "2")
    assert refused.returncode == 2 and "hires fix needs an ordinary" in refused.stderr
    args = base_args(checkpoint, tmp_path / "out")
    result = run(*args, "--prompt", "x", "--seed", "4", "--hires-scale", "1.5", "--hires-steps", "2")
    assert result.returncode == 0, result.stderr
    with Image.open(result.stdout.split()[0]) as image:
        assert image.size == (96, 72)
        recorded = GenerationRequest.from_infotext(image.text["parameters"])
    assert (recorded.width, recorded.hires_scale, recorded.hires_steps, recorded.strength) == (64, 1.5, 2, 0.7)


def test_an_interrupt_exits_130_and_leaves_no_file(checkpoint, tmp_path):
    args = [
        *base_args(checkpoint, tmp_path / "out"),
        "--prompt",
        "x",
        "--steps",
        "1000",
        "--sampler",
        "euler",
        "--width",
        "512",
        "--height",
        "512",
    ]  # minutes of sampling: the interrupt lands in the middle
    args.remove("--quiet")  # the progress bar says when sampling has begun
    with subprocess.Popen([sys.executable, "-m", "ldm.cli.txt2img", *args], stderr=subprocess.PIPE, text=True) as p:
        seen = ""
        while "sampling" not in seen:
            seen += p.stderr.read(1)
            assert seen or p.poll() is None
        p.send_signal(signal.SIGINT)
        rest = p.stderr.read()
        assert p.wait(timeout=60) == 130
    # The last thing on the terminal (after the progress bar, which clears its line with a carriage return).
    last = [line.strip() for line in re.split(r"[\r\n]", rest) if line.strip()][-1]
    assert last == "ldm-txt2img: interrupted" and "Traceback" not in rest
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_an_interrupt_while_the_bar_is_drawn_still_ends_on_its_own_line(checkpoint, tmp_path, monkeypatch, capsys):
    """The race clean-clone CI runs hit: Ctrl-C lands right after the bar's first draw, inside its constructor,
    before tqdm notes that it drew (so the bar cannot clear its line)."""
    import ldm.generate.denoise as txt2img_module
    from ldm.cli.txt2img import main

    class InterruptedBar(txt2img_module.tqdm):
        def refresh(self, *args, **kwargs):
            super().refresh(*args, **kwargs)
            if not hasattr(self, "last_print_t"):  # still in the constructor
                raise KeyboardInterrupt

    monkeypatch.setattr(txt2img_module, "tqdm", InterruptedBar)
    args = [*base_args(checkpoint, tmp_path / "out"), "--prompt", "x"]
    args.remove("--quiet")
    assert main(args) == 130
    err = capsys.readouterr().err
    assert "sampling" in err  # the bar was drawn
    last = [line.strip() for line in re.split(r"[\r\n]", err) if line.strip()][-1]
    assert last == "ldm-txt2img: interrupted"


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


@pytest.fixture(scope="module")
def baseline(checkpoint, tmp_path_factory):
    """The image the options below are compared with: same prompt, seed and size, every option at its default."""
    out = tmp_path_factory.mktemp("baseline")
    result = run(*base_args(checkpoint, out), "--prompt", "a red cube", "--seed", "3", "--sampler", "ddim")
    assert result.returncode == 0, result.stderr
    return np.asarray(Image.open(result.stdout.strip())).astype(int)


@pytest.mark.parametrize(
    ("options", "max_difference", "recorded"),
    [
        (["--dtype", "bfloat16"], 48, None),
        (["--quantize", "int8"], 48, None),
        (["--attention", "math"], 1, None),
        (["--attention", "sliced"], 1, None),
        (["--offload", "model"], 1, None),
        (["--offload", "sequential"], 1, None),
        (["--vae-tiling"], 1, None),
        (["--vae-slicing"], 1, None),
        (["--config", "{config}"], 0, None),
        (["--clip-skip", "2"], None, "Clip skip: 2"),
        (["--eta", "0.5"], None, "Eta: 0.5"),
    ],
)
def test_each_option_runs_end_to_end(checkpoint, baseline, tmp_path, options, max_difference, recorded):
    """Options that only change how the image is computed keep it (within their precision); those that change
    the image change it, and the PNG's infotext records them."""
    config = tmp_path / "config.json"
    config.write_text(E2E.to_json())
    options = [o.replace("{config}", str(config)) for o in options]
    result = run(*base_args(checkpoint, tmp_path), "--prompt", "a red cube", "--seed", "3", "--sampler", "ddim",
                 *options)  # fmt: skip
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip())
    image = np.asarray(Image.open(path)).astype(int)
    infotext = Image.open(path).text["parameters"]
    if max_difference is not None:
        assert np.abs(image - baseline).max() <= max_difference
    else:
        assert np.abs(image - baseline).max() > 0 and recorded in infotext


def test_a_short_lived_command_flushes_everything_it_printed_and_exits_with_its_code(tmp_path):
    """ldm/cli/short_lived.py ends the process without the interpreter's teardown: nothing printed may be lost."""
    script = ("import logging, sys\nfrom ldm.cli.short_lived import run_short_lived\n"
              "def main():\n    print('x' * 100_000, end='')\n    print('y' * 100_000, end='', file=sys.stderr)\n"
              "    logging.basicConfig(filename=sys.argv[1])\n    logging.getLogger('ldm').warning('logged')\n"
              "    return 3\nrun_short_lived(main)\n")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "log")], capture_output=True, text=True)
    assert result.returncode == 3 and result.stdout == "x" * 100_000 and result.stderr == "y" * 100_000
    assert "logged" in (tmp_path / "log").read_text()
