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
