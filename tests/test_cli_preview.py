"""ldm-txt2img's preview and TAESD options as a user runs them: files on disk, same bytes, one-line errors."""

import os
import subprocess
import sys

import pytest
import torch
from helpers import E2E, random_model
from PIL import Image
from safetensors.torch import save_file

from ldm import GenerationRequest
from ldm.checkpoints.convert import write_single_file
from ldm.cli.preview_options import PreviewFile
from ldm.models.taesd import TAESD, TAESDConfig


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli-preview")
    checkpoint = write_single_file(random_model(E2E), folder / "tiny.safetensors", E2E)
    torch.manual_seed(1)
    taesd = TAESD(TAESDConfig(channels=8, encoder_blocks=(1, 1), decoder_blocks=(1, 1)))
    save_file({k: v.contiguous() for k, v in taesd.state_dict().items()}, str(folder / "taesd.safetensors"))
    return checkpoint, folder / "taesd.safetensors"


def run(files, outdir, *args: str) -> subprocess.CompletedProcess:
    # dpmpp_2m reuses each step's estimate: a preview that edited one in place would change the image
    base = ["--checkpoint", str(files[0]), "--taesd", str(files[1]), "--outdir", str(outdir), "--width", "64",
            "--height", "48", "--steps", "4", "--quiet", "--prompt", "a red cube", "--seed", "3",
            "--sampler", "dpmpp_2m"]  # fmt: skip
    return subprocess.run([sys.executable, "-m", "ldm.cli.txt2img", *base, *args], capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def test_previews_leave_the_png_byte_for_byte_the_same_and_are_removed(files, tmp_path):
    plain = run(files, tmp_path / "plain")
    assert plain.returncode == 0, plain.stderr
    for method in ("approx", "taesd", "full"):
        out = tmp_path / method
        result = run(files, out, "--preview", method, "--preview-every", "1")
        assert result.returncode == 0, result.stderr
        assert [p.name for p in out.iterdir()] == ["00000-3.png"]  # the preview is gone, nothing left behind
        assert (out / "00000-3.png").read_bytes() == (tmp_path / "plain" / "00000-3.png").read_bytes(), method


def test_kept_previews_sit_beside_the_image_they_previewed(files, tmp_path):
    result = run(files, tmp_path, "--preview", "taesd", "--preview-every", "2", "--keep-previews", "--n-iter", "2")
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["00000-3.png", "00000-3.preview.png", "00001-4.png", "00001-4.preview.png"]
    assert Image.open(tmp_path / "00001-4.preview.png").size == (64, 48)


def test_taesd_decoder_is_recorded_in_the_png(files, tmp_path):
    result = run(files, tmp_path, "--vae-decoder", "taesd")
    assert result.returncode == 0, result.stderr
    request = GenerationRequest.from_infotext(Image.open(result.stdout.strip()).text["parameters"])
    assert request.vae_decoder == "taesd" and "VAE: taesd" in Image.open(result.stdout.strip()).text["parameters"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preview", "nn"], "invalid choice: 'nn'"),
        (["--preview", "approx", "--preview-every", "0"], "--preview-every must be at least 1"),
        (["--vae-decoder", "tiny"], "invalid choice: 'tiny'"),
        (["--taesd", "/no/such/taesd_decoder.pth"], "does not exist"),
    ],
)
def test_bad_preview_options_exit_2_with_one_line_and_no_file(files, tmp_path, args, message):
    result = run(files, tmp_path / "out", *args)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "out").exists()


def test_without_a_taesd_the_taesd_options_say_what_to_pass(files, tmp_path):
    for args in (["--preview", "taesd"], ["--vae-decoder", "taesd"]):
        result = subprocess.run([sys.executable, "-m", "ldm.cli.txt2img", "--checkpoint", str(files[0]), "--outdir",
                                 str(tmp_path), "--prompt", "x", "--steps", "2", "--width", "16", "--height", "16",
                                 *args], capture_output=True, text=True, timeout=300)  # fmt: skip
        assert result.returncode == 2 and "needs a TAESD for this model; pass --taesd" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and not list(tmp_path.iterdir())


def test_the_cli_choices_are_the_library_s():
    from ldm.cli import preview_options
    from ldm.generate import preview, request

    assert preview_options.METHODS == preview.METHODS
    assert preview_options.DECODERS == request.VAE_DECODERS


def test_a_preview_is_replaced_whole(tmp_path):
    """Each write lands by rename: a reader sees the previous preview or the next, never a partial file."""
    preview = PreviewFile(tmp_path, 7)
    inode = None
    for shade in (0, 128, 255):
        preview.show(0, 2, Image.new("RGB", (8, 8), (shade, 0, 0)))
        assert os.stat(preview.path).st_ino != inode  # a new file each time, renamed over the old one
        inode = os.stat(preview.path).st_ino
        assert Image.open(preview.path).getpixel((0, 0)) == (shade, 0, 0)
    assert [p.name for p in tmp_path.iterdir()] == ["00000-7.preview.png"]  # no temporary left behind
    preview.close(keep=False)
    assert not list(tmp_path.iterdir())
