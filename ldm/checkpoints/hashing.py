"""AUTOMATIC1111's short model hash, remembered per file so a 4 GB checkpoint is read once, not every run."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def cache_file() -> Path:
    """$LDM_CACHE or $XDG_CACHE_HOME/ldm (default ~/.cache/ldm), file hashes.json."""
    root = os.environ.get("LDM_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ldm"
    return Path(root) / "hashes.json"


def model_hash(path: Path | None, *, compute: bool = True) -> str | None:
    """The first 10 hex digits of the file's SHA-256 (A1111's "Model hash"); None for a folder or no file."""
    digest = file_sha256(path, compute=compute)
    return None if digest is None else digest[:10]


def file_sha256(path: Path | None, *, compute: bool = True) -> str | None:
    """The file's SHA-256 in hex; None for a folder or no file.

    The digest is cached under the file's resolved path, size and modification time; a file that changed
    is hashed again. A missing, corrupt or unwritable cache only costs the hashing time. compute=False: the
    cached digest or None (a listing of many models must not read them all).
    """
    if path is None or not path.is_file():
        return None
    stat = path.stat()
    key, stamp = str(path.resolve()), [stat.st_size, stat.st_mtime_ns]
    cache = _read(cache_file())
    entry = cache.get(key)
    if isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    if not compute:
        return None
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    cache[key] = {"stamp": stamp, "sha256": digest.hexdigest()}
    _write(cache_file(), cache)
    return digest.hexdigest()


def _read(file: Path) -> dict:
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(file: Path, data: dict) -> None:
    """Atomically (temporary name, then rename), so two runs at once never leave half a file."""
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, file)
    except OSError:
        pass


def short_hash(path: Path, *, safetensors_data: bool = False, digits: int = 12) -> str:
    """A1111's short hash of a LoRA or embedding file: the first `digits` hex digits of the SHA-256 of the whole
    file, or with `safetensors_data` of the bytes after the safetensors header (kohya's "addnet" hash, which A1111
    uses for .safetensors LoRAs so that editing the metadata keeps the hash)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        if safetensors_data:
            f.seek(8 + int.from_bytes(f.read(8), "little"))
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()[:digits]
