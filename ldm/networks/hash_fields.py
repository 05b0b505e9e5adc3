"""The `Lora hashes` and `TI hashes` fields A1111 writes into an image's parameters: `name: shorthash, ...`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from ldm.networks.merged import LoraUse
from ldm.text.embeddings import Embedding

FIELDS = ("Lora hashes", "TI hashes")


def hash_fields(
    loras: Iterable[LoraUse], embeddings: Iterable[Embedding], lora_hash: Callable[[Path], str]
) -> dict[str, str]:
    """The two fields, each only when something is in it (names lose `:` and `,`, as A1111 writes them)."""
    lora = dict.fromkeys(f"{_clean(use.label)}: {lora_hash(use.path)}" for use in loras)
    ti = dict.fromkeys(f"{_clean(e.name)}: {e.shorthash}" for e in embeddings)
    return {k: ", ".join(v) for k, v in zip(FIELDS, (lora, ti), strict=True) if v}


def _clean(name: str) -> str:
    return name.replace(":", "").replace(",", "")
