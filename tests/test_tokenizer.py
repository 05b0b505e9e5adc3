"""The tokenizer against SD v1's reference tokenizer (transformers' CLIPTokenizer) and open_clip's."""

import csv
import gzip
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from ldm.text.tokenizer import VOCAB_FILE, Tokenizer

DATA = Path(__file__).parent / "data"
PROMPTS = [row["Prompt"] for row in csv.DictReader((DATA / "PartiPrompts.tsv").open(), delimiter="\t")]
EDGE_CASES = [
    "",
    "a photo of a cat",
    "A  Photo\tof\na CAT   ",
    "café naïve résumé Ångström",
    "e\u0301 decomposed accent",
    "東京の夜景、一只猫",
    "🐱🔥 emoji 👍🏽!!",
    "wow!!!??... ---- ((()))",
    "&amp; &lt;3 &quot;hi&quot;",
    "don't it's we'll I'M they're you've he'd",
    "'''s ''t",
    "\u00a0non-breaking\u00a0space",
    "3.14159 and 2024-11-23",
    "Ⅻ ½ ² numbers of other kinds",
    "hello_world foo-bar@baz.com #tag",
    "word " * 100,
    "supercalifragilisticexpialidocious",
]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer()


def open_clip_file(name: str) -> Path:
    spec = importlib.util.find_spec("open_clip")  # found, not imported: open_clip imports torchvision
    assert spec is not None and spec.origin, "open_clip_torch is a test dependency (make setup installs it)"
    return Path(spec.origin).parent / name


def test_shipped_vocabulary_is_open_clips_copy_of_openais_file():
    assert gzip.decompress(VOCAB_FILE.read_bytes()) == gzip.decompress(open_clip_file(VOCAB_FILE.name).read_bytes())


def test_a_merges_token_is_the_vocabularys_entry_512_plus_its_rank_and_no_token_appears_twice(tokenizer):
    """What BPE relies on to name its tokens without the vocabulary's lookup table."""
    vocab = tokenizer.vocab
    assert len(set(vocab)) == len(vocab) == 49408
    assert all(vocab[512 + rank] == merge.replace(" ", "") for rank, merge in enumerate(tokenizer.merges))
    assert (vocab[tokenizer.start], vocab[tokenizer.end]) == ("<|startoftext|>", "<|endoftext|>")
    word = tokenizer.encode("photography, unbelievably")
    assert word == [tokenizer.ids[t] for t in ("photography</w>", ",</w>", "unbelievably</w>")]


def test_known_ids_and_shape(tokenizer):
    ids = tokenizer(["a photo of a cat", "a dog"])
    assert ids.dtype == torch.long and ids.shape == (2, 77)
    assert ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]  # OpenAI CLIP's ids
    assert (ids[0, 7:] == 49407).all()  # padded with the end token, as SD v1's tokenizer pads
    assert tokenizer("a dog").shape == (1, 77)


def test_long_prompts_are_cut_to_77_and_end_with_the_end_token(tokenizer):
    ids = tokenizer("word " * 100)[0]
    assert ids.shape == (77,) and ids[0] == 49406 and ids[-1] == 49407 and (ids[1:-1] != 49407).all()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """transformers' CLIPTokenizer configured as SD v1.5's tokenizer/ folder, from the same vocabulary."""
    from transformers import CLIPTokenizer

    folder = tmp_path_factory.mktemp("tokenizer")
    Tokenizer().save_pretrained(folder)
    vocab = json.loads((folder / "vocab.json").read_text())
    merges = [tuple(line.split()) for line in (folder / "merges.txt").read_text().split("\n")[1:] if line]
    # transformers 5 takes vocab=/merges=; vocab_file=/merges_file= would be ignored silently.
    ref = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77, bos_token="<|startoftext|>",
                        eos_token="<|endoftext|>", pad_token="<|endoftext|>", unk_token="<|endoftext|>")  # fmt: skip
    assert ref("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    return ref


def test_same_ids_as_transformers_on_all_parti_prompts_and_edge_cases(tokenizer, reference):
    texts = PROMPTS + EDGE_CASES
    assert len(PROMPTS) == 1632
    ours = tokenizer(texts)
    theirs = reference(texts, padding="max_length", truncation=True, max_length=77, return_tensors="pt").input_ids
    differ = [texts[i] for i in range(len(texts)) if not torch.equal(ours[i], theirs[i])]
    assert differ == []


def load_open_clip_tokenizer():
    spec = importlib.util.spec_from_file_location("open_clip_tokenizer", open_clip_file("tokenizer.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # needs only ftfy, regex, numpy, torch
    return module.SimpleTokenizer()


# Where open_clip (OpenAI's original simple_tokenizer) and transformers differ, we follow transformers,
# because that is what SD v1 pipelines (CompVis FrozenCLIPEmbedder, diffusers) tokenize with:
# - padding: open_clip pads with 0 ("!"), SD v1 pads with the end token 49407;
# - ftfy and html: open_clip first repairs the text with ftfy.fix_text and html.unescape, so curly quotes
#   become straight ("corgi’s" -> "corgi's": 45 of the 1632 PartiPrompts) and "&amp;" becomes "&";
#   transformers' CLIPTokenizer only NFC-normalises, collapses whitespace and lower-cases.


def test_open_clip_agrees_except_for_its_ftfy_and_html_repairs(tokenizer):
    import html

    import ftfy

    oc = load_open_clip_tokenizer()
    texts = PROMPTS + EDGE_CASES
    ours, theirs = tokenizer(texts), oc(texts, context_length=77)
    differ = [
        i for i in range(len(texts)) if not torch.equal(ours[i][ours[i] != 49407][1:], theirs[i][theirs[i] != 0][1:-1])
    ]
    repaired = [ftfy.fix_text(html.unescape(html.unescape(texts[i]))) for i in differ]
    assert all(r != texts[i] for r, i in zip(repaired, differ, strict=True))  # every disagreement is a repair
    assert torch.equal(tokenizer(repaired), torch.where(oc(repaired, context_length=77) == 0, 49407, oc(repaired)))
    assert 0 < len(differ) < 60
    assert (oc([""])[0, 2:] == 0).all() and (tokenizer("")[0, 2:] == 49407).all()
