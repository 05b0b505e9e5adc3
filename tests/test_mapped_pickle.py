"""A .ckpt's storages moved onto a mapping each: the same tensors as torch.load, pages given back when dropped; small
files read into memory; the limit on open files never touched, a load that would pass it keeping torch's mapping."""

import gc
import logging
import os
import resource
import zipfile
from pathlib import Path

import pytest
import torch
from helpers import lowest_free_descriptor, mappings_of, needs_proc, soft_open_files_limit

from ldm.checkpoints import mapped_safetensors
from ldm.checkpoints.mapped_pickle import remap
from ldm.checkpoints.read import read_pickle_checkpoint
from ldm.errors import CheckpointError

PLAIN_READ_BELOW = mapped_safetensors.PLAIN_READ_BELOW  # the real threshold, before the fixture lowers it


@pytest.fixture(autouse=True)
def every_file_is_mapped(monkeypatch):
    """The files here are tiny: without this they would all be read plainly and the mappings go untested."""
    monkeypatch.setattr(mapped_safetensors, "PLAIN_READ_BELOW", 0)
    monkeypatch.setattr(mapped_safetensors, "OWN_MAPPING_FROM", 0)


@pytest.fixture
def saved(tmp_path) -> tuple[Path, dict]:
    big = torch.randn(1000, 300)  # spans many pages
    weights = {
        "f32": torch.randn(3, 5),
        "f16": torch.randn(7).half(),
        "big": big,
        "rows": big[10:20, ::2],  # views of one storage stay views of one mapping
        "transposed": big.t(),
        "i64": torch.arange(9),
        "flags": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 4),
    }
    path = tmp_path / "m.ckpt"
    # Lightning keeps other tensors around the weights; theirs come first in the archive here.
    torch.save({"optimizer_states": [torch.randn(100)], "state_dict": weights, "ema": torch.randn(50)}, path)
    return path, weights


def assert_same(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]):
    assert tensors.keys() == expected.keys()
    for name, value in expected.items():
        t = tensors[name]
        assert (t.dtype, t.shape, t.stride()) == (value.dtype, value.shape, value.stride()), name
        assert torch.equal(t, value), name


@needs_proc
@pytest.mark.parametrize(("plain_below", "mappings"), [(0, 5), (PLAIN_READ_BELOW, 0)], ids=["mapped", "plain"])
def test_same_tensors_each_storage_on_its_own_mapping_or_in_memory(saved, monkeypatch, plain_below, mappings):
    """Mapped: f32, f16, big, i64, flags each on a mapping, torch's whole-file one gone. Under the threshold (an
    embedding or a LoRA saved by torch): no mapping at all, each storage its own memory."""
    monkeypatch.setattr(mapped_safetensors, "PLAIN_READ_BELOW", plain_below)
    path, expected = saved
    tensors, shared = read_pickle_checkpoint(path)
    assert not shared
    assert_same(tensors, expected)
    assert tensors["rows"].untyped_storage().data_ptr() == tensors["big"].untyped_storage().data_ptr()
    gc.collect()
    assert mappings_of(path) == mappings


@needs_proc
def test_writes_stay_in_memory_and_dropping_a_storage_unmaps_it(saved):
    path, _ = saved
    tensors, _ = read_pickle_checkpoint(path)
    tensors["big"].zero_()  # copy-on-write: the file keeps its bytes
    assert torch.load(path)["state_dict"]["big"].abs().sum() > 0
    before = mappings_of(path)
    del tensors["big"], tensors["rows"], tensors["transposed"]
    gc.collect()
    assert mappings_of(path) == before - 1


@needs_proc
def test_a_soft_limit_too_low_for_a_mapping_each_is_left_alone_and_torchs_mapping_stays(tmp_path, caplog):
    weights = {f"t{i}": torch.full((4,), float(i)) for i in range(300)}
    torch.save(weights, tmp_path / "many.ckpt")
    # Room to open files, not for 300 mappings.
    with soft_open_files_limit(len(os.listdir("/proc/self/fd")) + 100) as lowered:
        with caplog.at_level(logging.WARNING, logger="ldm"):
            tensors, shared = read_pickle_checkpoint(tmp_path / "many.ckpt")
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == lowered
    assert_same(tensors, weights)
    if mapped_safetensors.MAPPINGS_KEEP_DESCRIPTORS:
        assert shared and mappings_of(tmp_path / "many.ckpt") == 1
        assert any("`ulimit -n 1024`" in r.message for r in caplog.records)
    else:
        assert not shared


def test_no_descriptor_left_to_open_the_file_says_how_to_raise_the_limit(saved):
    path, _ = saved
    with (
        soft_open_files_limit(lowest_free_descriptor()),
        pytest.raises(CheckpointError, match=r"^\S+ cannot be opened: .* run `ulimit -n \d+` .*load again$"),
    ):
        read_pickle_checkpoint(path)


def test_tensors_that_are_not_on_a_mapping_of_the_file_stay_as_they_are(saved):
    path, _ = saved
    assert remap(path, {"w": torch.randn(3)}) is None  # in the heap: nothing to match with the file
    in_memory = torch.load(path)["state_dict"]  # read without mmap
    assert remap(path, in_memory) is None


@pytest.mark.parametrize("plain_below", [0, PLAIN_READ_BELOW], ids=["mapped", "plain"])
def test_a_file_of_the_other_byte_order_keeps_torchs_swapped_copy(tmp_path, monkeypatch, plain_below):
    """torch.load swaps a big-endian file's bytes in its own mapping; mapping the file again would undo that."""
    monkeypatch.setattr(mapped_safetensors, "PLAIN_READ_BELOW", plain_below)
    native = tmp_path / "native.ckpt"
    torch.save({"w": torch.arange(3, dtype=torch.float32)}, native)
    swapped = tmp_path / "swapped.ckpt"
    with zipfile.ZipFile(native) as source, zipfile.ZipFile(swapped, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            data = source.read(info)
            target.writestr(info, b"big" if info.filename.endswith("/byteorder") else data)
    expected = torch.load(swapped, mmap=True)["w"]
    tensors, shared = read_pickle_checkpoint(swapped)
    assert torch.equal(tensors["w"], expected)
    assert shared == (plain_below == 0)  # read into memory, the swapped copy is its own
    assert not torch.equal(expected, torch.arange(3, dtype=torch.float32))  # the swap did happen
