"""A1111's attention syntax: its own doctests (tests/data, with provenance), the edge cases of the reference notes,
and prompt tags."""

import json

import pytest
from helpers import DATA

from ldm.text.network_tags import find_tags, strip_tags
from ldm.text.prompt_syntax import parse_prompt_attention

CASES = json.loads((DATA / "a1111_prompt_attention.json").read_text())


@pytest.mark.parametrize(("text", "expected"), CASES["doctests"] + CASES["edge_cases"])
def test_parses_as_a1111_does(text, expected):
    assert [list(part) for part in parse_prompt_attention(text)] == expected  # exact: the same products in order


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[[a]]", [["a", 1 / 1.1 / 1.1]]),
        ("(a:1.2.3)", [["a:1.2.3)", 1.1]]),  # A1111 raises on such a weight; here it stays text, still never an error
        ("a BREAK b BREAK", [["a", 1.0], ["BREAK", -1.0], ["b", 1.0], ["BREAK", -1.0], ["", 1.0]]),
        ("aBREAK b", [["aBREAK b", 1.0]]),  # a whole word only
        ("((a) [b:1.5])", [["a", 1.1 * 1.1], [" ", 1.1], ["b:1.5", 1.1 / 1.1]]),
    ],
)
def test_more_edge_cases(text, expected):
    got = parse_prompt_attention(text)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected], rel=1e-12)


def test_prompt_tags_are_found_and_removed():
    prompt = "a castle <lora:style_v2:0.8> at dusk, <lora:detail:0.5:1.2>, <lora:x:unet=0.3> <hypernet:h:1>"
    tags = find_tags(prompt)
    assert [(t.kind, t.positional, t.named) for t in tags] == [
        ("lora", ("style_v2", "0.8"), ()),
        ("lora", ("detail", "0.5", "1.2"), ()),
        ("lora", ("x",), (("unet", "0.3"),)),
        ("hypernet", ("h", "1"), ()),
    ]
    assert strip_tags(prompt) == "a castle  at dusk, ,  "
