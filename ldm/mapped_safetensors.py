"""A safetensors file read as one private memory mapping per tensor.

safetensors' own reader maps the whole file once and every tensor keeps that one mapping alive, so a layer that
replaces its weight (ldm/packing.py reorders it for oneDNN) cannot give the file's pages back: the U-Net counted
twice in the process's RSS (8.4 GiB instead of 5.0 for one 512x512 image). Here each tensor owns the pages
under it, and dropping it unmaps them. Mappings are copy-on-write: writing to a tensor never touches the file.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import resource
from pathlib import Path

import torch
from torch import Tensor

from ldm.errors import CheckpointError

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip


def read_mapped(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors, metadata); ValueError says what is wrong with a malformed file."""
    size = path.stat().st_size
    with path.open("rb") as f:
        header_size = int.from_bytes(f.read(8), "little")
        if header_size + 8 > size:
            raise ValueError("the header runs past the end of the file")
        try:
            header = json.loads(f.read(header_size))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"the header is not JSON: {e}") from None
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        metadata = header.pop("__metadata__", None) or {}
        data_start = 8 + header_size
        allow_open_files(len(header))
        tensors = {name: _map(f, name, entry, data_start, size) for name, entry in header.items()}
    return tensors, metadata


def allow_open_files(mappings: int) -> None:
    """Raise this process's soft limit on open files (up to the hard one) so that `mappings` more fit: Python's
    mmap keeps a duplicate of the file's descriptor per mapping, an SD v1 file has over 1,100 tensors, and the
    usual soft limit is 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:  # no /proc, or not one descriptor left to list it with
        in_use = soft
    needed = in_use + mappings + 64
    if soft == resource.RLIM_INFINITY or needed <= soft:
        return
    if hard != resource.RLIM_INFINITY and needed > hard:
        raise CheckpointError(
            f"this checkpoint maps {mappings} tensors, each on a file descriptor, and the limit on open files "
            f"is {hard}; raise it (`ulimit -n {needed}`) and load again"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def _map(f, name: str, entry: dict, data_start: int, file_size: int) -> Tensor:
    try:
        dtype, shape = DTYPES[entry["dtype"]], [int(n) for n in entry["shape"]]
        begin, end = (int(offset) for offset in entry["data_offsets"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"tensor {name!r} has a bad header entry {entry!r}") from None
    count, itemsize = math.prod(shape), dtype.itemsize
    if not 0 <= begin <= end or data_start + end > file_size or end - begin != count * itemsize:
        raise ValueError(f"tensor {name!r}: its bytes {begin}..{end} do not fit its shape or the file")
    if count == 0:
        return torch.empty(shape, dtype=dtype)
    start = data_start + begin
    tensor = map_bytes(f, start, end - begin)
    if start % itemsize:  # kernels expect aligned elements
        return tensor.clone().view(dtype).view(shape)
    return tensor.view(dtype).view(shape)


def map_bytes(f, start: int, size: int) -> Tensor:
    """`size` bytes of the open file `f` from `start`, as a uint8 tensor on a private mapping of its own."""
    aligned = start - start % mmap.ALLOCATIONGRANULARITY  # mmap offsets must be page-aligned
    pages = mmap.mmap(f.fileno(), size + start - aligned, offset=aligned, access=mmap.ACCESS_COPY)
    return torch.frombuffer(pages, dtype=torch.uint8, count=size, offset=start - aligned)
