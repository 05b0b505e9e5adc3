"""`<lora:name:te[:unet[:dyn]]>` tags of a prompt -> the LoRAs to merge (A1111 extra_networks_lora.py: te defaults to
1, unet to te; `te=`, `unet=`, `dyn=` may be named). Names are file stems in the LoRA folder (A1111's models/Lora)."""

from __future__ import annotations

import difflib
from pathlib import Path

from ldm.checkpoints.folders import files_in
from ldm.errors import ConfigError
from ldm.networks.lora_file import EXTENSIONS
from ldm.networks.merged import LoraUse
from ldm.text.network_tags import NetworkTag, find_tags

DEFAULT_FOLDER = Path("models/Lora")


def prompt_loras(prompts: tuple[str, ...] | list[str], folder: Path, *, confined: bool = False) -> list[LoraUse]:
    """The LoRAs the prompts' tags name, in order (each distinct tag once: a batch repeats its prompts).
    confined: only files inside `folder` (ldm/checkpoints/folders.py), as a server looks them up."""
    tags = dict.fromkeys(tag for p in prompts for tag in find_tags(p) if tag.kind == "lora")
    return [lora_use(tag, folder, confined) for tag in tags]


def lora_use(tag: NetworkTag, folder: Path, confined: bool = False) -> LoraUse:
    if not tag.positional or not tag.positional[0]:
        raise ConfigError("a <lora:...> tag has no name; write <lora:name:weight>")
    name, named = tag.positional[0], dict(tag.named)
    try:
        te = float(named.get("te", tag.positional[1] if len(tag.positional) > 1 else 1.0))
        unet = float(named.get("unet", tag.positional[2] if len(tag.positional) > 2 else te))
        dyn_text = named.get("dyn", tag.positional[3] if len(tag.positional) > 3 else None)
        dyn = int(dyn_text) if dyn_text is not None else None
    except ValueError:
        raise ConfigError(f"<lora:{name}:...> has a weight that is not a number; write <lora:{name}:0.8>") from None
    return LoraUse(find_lora(name, folder, confined), te, unet, dyn, name)


def find_lora(name: str, folder: Path, confined: bool = False) -> Path:
    """The LoRA file of stem `name` in `folder` (or below); an unknown name lists the closest ones there."""
    files = files_in(folder, EXTENSIONS, confined=confined)
    for path in files:
        if path.stem == name:
            return path
    close = difflib.get_close_matches(name, [p.stem for p in files], n=3, cutoff=0.4)
    hint = f"; closest there: {', '.join(close)}" if close else f"; {folder} has {len(files)} LoRA files"
    raise ConfigError(f"no LoRA named {name!r} in {folder}{hint}")
