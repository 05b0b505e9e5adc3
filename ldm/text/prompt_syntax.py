"""AUTOMATIC1111's attention syntax (its "Original" emphasis): `(a)` x1.1, `[a]` /1.1, `(a:1.5)`, nesting multiplies,
`\\(` `\\)` `\\[` `\\]` `\\\\` escapes, BREAK; brackets that do not pair are literal or, if left open, still weigh the
rest, so no prompt is an error (A1111 modules/prompt_parser.py, parse_prompt_attention).
"""

from __future__ import annotations

import re

ROUND, SQUARE = 1.1, 1 / 1.1
BREAK_WEIGHT = -1.0  # the marker A1111 puts in the weight of a BREAK entry; only a BREAK at level 1 stays a break

# One token of the syntax per match: an escape, a bracket, `:weight)`, a run of plain text, or a lone colon.
TOKEN = re.compile(r"\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:([+-]?[.\d]+)\)|\)|]|[^\\()\[\]:]+|:")
BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """[(fragment, weight), ...] in order, neighbours of equal weight merged; a BREAK is ("BREAK", -1)."""
    parts: list[list] = []
    rounds: list[int] = []
    squares: list[int] = []

    def multiply_from(start: int, factor: float) -> None:
        for part in parts[start:]:
            part[1] *= factor

    for match in TOKEN.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            parts.append([token[1:], 1.0])  # a lone backslash stands for nothing
        elif token == "(":
            rounds.append(len(parts))
        elif token == "[":
            squares.append(len(parts))
        elif weight is not None and rounds and _number(weight) is not None:
            multiply_from(rounds.pop(), _number(weight))
        elif token == ")" and rounds:
            multiply_from(rounds.pop(), ROUND)
        elif token == "]" and squares:
            multiply_from(squares.pop(), SQUARE)
        else:  # plain text, or a bracket or colon with nothing to pair with
            for i, piece in enumerate(BREAK.split(token)):
                if i > 0:
                    parts.append(["BREAK", BREAK_WEIGHT])
                parts.append([piece, 1.0])
    for start in rounds:  # left open: weighs the rest anyway
        multiply_from(start, ROUND)
    for start in squares:
        multiply_from(start, SQUARE)
    if not parts:
        return [("", 1.0)]
    merged = [parts[0]]
    for part in parts[1:]:
        if part[1] == merged[-1][1]:
            merged[-1] = [merged[-1][0] + part[0], part[1]]
        else:
            merged.append(part)
    return [(t, w) for t, w in merged]


def _number(text: str) -> float | None:
    """`1.5` -> 1.5; `1.2.3` or `.` -> None (A1111 raises there; here the text stays literal)."""
    try:
        return float(text)
    except ValueError:
        return None
