"""PNG output: tensors to images as diffusers rounds them, numbered files that never overwrite."""

import numpy as np
import pytest
import torch
from PIL import Image

from ldm.errors import LdmError
from ldm.outputs.png import save_png, to_pil


def test_to_pil_rounds_like_diffusers():
    x = torch.tensor([-1.0, -0.5, 0.0, 0.3, 1.0, 2.0]).reshape(1, 1, 2, 3).expand(1, 3, 2, 3)
    assert np.asarray(to_pil(x)[0])[:, :, 0].flatten().tolist() == [0, 64, 128, 166, 255, 255]


def test_save_png_numbers_files_and_never_overwrites(tmp_path):
    image = Image.new("RGB", (8, 8))
    first = save_png(image, tmp_path, 7, "p")
    (tmp_path / "00001-7.png").write_bytes(b"someone else's file")
    second = save_png(image, tmp_path, 7, "p")
    assert (first.name, second.name) == ("00000-7.png", "00002-7.png")
    assert (tmp_path / "00001-7.png").read_bytes() == b"someone else's file"
    assert Image.open(second).text["parameters"] == "p"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000-7.png", "00001-7.png", "00002-7.png"]  # no temp left


def test_outdir_that_is_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(LdmError, match="choose a writable --outdir"):
        save_png(Image.new("RGB", (8, 8)), tmp_path / "file", 1, "p")
