"""The models a server may load, by name: one checkpoint, the files and diffusers folders of a models folder, or
the built-in model. A request names a model only by a title this lists (A1111's `sd_model_checkpoint`), so
nothing a client sends becomes a path; links that lead out of the models folder are not listed.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from ldm.checkpoints.folders import files_in, inside
from ldm.checkpoints.hashing import file_sha256
from ldm.errors import ConfigError
from ldm.generate.pipeline import BUILTIN

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")


@dataclass(frozen=True)
class Checkpoint:
    filename: str  # relative to the models folder (A1111 shows a full path; a client needs no more than this)
    path: Path
    sha256: str | None  # None until the file was hashed (hashing reads all of it: done when it loads)

    @property
    def name(self) -> str:
        """A1111's model_name: the relative path without its suffix."""
        return str(Path(self.filename).with_suffix("")) if self.path.is_file() else self.filename

    @property
    def hash(self) -> str | None:
        return None if self.sha256 is None else self.sha256[:10]

    @property
    def title(self) -> str:
        """A1111's title, `<file> [<short hash>]` once the hash is known."""
        return f"{self.filename} [{self.hash}]" if self.hash else self.filename

    def listing(self) -> dict:
        """An entry of /sdapi/v1/sd-models."""
        return {"title": self.title, "model_name": self.name, "hash": self.hash, "sha256": self.sha256,
                "filename": self.filename, "config": None}  # fmt: skip


class Catalog:
    """`checkpoint`: serve that one file or folder; `models_dir`: every model in it (read again on each listing,
    as A1111's refresh); neither: the built-in model."""

    def __init__(self, checkpoint: Path | None = None, models_dir: Path | None = None):
        if checkpoint is not None and models_dir is not None:
            raise ConfigError("give --checkpoint or --models-dir, not both")
        if models_dir is not None and not models_dir.is_dir():
            raise ConfigError(f"--models-dir {models_dir} is not a folder")
        if checkpoint is not None and not checkpoint.exists():
            raise ConfigError(f"--checkpoint {checkpoint} does not exist")
        self.checkpoint = checkpoint if checkpoint is not None or models_dir is not None else BUILTIN
        self.models_dir = models_dir
        self.hashes: dict[Path, str] = {}  # the models this server hashed (each as it loaded)

    def hashed(self, checkpoint: Checkpoint) -> str | None:
        """Read the whole file once for its SHA-256 (None for a folder): from now on its title carries the short
        hash."""
        digest = file_sha256(checkpoint.path)
        if digest is not None:
            self.hashes[checkpoint.path] = digest
        return digest

    def models(self) -> list[Checkpoint]:
        if self.models_dir is None:
            return [self._entry(self.checkpoint, self.checkpoint.parent)]
        root = self.models_dir.resolve()
        files = files_in(self.models_dir, CHECKPOINT_SUFFIXES, confined=True)
        folders = [p.parent for p in self.models_dir.rglob("model_index.json") if inside(p.parent, root)]
        paths = [p for p in files if not any(p.is_relative_to(folder) for folder in folders)]  # not their parts
        return sorted((self._entry(p, self.models_dir) for p in [*paths, *folders]), key=lambda c: c.filename.lower())

    def find(self, name: str) -> Checkpoint:
        """The model a client named: by title, title without the hash, model name or file name."""
        models = self.models()
        for model in models:
            if name in (model.title, model.filename, model.name) or name.split(" [")[0] == model.filename:
                return model
        close = difflib.get_close_matches(name, [m.title for m in models], n=3, cutoff=0.3)
        hint = f"; closest: {', '.join(close)}" if close else f"; {len(models)} are listed at /sdapi/v1/sd-models"
        raise ConfigError(f"no model titled {name!r}{hint}")

    def first(self) -> Checkpoint:
        models = self.models()
        if not models:
            raise ConfigError(f"no .safetensors, .ckpt or diffusers folder in {self.models_dir}")
        return models[0]

    def _entry(self, path: Path, root: Path) -> Checkpoint:
        digest = self.hashes.get(path) or file_sha256(path, compute=False)
        return Checkpoint(path.relative_to(root).as_posix(), path, digest)
