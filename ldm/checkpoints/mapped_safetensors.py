"""A safetensors file read as one private memory mapping per tensor, or plainly when mappings would not pay.

safetensors' own reader maps the whole file once and every tensor keeps that one mapping alive, so a layer that
replaces its weight (ldm/cpu/packing.py reorders it for oneDNN) cannot give the file's pages back: the U-Net counted
twice in the process's RSS. Here each tensor owns the pages under it, and dropping it unmaps them. Mappings are
copy-on-write: writing to a tensor never touches the file.

Before Python 3.13 every mapping keeps a duplicate of the file's descriptor, and an SD v1 file has over 1,100
tensors where the usual soft limit on open files is 1024. So only tensors of OWN_MAPPING_FROM bytes and up get a
mapping each (the weights that pack: about 400 of an SD v1 file, nearly all its bytes); the small rest (biases,
norms) share one mapping of the whole file, whose pages under the big tensors are never touched through it.
The limit is the user's: it is never changed here. When even those mappings would not fit under it, all tensors
share the one mapping (which keeps no descriptor), the caller is told so (it then leaves the layers unpacked), and
one log line says how to raise the limit. Small files are read into memory, tensor by tensor: no mapping, no
descriptor kept.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import mmap
import os
import resource
import sys
from pathlib import Path
from typing import BinaryIO, NamedTuple

import torch
from torch import Tensor

from ldm.errors import CheckpointError

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip
# Files below this size are read into memory. Per-tensor mappings only pay off for weights that get packed, which
# means a full model or its U-Net or text encoder; a LoRA, an embedding, TAESD or a VAE-only file is read plainly.
# Tests lower it to exercise the mappings on tiny files.
PLAIN_READ_BELOW = 256 * 2**20
# Tensors from this size get a mapping of their own; smaller ones share one. Tests lower it to map every tensor.
OWN_MAPPING_FROM = 2**18
# Descriptors left free for everything else the process opens after a load (images, other models, sockets).
SPARE_DESCRIPTORS = 64
# Python 3.13 maps without keeping a duplicate descriptor (mmap's trackfd=False); before, each mapping holds one.
MAPPINGS_KEEP_DESCRIPTORS = sys.version_info < (3, 13)

log = logging.getLogger("ldm")


class Entry(NamedTuple):
    """A tensor as the header describes it, checked against the file: its bytes are `size` from `start`."""

    name: str
    dtype: torch.dtype
    shape: list[int]
    start: int
    size: int


def read_tensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str], bool]:
    """(tensors, metadata, one_mapping): one_mapping says the tensors share one mapping of the whole file, whose
    pages stay while any of them lives. ValueError says what is wrong with a malformed file, CheckpointError that
    the process has no file descriptor left to open it with."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            entries, metadata = _read_header(f, size)
            if reads_plainly(size):
                return {e.name: _read_plainly(f, e) for e in entries}, metadata, False
            own = {e.name for e in entries if e.size >= OWN_MAPPING_FROM}
            if mappings_fit(len(own), path):
                try:
                    small = [e for e in entries if e.name not in own]
                    shared = _map_whole_file(path, size, small) if small else {}
                    return {e.name: _map(f, e) if e.name in own else shared[e.name] for e in entries}, metadata, False
                except OSError as e:
                    if e.errno != errno.EMFILE:
                        raise
                    # Descriptors were taken meanwhile: the mappings made so far go, one is shared as below.
                    log.warning("%s: out of file descriptors while mapping it; one mapping is shared", path.name)
        return _map_whole_file(path, size, entries), metadata, True  # f is closed: one descriptor at a time
    except OSError as e:
        if error := descriptor_error(path, e):
            raise error from None
        raise


def reads_plainly(size: int) -> bool:
    """Whether a checkpoint file of `size` bytes is read into memory rather than mapped (PLAIN_READ_BELOW)."""
    return size < PLAIN_READ_BELOW


def _read_header(f: BinaryIO, file_size: int) -> tuple[list[Entry], dict[str, str]]:
    """Every tensor's entry, checked against the file, and the metadata; ValueError for a malformed header."""
    header_size = int.from_bytes(f.read(8), "little")
    if header_size + 8 > file_size:
        raise ValueError("the header runs past the end of the file")
    try:
        header = json.loads(f.read(header_size))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"the header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    return [_entry(name, entry, 8 + header_size, file_size) for name, entry in header.items()], metadata


