"""`<lora:name:0.8>` and the other extra-network tags of an A1111 prompt: found, and removed from the text the
text encoder reads (A1111 modules/extra_networks.py: every `<kind:args>` tag goes, whatever its kind).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TAG = re.compile(r"<(\w+):([^>]+)>")


@dataclass(frozen=True)
class NetworkTag:
    kind: str  # "lora", "hypernet", ...
    positional: tuple[str, ...]  # `<lora:name:0.5:1>` -> ("name", "0.5", "1")
    named: tuple[tuple[str, str], ...]  # `<lora:name:unet=0.5>` -> (("unet", "0.5"),)


def strip_tags(prompt: str) -> str:
    """The prompt without its extra-network tags, as the text encoder sees it."""
    return TAG.sub("", prompt)


def find_tags(prompt: str) -> list[NetworkTag]:
    """Every extra-network tag of `prompt`, in order; `name=value` arguments are named, the rest positional."""
    tags = []
    for match in TAG.finditer(prompt):
        positional, named = [], []
        for arg in match.group(2).split(":"):
            key, eq, value = arg.partition("=")
            if eq:
                named.append((key.strip(), value.strip()))
            else:
                positional.append(arg.strip())
        tags.append(NetworkTag(match.group(1), tuple(positional), tuple(named)))
    return tags
