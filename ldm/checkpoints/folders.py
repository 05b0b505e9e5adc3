"""The weight files of a folder (checkpoints, LoRAs, embeddings), found by suffix at any depth.

`confined`: only files that really lie inside the folder; a symlink that leads out of it is left out. A server
lists and opens files by name on behalf of remote clients, so a link planted in a folder must not reach the
rest of the disk. The CLI and the library follow links, as A1111 does.
"""

from __future__ import annotations

from pathlib import Path


def files_in(folder: Path, extensions: tuple[str, ...], *, confined: bool = False) -> list[Path]:
    """Sorted files under `folder` whose suffix (any case) is one of `extensions`; none if it is not a folder."""
    if not folder.is_dir():
        return []
    root = folder.resolve()
    found = (p for p in folder.rglob("*") if p.suffix.lower() in extensions and p.is_file())
    return sorted(p for p in found if not confined or inside(p, root))


def inside(path: Path, root: Path) -> bool:
    """Whether `path`, with every link followed, lies under the resolved folder `root`."""
    return path.resolve().is_relative_to(root)
