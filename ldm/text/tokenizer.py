"""The CLIP byte-level BPE tokenizer, as SD v1 uses it (Radford et al. 2021; OpenAI CLIP's simple_tokenizer).

Text is normalised (NFC, whitespace collapsed, lower-cased), split into words, numbers and punctuation
runs, mapped to printable byte characters and merged by BPE; then wrapped in start/end tokens, cut to
77 and padded with the end token, as SD v1's tokenizer (transformers' CLIPTokenizer) does.
"""

from __future__ import annotations

import json
import unicodedata
import zlib
from functools import cached_property, lru_cache
from pathlib import Path

import torch

VOCAB_FILE = Path(__file__).parent / "data" / "bpe_simple_vocab_16e6.txt.gz"
START, END = "<|startoftext|>", "<|endoftext|>"
CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")
NUM_MERGES = 49152 - 256 - 2  # CLIP uses the first 48894 merges of the file: 256 bytes x 2 + merges + 2 = 49408


@lru_cache(maxsize=1)
def byte_characters() -> dict[int, str]:
    """A printable unicode character for each byte (GPT-2's table): BPE never sees spaces or control bytes.

    Printable bytes stand for themselves; the rest get 256, 257, ... The dict's order (printable bytes first)
    is the order of the first 256 vocabulary entries.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


@lru_cache(maxsize=1)
def load_merges() -> list[str]:
    """The merges CLIP uses, as the file's "first second" lines (a token never holds a space). Only the start of the
    file is decompressed: CLIP uses a fifth of its lines."""
    inflate, data, text = zlib.decompressobj(wbits=31), VOCAB_FILE.read_bytes(), b""  # wbits 31: gzip framing
    while text.count(b"\n") <= NUM_MERGES and data:
        text += inflate.decompress(data, 1 << 20)
        data = inflate.unconsumed_tail
    return text.decode("utf-8").split("\n", NUM_MERGES + 1)[1 : NUM_MERGES + 1]  # line 0 is the "#version" header


def build_vocab(merges: list[str]) -> list[str]:
    """Token strings in id order: bytes, bytes ending a word, merge results, then the two special tokens."""
    chars = list(byte_characters().values())
    return [*chars, *(c + "</w>" for c in chars), *(m.replace(" ", "") for m in merges), START, END]


def normalize(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).split()).lower()


def pre_tokenize(text: str) -> list[str]:
    """CLIP's split: 's 't 're 've 'm 'll 'd | runs of letters | single digits | runs of other non-space chars."""
    words, i, n = [], 0, len(text)
    kind = [unicodedata.category(c)[0] if not c.isspace() else " " for c in text]  # L, N, or other
    while i < n:
        contraction = next((c for c in CONTRACTIONS if text.startswith(c, i)), None)
        if contraction:
            j = i + len(contraction)
        elif kind[i] == " ":
            i += 1
            continue
        elif kind[i] == "N":
            j = i + 1
        else:
            j = i + 1
            same = (lambda k: k == "L") if kind[i] == "L" else (lambda k: k not in ("L", "N", " "))
            while j < n and same(kind[j]):
                j += 1
        words.append(text[i:j])
        i = j
    return words


class Tokenizer:
    """`Tokenizer()(["a cat", "a dog"])` -> LongTensor (2, 77): SD v1's token ids."""

    def __init__(self, length: int = 77):
        self.length = length
        self.merges = load_merges()
        self.ranks = {pair: i for i, pair in enumerate(self.merges)}  # keyed by "first second"
        self._bytes = byte_characters()
        self._char_ids = {c: i for i, c in enumerate(self._bytes.values())}  # the vocabulary's first 256
        self.start, self.end = 512 + len(self.merges), 513 + len(self.merges)
        self._word_ids = lru_cache(maxsize=1 << 16)(self._bpe_ids)

    # BPE itself needs neither: a merge's token has the id 512 + its rank (the vocabulary holds no token twice).
    @cached_property
    def vocab(self) -> list[str]:
        return build_vocab(self.merges)

    @cached_property
    def ids(self) -> dict[str, int]:
        return {token: i for i, token in enumerate(self.vocab)}

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else texts
        rows = []
        for text in texts:
            ids = [self.start, *self.encode(text)[: self.length - 2], self.end]
            rows.append(ids + [self.end] * (self.length - len(ids)))  # SD v1 pads with the end token
        return torch.tensor(rows, dtype=torch.long)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without start/end tokens or padding."""
        ids: list[int] = []
        for word in pre_tokenize(normalize(text)):
            ids.extend(self._word_ids("".join(self._bytes[b] for b in word.encode("utf-8"))))
        return ids

    def _bpe_ids(self, word: str) -> tuple[int, ...]:
        parts = [*word[:-1], word[-1] + "</w>"]
        ids = [*(self._char_ids[c] for c in word[:-1]), 256 + self._char_ids[word[-1]]]  # a byte; one ending a word
        while len(parts) > 1:
            pairs = [
                (self.ranks.get(f"{a} {b}", len(self.ranks)), i)
                for i, (a, b) in enumerate(zip(parts, parts[1:], strict=False))
            ]
            rank, i = min(pairs)
            if rank == len(self.ranks):
                break
            first, second = parts[i], parts[i + 1]
            merged, merged_ids, i = [], [], 0
            while i < len(parts):  # merge every occurrence of the best pair, left to right
                if i < len(parts) - 1 and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    merged_ids.append(512 + rank)
                    i += 2
                else:
                    merged.append(parts[i])
                    merged_ids.append(ids[i])
                    i += 1
            parts, ids = merged, merged_ids
        return tuple(ids)

    def save_pretrained(self, folder: Path) -> None:
        """Write the vocabulary as a transformers CLIPTokenizer folder (for diffusers-layout exports)."""
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "vocab.json").write_text(json.dumps(self.ids, ensure_ascii=False))
        (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(self.merges) + "\n")
        specials = {"bos_token": START, "eos_token": END, "pad_token": END, "unk_token": END}
        (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
        config = {**specials, "model_max_length": self.length, "do_lower_case": True, "errors": "replace",
                  "add_prefix_space": False, "tokenizer_class": "CLIPTokenizer"}  # fmt: skip
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
