"""Textual inversion (Gal et al. 2022): learned token vectors, triggered in a prompt by their file's name.

As in A1111: the trigger is the file's stem, matched on its BPE ids (the longest trigger first); an n-vector
embedding takes n token positions. Files: A1111's `.pt` ({"string_to_param": {"*": (n, C)}, ...}; its `name` field
is ignored, as A1111 ignores it), or a one-tensor dict in `.pt` / `.safetensors` (kohya's `emb_params`, diffusers'
`learned_embeds`). Pickles are read by the restricted unpickler (ldm/checkpoints/read.py): nothing in them runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from ldm.checkpoints.folders import files_in
from ldm.checkpoints.hashing import short_hash
from ldm.checkpoints.read import load_restricted_pickle, read_safetensors, refuse_broken_values
from ldm.errors import CheckpointError, ConfigError
from ldm.text.tokenizer import Tokenizer

EXTENSIONS = (".pt", ".bin", ".safetensors")
OTHER_FAMILIES = {1024: "SD 2.x", 1280: "SDXL (its clip_g)"}  # text-encoder widths of models that are not SD v1
MAX_VECTORS = 75  # tokens in one prompt chunk (ldm/text/chunking.py): an embedding never straddles two
MAX_ABS = 1e3  # a learned token vector is of the order of the vocabulary's (about 0.01 to 1); far beyond: broken


@dataclass(frozen=True)
class Embedding:
    name: str  # the trigger word
    vectors: Tensor  # (n, C), float32 on the CPU
    ids: tuple[int, ...]  # the trigger's BPE ids
    shorthash: str  # A1111's "TI hashes" entry


class Embeddings:
    """The loaded embeddings of a pipeline; `revision` goes up with each change (the prompt cache keys on it)."""

    def __init__(self, tokenizer: Tokenizer, width: int):
        self.tokenizer, self.width = tokenizer, width
        self.by_name: dict[str, Embedding] = {}
        self.by_first_id: dict[int, list[Embedding]] = {}
        self.revision = 0
        self.skipped: list[Path] = []  # folder files for another model (A1111 lists them as skipped too)

    def load(self, path: str | Path, token: str | None = None) -> Embedding:
        """Read an embedding file; its trigger is `token`, or the file's stem. Replaces one of the same trigger."""
        path = Path(path)
        vectors = read_embedding(path, self.width)
        name = token or path.stem
        ids = tuple(self.tokenizer.encode(name))
        if not ids:
            raise ConfigError(f"the trigger {name!r} of {path} has no tokens; rename the file or pass token=")
        shorthash = short_hash(path)
        self.add(Embedding(name, vectors, ids, shorthash))
        return self.by_name[name]

    def load_folder(self, folder: str | Path, *, confined: bool = False) -> list[Embedding]:
        """Every embedding file under `folder` (recursively, as A1111 reads its embeddings folder). Files for another
        model (SD 2.x, SDXL) are skipped and listed in `skipped`, as A1111 skips them; a broken file is an error.
        confined: links out of the folder are left out (ldm/checkpoints/folders.py)."""
        files = files_in(Path(folder), EXTENSIONS, confined=confined)
        loaded = []
        for path in files:
            try:
                loaded.append(self.load(path))
            except ConfigError:
                self.skipped.append(path)
        return loaded

    def add(self, embedding: Embedding) -> None:
        old = self.by_name.pop(embedding.name, None)
        if old is not None:
            self.by_first_id[old.ids[0]].remove(old)
        self.by_name[embedding.name] = embedding
        same_start = self.by_first_id.setdefault(embedding.ids[0], [])
        same_start.append(embedding)
        same_start.sort(key=lambda e: len(e.ids), reverse=True)  # the longest trigger wins
        self.revision += 1

    def find(self, ids: list[int], position: int) -> tuple[Embedding, int] | None:
        """The embedding whose trigger's ids start at `position` of `ids`, and how many ids the trigger spans."""
        for embedding in self.by_first_id.get(ids[position], ()):
            if tuple(ids[position : position + len(embedding.ids)]) == embedding.ids:
                return embedding, len(embedding.ids)
        return None


def read_embedding(path: Path, width: int) -> Tensor:
    """The (n, width) vectors of an embedding file, checked: one tensor, finite, of this model's width."""
    if not path.is_file():
        raise ConfigError(f"embedding {path} does not exist")
    if path.suffix.lower() == ".safetensors":
        data: object = read_safetensors(path)[0]
    else:
        data = load_restricted_pickle(path)
    if isinstance(data, dict) and ("clip_g" in data or "clip_l" in data):
        raise ConfigError(f"{path} is an SDXL embedding (clip_g/clip_l); this is an SD v1 model")
    if isinstance(data, dict) and isinstance(data.get("string_to_param"), dict):
        data = data["string_to_param"]  # A1111's layout; its "*" entry is the vectors
    tensors = list(data.values()) if isinstance(data, dict) else [data]
    if len(tensors) != 1 or not isinstance(tensors[0], Tensor):
        raise CheckpointError(f"{path} is not a textual-inversion embedding (expected one tensor of vectors)")
    vectors = tensors[0].detach().float().cpu()
    vectors = vectors.unsqueeze(0) if vectors.ndim == 1 else vectors
    if vectors.ndim != 2 or vectors.shape[0] < 1:
        raise CheckpointError(f"{path} holds a tensor of shape {tuple(vectors.shape)}, not (vectors, width)")
    if vectors.shape[1] != width:
        family = OTHER_FAMILIES.get(vectors.shape[1])
        what = f"an {family} embedding" if family else f"an embedding of width {vectors.shape[1]}"
        raise ConfigError(f"{path} is {what}; this model's text encoder is {width} wide (SD v1: 768)")
    if vectors.shape[0] > MAX_VECTORS:
        raise CheckpointError(f"{path} has {vectors.shape[0]} vectors; a prompt chunk holds at most {MAX_VECTORS}")
    refuse_broken_values(vectors, path, "", MAX_ABS, "a learned embedding")
    return vectors
