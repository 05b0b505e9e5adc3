"""A .ckpt's storages moved onto a mapping each: the same tensors as torch.load, pages given back when dropped."""

import gc
import zipfile
from pathlib import Path

import pytest
import torch

from ldm.checkpoint import read_pickle_checkpoint
from ldm.mapped_pickle import remap


def mappings_of(path: Path) -> int:
    return sum(line.rstrip().endswith(str(path.resolve())) for line in Path("/proc/self/maps").read_text().splitlines())


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


def test_same_tensors_each_storage_on_its_own_mapping(saved):
    path, expected = saved
    tensors, shared = read_pickle_checkpoint(path)
    assert not shared
    assert tensors.keys() == expected.keys()
    for name, value in expected.items():
        t = tensors[name]
        assert (t.dtype, t.shape, t.stride()) == (value.dtype, value.shape, value.stride()), name
        assert torch.equal(t, value), name
    assert tensors["rows"].untyped_storage().data_ptr() == tensors["big"].untyped_storage().data_ptr()
    gc.collect()
    assert mappings_of(path) == 5  # f32, f16, big, i64, flags: torch's whole-file mapping is gone


def test_writes_stay_in_memory_and_dropping_a_storage_unmaps_it(saved):
    path, _ = saved
    tensors, _ = read_pickle_checkpoint(path)
    tensors["big"].zero_()  # copy-on-write: the file keeps its bytes
    assert torch.load(path)["state_dict"]["big"].abs().sum() > 0
    before = mappings_of(path)
    del tensors["big"], tensors["rows"], tensors["transposed"]
    gc.collect()
    assert mappings_of(path) == before - 1


def test_tensors_that_are_not_on_a_mapping_of_the_file_stay_as_they_are(saved):
    path, _ = saved
    assert remap(path, {"w": torch.randn(3)}) is None  # in the heap: nothing to match with the file
    in_memory = torch.load(path)["state_dict"]  # read without mmap
    assert remap(path, in_memory) is None


def test_a_file_of_the_other_byte_order_keeps_torchs_swapped_copy(tmp_path):
    """torch.load swaps a big-endian file's bytes in its own mapping; mapping the file again would undo that."""
    native = tmp_path / "native.ckpt"
    torch.save({"w": torch.arange(3, dtype=torch.float32)}, native)
    swapped = tmp_path / "swapped.ckpt"
    with zipfile.ZipFile(native) as source, zipfile.ZipFile(swapped, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            data = source.read(info)
            target.writestr(info, b"big" if info.filename.endswith("/byteorder") else data)
    expected = torch.load(swapped, mmap=True)["w"]
    tensors, shared = read_pickle_checkpoint(swapped)
    assert shared and torch.equal(tensors["w"], expected)
    assert not torch.equal(expected, torch.arange(3, dtype=torch.float32))  # the swap did happen
