"""AUTOMATIC1111's `parameters` text: the prompt, a `Negative prompt: ` line, then `Key: value, ...` pairs.

This file knows the syntax only; which keys mean which settings is ldm/generate/request.py's business.
"""

from __future__ import annotations

import re

# A key, then a value that is either quoted (A1111 quotes values holding separators) or runs to the next comma.
FIELD = re.compile(r'\s*([\w \-/+.()\[\]]+):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')
NEGATIVE = "Negative prompt: "


def format_infotext(prompt: str, negative_prompt: str, fields: dict[str, object]) -> str:
    """The text A1111 writes into a PNG; fields whose value is None are left out."""
    tail = ", ".join(f"{key}: {quote(value)}" for key, value in fields.items() if value is not None)
    lines = [prompt]
    if negative_prompt:
        lines.append(NEGATIVE + negative_prompt)
    return "\n".join([*lines, tail])


def quote(value: object) -> str:
    text = str(value)
    if not any(c in text for c in ',:"\n'):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def unquote(text: str) -> str:
    if len(text) < 2 or not text.startswith('"') or not text.endswith('"'):
        return text
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), text[1:-1])


def parse_infotext(text: str) -> tuple[str, str, dict[str, str]]:
    """(prompt, negative prompt, fields in their order) of a `parameters` text, ours or A1111's."""
    lines = text.strip("\n").split("\n")
    tail = lines.pop()
    if len(FIELD.findall(tail)) < 3:  # as A1111 reads it: a last line of fewer than 3 fields is still prompt
        lines.append(tail)
        tail = ""
    negative = ""
    starts = [i for i, line in enumerate(lines) if line.startswith(NEGATIVE)]
    if starts:
        negative = "\n".join(lines[starts[0] :])[len(NEGATIVE) :]
        lines = lines[: starts[0]]
    fields = {key.strip(): unquote(value.strip()) for key, value in FIELD.findall(tail)}
    return "\n".join(lines), negative, fields
