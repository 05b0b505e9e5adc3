"""A PyTorch checkpoint's tensors moved onto one private memory mapping per storage.

`torch.load(mmap=True)` maps the whole file once and every tensor is a slice of that mapping, so a layer that
replaces its weight (ldm/cpu/packing.py reorders it for oneDNN) cannot give the file's pages back. Here each storage
of OWN_MAPPING_FROM bytes and up gets its own mapping of the same bytes, as mapped_safetensors.py does for
safetensors (smaller ones stay on torch's mapping). Where each storage's
bytes are in the file comes from the process's own map of torch's mapping (/proc/self/maps), checked against the
zip archive's records. Where that fails (not Linux, a compressed record, a big-endian file, a read error, more
mappings than the limit on open files allows before Python 3.13, where each keeps a descriptor), torch's one mapping
stays and the pipeline leaves the layers unpacked. Small files never get here: read.py reads them into memory.
"""

from __future__ import annotations

import struct
import sys
import zipfile
from pathlib import Path

from torch import Tensor

from ldm.checkpoints import mapped_safetensors
from ldm.checkpoints.mapped_safetensors import map_bytes, mappings_fit

LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # a zip entry's local header, ahead of its bytes


def remap(path: Path, tensors: dict[str, Tensor]) -> dict[str, Tensor] | None:
    """The same tensors (values, shapes, strides, views of one storage; Parameters come back as tensors) on a
    mapping each, or None when the file's records cannot be matched with the storages torch mapped, or the file
    is not as torch found it (another byte order, which torch swapped in memory; a file changed meanwhile)."""
    try:
        return _remap(path, tensors)
    except (OSError, ValueError, RuntimeError, struct.error, zipfile.BadZipFile):
        return None


def _remap(path: Path, tensors: dict[str, Tensor]) -> dict[str, Tensor] | None:
    if _byte_order(path) != sys.byteorder:
        return None
    records, mapped = _stored_records(path), _mappings_of(path)
    offsets = {}  # storage address -> where its bytes are in the file
    for t in tensors.values():
        storage = t.untyped_storage()
        ptr, size = storage.data_ptr(), storage.nbytes()
        if not size:
            continue  # an empty storage maps nothing
        where = next((offset + ptr - start for start, end, offset in mapped if start <= ptr < end), None)
        if where is None or records.get(where) != size:
            return None
        if size >= mapped_safetensors.OWN_MAPPING_FROM:  # small storages stay on torch's mapping
            offsets[ptr] = where
    if not mappings_fit(len(offsets), path):  # torch's one mapping keeps no descriptor
        return None
    remapped = {}
    with path.open("rb") as f:
        regions = {ptr: map_bytes(f, where, records[where]) for ptr, where in offsets.items()}
    for name, t in tensors.items():
        region = regions.get(t.untyped_storage().data_ptr())
        if region is None:  # empty, or small: as torch mapped it (an empty one is cloned off that mapping)
            remapped[name] = t if t.untyped_storage().nbytes() else t.clone()
            continue
        typed = region.view(t.dtype)
        remapped[name] = typed.as_strided(t.shape, t.stride(), typed.storage_offset() + t.storage_offset())
    return remapped


def _stored_records(path: Path) -> dict[int, int]:
    """{file offset of the bytes: size} of each uncompressed `data/` record in the archive."""
    records = {}
    with zipfile.ZipFile(path) as archive, path.open("rb") as f:
        for info in archive.infolist():
            if "/data/" not in info.filename or info.compress_type != zipfile.ZIP_STORED:
                continue
            f.seek(info.header_offset)
            header = LOCAL_HEADER.unpack(f.read(LOCAL_HEADER.size))
            name_length, extra_length = header[-2:]
            records[info.header_offset + LOCAL_HEADER.size + name_length + extra_length] = info.file_size
    return records


def _byte_order(path: Path) -> str:
    """The byte order torch.save recorded (files without the record are little-endian, as torch reads them)."""
    with zipfile.ZipFile(path) as archive:
        name = next((n for n in archive.namelist() if n.endswith("/byteorder") or n == "byteorder"), None)
        return archive.read(name).decode(errors="replace") if name else "little"


def _mappings_of(path: Path) -> list[tuple[int, int, int]]:
    """(start, end, file offset) of each of this process's mappings of `path`; none where /proc is missing."""
    try:
        lines = Path("/proc/self/maps").read_text(errors="surrogateescape").splitlines()
    except OSError:
        return []
    target, found = str(path.resolve()), []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == target:
            start, end = (int(a, 16) for a in fields[0].split("-"))
            found.append((start, end, int(fields[2], 16)))
    return found
