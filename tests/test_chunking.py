"""Prompts -> 77-token chunks against a reference written here from A1111's algorithm as the reference notes state
it (round2-references.md section 3.2), on prompts of 76-230 tokens, commas near the boundary and BREAKs."""

import random

import pytest

from ldm.text.chunking import chunk_prompt
from ldm.text.prompt_syntax import parse_prompt_attention
from ldm.text.tokenizer import Tokenizer

BOS, EOS, COMMA = 49406, 49407, 267


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer()


def reference_chunks(prompt: str, tokenizer: Tokenizer) -> list[tuple[list[int], list[float]]]:
    """tokenize_line of the notes: each fragment tokenized alone; 75-token chunks; at a full chunk with a comma within
    the last 20 tokens, what follows the comma starts the next chunk; BREAK (weight -1) ends a chunk."""
    chunks, tokens, mults, last_comma = [], [], [], -1

    def next_chunk():
        nonlocal tokens, mults, last_comma
        pad = 75 - len(tokens)
        chunks.append(([BOS] + tokens + [EOS] * pad + [EOS], [1.0] + mults + [1.0] * pad + [1.0]))
        tokens, mults, last_comma = [], [], -1

    for text, weight in parse_prompt_attention(prompt):
        if text == "BREAK" and weight == -1:
            next_chunk()
            continue
        for token in tokenizer.encode(text):
            if token == COMMA:
                last_comma = len(tokens)
            elif len(tokens) == 75 and last_comma != -1 and 75 - last_comma <= 20:
                keep = last_comma + 1
                moved_tokens, moved_mults = tokens[keep:], mults[keep:]
                tokens, mults = tokens[:keep], mults[:keep]
                next_chunk()
                tokens, mults = moved_tokens, moved_mults
            if len(tokens) == 75:
                next_chunk()
            tokens.append(token)
            mults.append(weight)
    if tokens or not chunks:
        next_chunk()
    return chunks


WORDS = [
    "castle",
    "forest",
    "(misty:1.2)",
    "river",
    "[dark]",
    "mountain",
    "((golden))",
    "light",
    "sky",
    "tower",
    "bridge,",
    "snow",
]


def long_prompt(seed: int, words: int) -> str:
    rng = random.Random(seed)
    parts = []
    for _ in range(words):
        parts.append(rng.choice(WORDS))
        if rng.random() < 0.15:
            parts[-1] += ","
    return " ".join(parts)


PROMPTS = [
    "",
    "a cat",
    "BREAK a cat",  # an empty chunk first
    "a cat BREAK a dog",
    "(a cat BREAK a dog:1.3)",  # BREAK inside brackets is text
    "word " * 75,  # exactly one chunk
    "word " * 76,  # two
    "word " * 70 + ", " + "word " * 10,  # a comma 5 tokens before the boundary: backtrack
    "word " * 50 + ", " + "word " * 30,  # a comma 25 tokens before: no backtrack (more than 20)
    "word " * 74 + ",  word word",  # the comma is the 75th token
    "word " * 75 + ", word",  # the comma starts the second chunk
    *[long_prompt(seed, n) for seed, n in enumerate([60, 90, 120, 160, 200])],
]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_chunks_equal_the_reference(tokenizer, prompt):
    ours = chunk_prompt(prompt, tokenizer)
    expected = reference_chunks(prompt, tokenizer)
    assert [c.ids for c in ours] == [ids for ids, _ in expected]
    assert [c.weights for c in ours] == [w for _, w in expected]
    assert all(len(c.ids) == 77 for c in ours)


def test_the_long_prompts_cover_76_to_230_tokens(tokenizer):
    counts = [len(tokenizer.encode(p)) for p in PROMPTS]
    assert min(c for c in counts if c > 75) <= 80 and max(counts) >= 230


def test_plain_prompts_of_75_tokens_or_fewer_are_the_tokenizers_ids(tokenizer):
    for prompt in ["a photo of a cat", "", "word " * 75, "x, y, z"]:
        (chunk,) = chunk_prompt(prompt, tokenizer)
        assert chunk.ids == tokenizer([prompt])[0].tolist() and set(chunk.weights) == {1.0}


def test_emphasis_modes_change_what_is_parsed(tokenizer):
    weighted = chunk_prompt("a (cat:1.5) BREAK dog", tokenizer, "original")
    assert len(weighted) == 2 and 1.5 in weighted[0].weights
    ignored = chunk_prompt("a (cat:1.5) BREAK dog", tokenizer, "ignore")
    assert [c.ids for c in ignored] == [c.ids for c in weighted] and {w for c in ignored for w in c.weights} == {1.0}
    (plain,) = chunk_prompt("a (cat:1.5) BREAK dog", tokenizer, "none")  # no syntax: brackets and BREAK are text
    assert plain.ids == tokenizer(["a (cat:1.5) BREAK dog"])[0].tolist()


def test_fragments_are_tokenized_apart_and_tags_removed(tokenizer):
    (joined,) = chunk_prompt("foobar", tokenizer)
    (split,) = chunk_prompt("foo(bar)", tokenizer)
    assert split.ids[1:3] == tokenizer.encode("foo") + tokenizer.encode("bar") != joined.ids[1:3]
    (tagged,) = chunk_prompt("a cat <lora:style:0.5>", tokenizer)
    assert tagged.ids == tokenizer(["a cat "])[0].tolist()
