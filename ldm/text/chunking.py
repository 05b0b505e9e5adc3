"""A prompt -> chunks of 77 token ids, each `[start] + 75 tokens + [end]`, with a weight per token (A1111's
FrozenCLIPEmbedderWithCustomWords.tokenize_line).

Each fragment of the attention syntax is tokenized on its own (so `foo(bar)` is "foo" + "bar"). A chunk that fills
up within COMMA_BACKTRACK tokens after a comma ends at the comma, the tokens after it starting the next chunk, so a
phrase is not cut in two. BREAK ends a chunk. A textual-inversion trigger (matched on token ids) becomes one
placeholder per vector, never split across chunks; the vectors replace those placeholders' token embeddings.
Unlike A1111, the vectors of an embedding moved by the comma rule move with it (A1111 leaves them behind).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ldm.text.embeddings import Embedding, Embeddings
from ldm.text.emphasis import parses_syntax, uses_weights
from ldm.text.network_tags import strip_tags
from ldm.text.prompt_syntax import BREAK_WEIGHT, parse_prompt_attention
from ldm.text.tokenizer import Tokenizer

CHUNK = 75  # tokens between the start and end token of a chunk
COMMA_BACKTRACK = 20  # A1111's comma_padding_backtrack default
PLACEHOLDER = 0  # the token id under an embedding's vectors (A1111 uses 0 too; it is never read)


@dataclass
class Chunk:
    ids: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    embeddings: list[tuple[int, Embedding]] = field(default_factory=list)  # (position in ids, what goes there)


def chunk_prompt(
    prompt: str, tokenizer: Tokenizer, emphasis: str = "original", embeddings: Embeddings | None = None
) -> list[Chunk]:
    """The chunks of `prompt` (at least one): ids and weights of 77 each, and where embedding vectors go."""
    text = strip_tags(prompt)
    fragments = parse_prompt_attention(text) if parses_syntax(emphasis) else [(text, 1.0)]
    if not uses_weights(emphasis):
        fragments = [(t, w if w == BREAK_WEIGHT else 1.0) for t, w in fragments]
    chunks: list[Chunk] = []
    current = Chunk()
    last_comma = -1
    (comma,) = tokenizer.encode(",")

    def close() -> None:
        nonlocal current, last_comma
        pad = CHUNK - len(current.ids)
        current.ids = [tokenizer.start, *current.ids, *[tokenizer.end] * pad, tokenizer.end]
        current.weights = [1.0, *current.weights, *[1.0] * pad, 1.0]
        current.embeddings = [(at + 1, e) for at, e in current.embeddings]  # past the start token
        chunks.append(current)
        current, last_comma = Chunk(), -1

    for fragment, weight in fragments:
        if fragment == "BREAK" and weight == BREAK_WEIGHT:
            close()
            continue
        ids = tokenizer.encode(fragment)
        position = 0
        while position < len(ids):
            if ids[position] == comma:
                last_comma = len(current.ids)
            elif len(current.ids) == CHUNK and last_comma != -1 and CHUNK - last_comma <= COMMA_BACKTRACK:
                cut = last_comma + 1
                moved = Chunk(current.ids[cut:], current.weights[cut:])
                moved.embeddings = [(at - cut, e) for at, e in current.embeddings if at >= cut]
                current.embeddings = [(at, e) for at, e in current.embeddings if at < cut]
                del current.ids[cut:], current.weights[cut:]
                close()
                current = moved
            if len(current.ids) == CHUNK:
                close()
            found = embeddings.find(ids, position) if embeddings is not None else None
            if found is None:
                current.ids.append(ids[position])
                current.weights.append(weight)
                position += 1
                continue
            embedding, span = found
            count = len(embedding.vectors)
            if len(current.ids) + count > CHUNK:
                close()
            current.embeddings.append((len(current.ids), embedding))
            current.ids += [PLACEHOLDER] * count
            current.weights += [weight] * count
            position += span
    if current.ids or not chunks:
        close()
    return chunks
