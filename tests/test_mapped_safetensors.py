"""safetensors files read as one mapping per tensor: the same tensors as safetensors' reader, pages given back; small
files read into memory; the limit on open files never touched, a load that would pass it sharing one mapping."""

import gc
import json
import logging
import os
import resource
import struct
import sys
from pathlib import Path

import pytest
import torch
from helpers import lowest_free_descriptor, mappings_of, needs_proc, soft_open_files_limit
from safetensors.torch import load_file, save_file

from ldm.checkpoints import mapped_safetensors
from ldm.checkpoints.mapped_safetensors import read_tensors
from ldm.checkpoints.read import read_checkpoint, read_safetensors
from ldm.errors import CheckpointError

PLAIN_READ_BELOW = mapped_safetensors.PLAIN_READ_BELOW  # the real threshold, before the fixture lowers it


def descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def every_file_is_mapped(monkeypatch):
    """The files here are tiny: without this they would all be read plainly and the mappings go untested."""
    monkeypatch.setattr(mapped_safetensors, "PLAIN_READ_BELOW", 0)
    monkeypatch.setattr(mapped_safetensors, "OWN_MAPPING_FROM", 0)


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


@pytest.fixture
def many(tmp_path) -> Path:
    save_file({f"t{i}": torch.full((4,), float(i)) for i in range(300)}, tmp_path / "many.safetensors")
    return tmp_path / "many.safetensors"


def assert_same_as_safetensors(tensors: dict[str, torch.Tensor], path: Path):
    expected = load_file(path)
    assert tensors.keys() == expected.keys()
    for name, value in expected.items():
        t = tensors[name]
        assert (t.dtype, t.shape) == (value.dtype, value.shape) and torch.equal(t, value), name


@needs_proc
def test_same_tensors_and_metadata_as_safetensors_each_on_its_own_mapping(file):
    tensors, metadata, one_mapping = read_tensors(file)
    assert metadata == {"format": "pt", "note": "hello"} and not one_mapping
    assert_same_as_safetensors(tensors, file)
    assert mappings_of(file) == 7  # all but the empty tensor


@needs_proc
def test_only_large_tensors_get_a_mapping_of_their_own_the_rest_share_one(file, monkeypatch):
    """An SD v1 file's ~400 weights over OWN_MAPPING_FROM fit under the usual limit of 1024 open files."""
    monkeypatch.setattr(mapped_safetensors, "OWN_MAPPING_FROM", 1000)
    tensors, _, one_mapping = read_tensors(file)
    assert_same_as_safetensors(tensors, file)
    assert not one_mapping and mappings_of(file) == 2  # "big" on its own, the six small ones on the shared one
    del tensors["big"]
    gc.collect()
    assert mappings_of(file) == 1


@needs_proc
def test_writes_stay_in_memory_and_dropping_a_tensor_unmaps_it(file):
    tensors, _, _ = read_tensors(file)
    tensors["big"].zero_()  # copy-on-write: the file keeps its bytes
    assert load_file(file)["big"].abs().sum() > 0
    before = mappings_of(file)
    del tensors["big"]
    gc.collect()
    assert mappings_of(file) == before - 1  # its pages left this process


@needs_proc
def test_a_file_under_the_threshold_is_read_into_memory(file, monkeypatch):
    """A LoRA or an embedding: no mapping, no descriptor left behind, each tensor its own writable memory."""
    monkeypatch.setattr(mapped_safetensors, "PLAIN_READ_BELOW", PLAIN_READ_BELOW)
    assert file.stat().st_size < PLAIN_READ_BELOW
    gc.collect()
    open_before = descriptors()
    tensors, metadata, one_mapping = read_safetensors(file)
    assert mappings_of(file) == 0 and descriptors() == open_before
    assert metadata == {"format": "pt", "note": "hello"} and not one_mapping
    assert_same_as_safetensors(tensors, file)
    tensors["big"].zero_()
    assert load_file(file)["big"].abs().sum() > 0


@needs_proc
def test_a_soft_limit_too_low_for_a_mapping_each_is_left_alone_and_the_tensors_share_one(many, caplog):
    """Each mapping holds a file descriptor before Python 3.13: with 1024 allowed, an SD v1 file (1,100+ tensors)
    used to fail to load, then to raise the user's limit behind their back."""
    with soft_open_files_limit(descriptors() + 100) as lowered:  # room to open files, not for 300 mappings
        with caplog.at_level(logging.WARNING, logger="ldm"):
            checkpoint = read_checkpoint(many)  # one_mapping goes on to the pipeline, which then does not pack
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == lowered
    assert_same_as_safetensors(checkpoint.tensors, many)
    if mapped_safetensors.MAPPINGS_KEEP_DESCRIPTORS:
        assert checkpoint.one_mapping and mappings_of(many) == 1
        [record] = caplog.records
        assert "will not be able to release" in record.message and "`ulimit -n 1024`" in record.message
    else:  # mappings keep no descriptor: each tensor has its own all the same
        assert not checkpoint.one_mapping and mappings_of(many) == 300


def test_no_descriptor_left_to_open_the_file_says_how_to_raise_the_limit(many):
    with soft_open_files_limit(lowest_free_descriptor()) as lowered:  # no new descriptor fits under it
        with pytest.raises(CheckpointError, match=r"^\S+ cannot be opened: .* run `ulimit -n \d+` .*load again$"):
            read_safetensors(many)
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == lowered


@pytest.mark.skipif(sys.version_info < (3, 13), reason="mmap's trackfd=False is Python 3.13's")
@needs_proc
def test_mappings_keep_no_descriptor_from_python_3_13(many):
    gc.collect()
    open_before = descriptors()
    tensors, _, one_mapping = read_tensors(many)
    assert not one_mapping and mappings_of(many) == 300 and descriptors() == open_before
    assert_same_as_safetensors(tensors, many)


def header_file(tmp_path: Path, header: dict, data: bytes = b"\0" * 16) -> Path:
    raw = json.dumps(header).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.mark.parametrize("plain_below", [0, PLAIN_READ_BELOW], ids=["mapped", "plain"])
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
def test_malformed_entries_are_one_line_errors(tmp_path, monkeypatch, plain_below, entry, message):
    monkeypatch.setattr(mapped_safetensors, "PLAIN_READ_BELOW", plain_below)
    with pytest.raises(CheckpointError, match=f"not a readable safetensors file .*{message}.*re-download"):
        read_safetensors(header_file(tmp_path, {"w": entry}))
