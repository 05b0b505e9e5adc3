"""The prompt-control options every image-making command shares: emphasis, LoRAs, embeddings."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ldm.errors import ConfigError

EMBEDDINGS_DIR = Path("embeddings")  # A1111's layout, in the working directory
LORA_DIR = Path("models/Lora")


def add_prompt_options(p: argparse.ArgumentParser) -> None:
    from ldm.text.emphasis import MODES

    p.add_argument("--emphasis", choices=MODES, help="how (word:1.2) weights act, A1111's option (default: original)")
    p.add_argument("--lora", action="append", default=[], metavar="PATH[:WEIGHT]",
                   help="merge a LoRA file (or a name in --lora-dir) at a weight (default 1); repeatable")  # fmt: skip
    p.add_argument("--lora-dir", type=Path, help=f"where <lora:name:weight> prompt tags look (default: {LORA_DIR})")
    p.add_argument(
        "--embeddings-dir",
        type=Path,
        help=f"textual-inversion embeddings, triggered by file name (default: {EMBEDDINGS_DIR})",
    )


def apply_prompt_options(pipe: Any, args: argparse.Namespace) -> None:
    """Load the embeddings and LoRAs the options name into `pipe` (a Pipeline); a default folder may be absent."""
    pipe.lora_dir = args.lora_dir or LORA_DIR
    if args.lora_dir is not None and not args.lora_dir.is_dir():
        raise ConfigError(f"--lora-dir {args.lora_dir} is not a folder")
    folder = args.embeddings_dir or EMBEDDINGS_DIR
    if folder.is_dir():
        pipe.embeddings.load_folder(folder)
        if pipe.embeddings.skipped:  # a note, not an error: A1111 skips these too
            names = ", ".join(p.name for p in pipe.embeddings.skipped)
            print(f"note: skipped embeddings for another model in {folder}: {names}", file=sys.stderr)
    elif args.embeddings_dir is not None:
        raise ConfigError(f"--embeddings-dir {folder} is not a folder")
    for spec in args.lora:
        path, weight = parse_lora_option(spec, pipe.lora_dir)
        pipe.load_lora(path, te=weight)


def parse_lora_option(spec: str, folder: Path) -> tuple[Path, float]:
    """`style.safetensors:0.8` -> (path, 0.8); without `:weight`, 1; a bare name is looked up in `folder`."""
    from ldm.networks.lora_tags import find_lora

    path, sep, weight = spec.rpartition(":")
    try:
        multiplier = float(weight) if sep else 1.0
    except ValueError:
        path, multiplier = spec, 1.0  # a colon of the path itself (C:\...)
    if not sep or path == "":
        path = spec if not sep else path
    candidate = Path(path)
    if candidate.is_file():
        return candidate, multiplier
    if candidate.suffix == "" and len(candidate.parts) == 1:
        return find_lora(path, folder), multiplier
    raise ConfigError(f"--lora {spec}: {path} does not exist")
