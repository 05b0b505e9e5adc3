"""New files and folders under temporary names, with the permissions a plain open() or mkdir() gives.

tempfile's mkstemp/mkdtemp create 0600/0700 entries; these ask for 0666/0777 and let the kernel apply the
umask, so nothing process-wide (the umask itself) is ever changed, even for a moment.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

ATTEMPTS = 100  # random names tried before giving up (each collision is a 1 in 2^48 event)


def new_file(directory: Path, prefix: str, suffix: str = "") -> tuple[int, Path]:
    """An open descriptor (write-only) and the path of a new empty file in `directory`."""
    for _ in range(ATTEMPTS):
        path = directory / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name in {directory}")


def new_folder(parent: Path, prefix: str) -> Path:
    """The path of a new empty folder in `parent`."""
    for _ in range(ATTEMPTS):
        path = parent / f"{prefix}{secrets.token_hex(6)}"
        try:
            path.mkdir(0o777)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name in {parent}")


def write_whole(path: Path, write: Callable[[BinaryIO], object], *, replace: bool = False) -> None:
    """Write `path` through a new file beside it, so that it appears whole or not at all: renamed over the file
    there (`replace`), or linked to its name, raising FileExistsError rather than replacing one."""
    fd, tmp = new_file(path.parent, ".ldm-", path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
