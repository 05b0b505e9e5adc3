"""safetensors files read as one mapping per tensor: the same tensors as safetensors' reader, pages given back."""

import gc
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ldm.checkpoint import read_safetensors
from ldm.errors import CheckpointError
from ldm.mapped_safetensors import read_mapped


def mappings_of(path: Path) -> int:
    return sum(line.rstrip().endswith(str(path.resolve())) for line in Path("/proc/self/maps").read_text().splitlines())


@pytest.fixture
def file(tmp_path) -> Path:
    tensors = {
        "f32": torch.randn(3, 5),
        "f16": torch.randn(7).half(),
        "bf16": torch.randn(2, 2, 2).bfloat16(),
        "i64": torch.arange(9),
        "flags": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
        "big": torch.randn(300, 1000),  # spans many pages
    }
    save_file(tensors, tmp_path / "m.safetensors", metadata={"format": "pt", "note": "hello"})
    return tmp_path / "m.safetensors"


def test_same_tensors_and_metadata_as_safetensors(file):
    tensors, metadata = read_mapped(file)
    expected = load_file(file)
    assert metadata == {"format": "pt", "note": "hello"}
    assert tensors.keys() == expected.keys()
    for name, value in expected.items():
        assert tensors[name].dtype == value.dtype and torch.equal(tensors[name], value), name


def test_writes_stay_in_memory_and_dropping_a_tensor_unmaps_it(file):
    tensors, _ = read_mapped(file)
    tensors["big"].zero_()  # copy-on-write: the file keeps its bytes
    assert load_file(file)["big"].abs().sum() > 0
    before = mappings_of(file)
    del tensors["big"]
    gc.collect()
    assert mappings_of(file) == before - 1  # its pages left this process


def header_file(tmp_path: Path, header: dict, data: bytes = b"\0" * 16) -> Path:
    raw = json.dumps(header).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}, "bad header entry"),
        ({"dtype": "F32", "shape": [2]}, "bad header entry"),
        ({"dtype": "F32", "shape": [2], "data_offsets": ["zero", 8]}, "bad header entry"),
        ("not an entry", "bad header entry"),
        ({"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}, "do not fit"),
        ({"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}, "do not fit"),  # past the end of the file
        ({"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}, "do not fit"),
    ],
)
def test_malformed_entries_are_one_line_errors(tmp_path, entry, message):
    with pytest.raises(CheckpointError, match=f"not a readable safetensors file .*{message}.*re-download"):
        read_safetensors(header_file(tmp_path, {"w": entry}))


def test_more_tensors_than_the_soft_limit_on_open_files_still_load(tmp_path):
    """Each mapping holds a file descriptor: with 1024 allowed, an SD v1 file (1,100+ tensors) failed to load."""
    save_file({f"t{i}": torch.full((4,), float(i)) for i in range(300)}, tmp_path / "many.safetensors")
    script = f"""
import resource
from pathlib import Path
from ldm.checkpoint import read_safetensors
from ldm.errors import CheckpointError
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (200, hard))
tensors, _ = read_safetensors(Path({str(tmp_path / "many.safetensors")!r}))
assert float(tensors["t299"][0]) == 299.0
del tensors
resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200))
try:
    read_safetensors(Path({str(tmp_path / "many.safetensors")!r}))
except CheckpointError as e:
    print(e)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert "ulimit -n" in result.stdout and "300 tensors" in result.stdout
