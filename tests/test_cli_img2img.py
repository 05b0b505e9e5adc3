"""ldm-img2img end to end: img2img, inpainting and outpainting from files, and every bad input as one line."""

import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import E2E, random_model
from PIL import Image

from ldm import GenerationRequest
from ldm.checkpoints.convert import write_single_file


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("img2img")
    write_single_file(random_model(E2E), folder / "tiny.safetensors", E2E)
    y, x = np.mgrid[0:48, 0:64]
    picture = np.stack([x * 4, y * 5, (x + y) * 2], -1).clip(0, 255).astype(np.uint8)
    Image.fromarray(picture).save(folder / "init.png")
    mask = np.zeros((48, 64), np.uint8)
    mask[8:30, 16:40] = 255
    Image.fromarray(mask, "L").save(folder / "mask.png")
    Image.new("L", (32, 32)).save(folder / "small-mask.png")
    Image.new("L", (64, 48)).save(folder / "black-mask.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return folder


def run(files, outdir, *args: str) -> subprocess.CompletedProcess:
    base = ["--checkpoint", str(files / "tiny.safetensors"), "--outdir", str(outdir), "--steps", "3", "--quiet",
            "--prompt", "a blue square", "--seed", "5"]  # fmt: skip
    return subprocess.run([sys.executable, "-m", "ldm.cli.img2img", *base, *args], capture_output=True, text=True,
                          timeout=300, preexec_fn=lambda: os.umask(0o022))  # fmt: skip


def written(result) -> tuple[Image.Image, GenerationRequest]:
    assert result.returncode == 0, result.stderr
    with Image.open(result.stdout.split()[0]) as image:
        image.load()
        return image, GenerationRequest.from_infotext(image.text["parameters"])


def test_img2img_writes_the_images_size_and_records_its_strength(files, tmp_path):
    image, request = written(run(files, tmp_path, "--init-image", str(files / "init.png"), "--strength", "0.5"))
    assert image.size == (64, 48) and request.strength == 0.5
    resized, request = written(run(files, tmp_path, "--init-image", str(files / "init.png"), "--width", "32",
                                   "--height", "32", "--resize-mode", "crop"))  # fmt: skip
    assert resized.size == (32, 32) and request.resize_mode == "crop" and request.strength == 0.75


def test_inpainting_keeps_the_pixels_outside_the_mask(files, tmp_path):
    init = np.asarray(Image.open(files / "init.png"))
    image, request = written(run(files, tmp_path, "--init-image", str(files / "init.png"), "--mask",
                                 str(files / "mask.png"), "--mask-blur", "0"))  # fmt: skip
    out = np.asarray(image)
    assert np.array_equal(out[35:], init[35:]) and not np.array_equal(out[10:28, 18:38], init[10:28, 18:38])
    assert (request.strength, request.mask_blur) == (1.0, 0)
    box = ["--inpaint-only-masked", "--width", "32", "--height", "32"]
    image, request = written(run(files, tmp_path, "--init-image", str(files / "init.png"), "--mask",
                                 str(files / "mask.png"), *box))  # fmt: skip
    assert image.size == (64, 48) and request.inpaint_full_res and request.mask_blur == 4  # A1111's default blur
    assert np.array_equal(np.asarray(image)[42:, :8], init[42:, :8])


def test_outpainting_grows_the_picture(files, tmp_path):
    image, _ = written(run(files, tmp_path, "--init-image", str(files / "init.png"), "--outpaint", "16,0,0,8"))
    assert image.size == (80, 56)
    assert np.array_equal(np.asarray(image)[:25, 40:], np.asarray(Image.open(files / "init.png"))[:25, 24:])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--init-image", "{f}/missing.png"], "no init image file at"),
        (["--init-image", "{f}/broken.png"], "cannot read the init image"),
        (["--init-image", "{f}/init.png", "--mask", "{f}/small-mask.png"], "mask of the image's size"),
        (["--init-image", "{f}/init.png", "--mask", "{f}/black-mask.png"], "repaints nothing"),
        (["--init-image", "{f}/init.png", "--strength", "1.5"], "strength must be"),
        (["--init-image", "{f}/init.png", "--strength", "0.1"], "use a strength of at least 0.334"),
        (["--init-image", "{f}/init.png", "--outpaint", "5,0,0,0"], "multiples of 8"),
        (["--init-image", "{f}/init.png", "--outpaint", "8,8"], "four numbers"),
        (["--init-image", "{f}/init.png", "--resize-mode", "stretch"], "invalid choice"),
        (["--init-image", "{f}/init.png", "--mask", "{f}/mask.png", "--outpaint", "8,0,0,0"], "leave out --mask"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_no_file(files, tmp_path, args, message):
    result = run(files, tmp_path / "out", *[a.replace("{f}", str(files)) for a in args])
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("ldm-img2img: ") and not (tmp_path / "out").exists()