def _entry(name: str, entry: dict, data_start: int, file_size: int) -> Entry:
    try:
        dtype, shape = DTYPES[entry["dtype"]], [int(n) for n in entry["shape"]]
        begin, end = (int(offset) for offset in entry["data_offsets"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"tensor {name!r} has a bad header entry {entry!r}") from None
    if not 0 <= begin <= end or data_start + end > file_size or end - begin != math.prod(shape) * dtype.itemsize:
        raise ValueError(f"tensor {name!r}: its bytes {begin}..{end} do not fit its shape or the file")
    return Entry(name, dtype, shape, data_start + begin, end - begin)


def _read_plainly(f: BinaryIO, entry: Entry) -> Tensor:
    if not entry.size:
        return torch.empty(entry.shape, dtype=entry.dtype)
    data = bytearray(entry.size)  # its own memory: dropping the tensor frees it
    f.seek(entry.start)
    if f.readinto(data) != entry.size:
        raise ValueError(f"tensor {entry.name!r}: the file ended before its bytes did (was it changed meanwhile?)")
    return torch.frombuffer(data, dtype=entry.dtype).view(entry.shape)


def _map(f: BinaryIO, entry: Entry) -> Tensor:
    if not entry.size:
        return torch.empty(entry.shape, dtype=entry.dtype)
    return _typed(map_bytes(f, entry.start, entry.size), entry)


def _map_whole_file(path: Path, size: int, entries: list[Entry]) -> dict[str, Tensor]:
    try:  # torch's private mapping closes its descriptor once the file is mapped, as torch.load(mmap=True) does
        storage = torch.UntypedStorage.from_file(str(path), False, size)
    except RuntimeError as e:  # its text says why, with the system's words for it
        raise OSError(str(e)) from None
    pages = torch.empty(0, dtype=torch.uint8).set_(storage)
    return {
        e.name: _typed(pages[e.start : e.start + e.size], e) if e.size else torch.empty(e.shape, dtype=e.dtype)
        for e in entries
    }


def _typed(raw: Tensor, entry: Entry) -> Tensor:
    if entry.start % entry.dtype.itemsize:  # kernels expect aligned elements
        raw = raw.clone()
    return raw.view(entry.dtype).view(entry.shape)


def map_bytes(f: BinaryIO, start: int, size: int) -> Tensor:
    """`size` bytes of the open file `f` from `start`, as a uint8 tensor on a private mapping of its own."""
    aligned = start - start % mmap.ALLOCATIONGRANULARITY  # mmap offsets must be page-aligned
    keep = {} if MAPPINGS_KEEP_DESCRIPTORS else {"trackfd": False}
    pages = mmap.mmap(f.fileno(), size + start - aligned, offset=aligned, access=mmap.ACCESS_COPY, **keep)
    return torch.frombuffer(pages, dtype=torch.uint8, count=size, offset=start - aligned)


def mappings_fit(mappings: int, path: Path) -> bool:
    """Whether `mappings` more mappings of `path` fit under the soft limit on open files with SPARE_DESCRIPTORS
    left; when they do not, logs one line that says what that costs and how to raise the limit."""
    if not MAPPINGS_KEEP_DESCRIPTORS:
        return True
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return True
    in_use = _descriptors_below(soft)
    if in_use is not None and in_use + mappings + SPARE_DESCRIPTORS <= soft:
        return True
    needed = _round_up((SPARE_DESCRIPTORS if in_use is None else in_use) + mappings + SPARE_DESCRIPTORS)
    hard_too = hard != resource.RLIM_INFINITY and hard < needed
    log.warning(
        "%s: its %d tensors would each hold a file descriptor, more than the limit of %d open files allows, so they "
        "share one mapping and layers will not be able to release the file's pages (more memory in use); "
        "`ulimit -n %d` before starting lets them%s",
        path.name,
        mappings,
        soft,
        needed,
        f" (the hard limit, {hard}, must be raised first)" if hard_too else "",
    )
    return False


def descriptor_error(path: Path, e: BaseException) -> CheckpointError | None:
    """A one-line CheckpointError saying how to raise the limit when `e` (an OSError, or one of torch's
    RuntimeErrors) says the process has no file descriptor left to open `path` with; None for any other error."""
    if isinstance(e, OSError) and e.errno is not None:
        if e.errno != errno.EMFILE:
            return None
    elif f"{os.strerror(errno.EMFILE)} ({errno.EMFILE})" not in str(e):  # torch's "<strerror> (<errno>)"
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return CheckpointError(
        f"{path} cannot be opened: this process has reached its limit of {soft} open files; "
        f"run `ulimit -n {_round_up(soft + SPARE_DESCRIPTORS)}` in the shell that starts it and load again"
    )


def _descriptors_below(soft: int) -> int | None:
    """How many of the descriptor numbers under `soft` are taken (a new descriptor gets the lowest free number,
    which must be under the limit); None where the process cannot list its descriptors."""
    for listing in ("/proc/self/fd", "/dev/fd"):  # Linux; macOS and the BSDs
        try:
            return sum(int(n) < soft for n in os.listdir(listing) if n.isdigit())
        except OSError:  # not there, or not one descriptor left to list it with
            continue
    return None


def _round_up(descriptors: int) -> int:
    return -(-descriptors // 1024) * 1024
