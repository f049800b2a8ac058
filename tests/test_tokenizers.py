import json

import numpy as np
import pytest

from genlab import tokenizers
from genlab.errors import ConfigError
from genlab.tokenizers import BPETokenizer

TRAIN = [
    "def add(a, b):\n    return a + b\n",
    "class Café:\r\n\tnaïve = '☃'  # tabs, CRLF, accents\r\n",
    "  leading spaces and trailing   \n\n\n",
    "print('hello world') " * 20,
    "🙂 an emoji outside the BMP, and a NUL \x00 byte",
]


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer.train(TRAIN * 3, vocab_size=300)


def test_bpe_round_trips_every_training_string_and_fits_uint16(bpe):
    assert 256 < bpe.vocab_size <= 300
    for text in TRAIN:
        ids = bpe.encode(text)
        assert ids.dtype == np.uint16 and int(ids.max()) < bpe.vocab_size
        assert bpe.decode(ids) == text
    assert len(bpe.encode(TRAIN[3])) < len(TRAIN[3]) / 3  # merges learnt: a repeated phrase is a few tokens
    unseen = "Ünïcödé never seen: 漢字 ∑ ⟨x⟩\n"
    assert bpe.decode(bpe.encode(unseen)) == unseen  # byte-level: any text encodes
    assert [list(ids) for ids in bpe.encode_many(TRAIN)] == [list(bpe.encode(t)) for t in TRAIN]


def test_bpe_restored_from_its_state_encodes_identically(bpe, tmp_path):
    state = json.loads(json.dumps(bpe.state()))  # plain JSON: what the checkpoint and tokenizer.json keep
    restored = tokenizers.from_state(state)
    assert restored == bpe
    for text in [*TRAIN, "x = [i ** 2 for i in range(10)]\n"]:
        assert np.array_equal(restored.encode(text), bpe.encode(text))
    tokenizers.save(bpe, tmp_path / "tokenizer.json")
    assert tokenizers.load(tmp_path / "tokenizer.json") == bpe
    assert BPETokenizer.train(TRAIN * 3, vocab_size=300) == bpe  # training is deterministic


def test_bpe_vocab_size_bounds():
    for size in (256, 70000):
        with pytest.raises(ConfigError, match="data.vocab_size"):
            BPETokenizer.train(TRAIN, vocab_size=size)


def test_bpe_split_on_whitespace_learns_whole_words_and_round_trips():
    notes = ["| 67:4 62:4 59:4 43:4 +4 | 67:8 62:4 +4\n"] * 20
    words = BPETokenizer.train(notes, vocab_size=300, split="whitespace")
    gpt2 = BPETokenizer.train(notes, vocab_size=300)
    assert [words.decode([i]) for i in words.encode(" 67:4 62:4")] == [" 67:4", " 62:4"]  # a note is one token
    assert len(gpt2.encode(" 67:4")) == 3  # GPT-2's pattern keeps digits and ':' apart
    for text in [*TRAIN, *notes, "a  b\n\n\tc ", " x"]:
        assert words.decode(words.encode(text)) == text
    assert tokenizers.from_state(json.loads(json.dumps(words.state()))) == words
    with pytest.raises(ConfigError, match="data.bpe_split"):
        BPETokenizer.train(TRAIN, vocab_size=300, split="words")


def test_char_counts_sum_to_the_characters_of_the_decoded_text() -> None:
    """Bits per character divides by these counts: for byte and BPE ids, a token counts the UTF-8
    characters its bytes start, so multi-byte characters split across tokens count once."""
    from genlab.tokenizers import BPETokenizer, ByteTokenizer, CharTokenizer

    text = "naïve café, 日本語 and ✓ marks\n" * 40 + "plain ascii text for merges " * 40
    for tokenizer in (CharTokenizer("".join(sorted(set(text)))), ByteTokenizer(), BPETokenizer.train([text], 300)):
        ids = tokenizer.encode(text)
        assert tokenizer.char_counts()[ids].sum() == len(text), tokenizer.kind
        assert len(tokenizer.char_counts()) == tokenizer.vocab_size
