import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from genlab import tokenizers
from genlab.data import text
from genlab.data.text import EvalWindows, RandomWindows, TextDataModule, url_cache_path
from genlab.errors import ConfigError, DataError
from genlab.tokenizers import ByteTokenizer, CharTokenizer

SAMPLE = "Héllo, wörld — naïve café ☃\nsecond line\r\nthird\ttab"


def test_char_tokenizer_round_trip_and_unknown_characters():
    tok = CharTokenizer.from_code_points(tokenizers.code_points(SAMPLE))
    assert tok.vocab_size == len(set(SAMPLE))
    ids = tok.encode(SAMPLE)
    assert ids.dtype == np.uint16 and ids.max() < tok.vocab_size
    assert tok.decode(ids) == SAMPLE
    assert tokenizers.from_state(tok.state()) == tok
    with pytest.raises(DataError, match="'€'"):
        tok.encode("café €")


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    ids = tok.encode(SAMPLE)
    assert len(ids) == len(SAMPLE.encode("utf-8")) and ids.max() < 256
    assert tok.decode(ids) == SAMPLE
    assert tok.decode([0xE2, 0x98]) == "\ufffd"  # a cut multi-byte character decodes, replaced
    assert tokenizers.from_state(tok.state()) == tok


def test_embedded_corpus_batches():
    dm = TextDataModule(block_size=32, batch_size=8, seed=0)
    dm.setup()
    assert dm.vocab_size > 60  # English letters, digits, punctuation
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == y.shape == (8, 32) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one token
    assert dm.tokenizer.decode(x[0].tolist()) in text.embedded_corpus()
    n_train = dm.splits["train"].stop
    assert n_train == dm.splits["val"].start  # split by position: validation is the end of the text
    assert len(dm.train_dataloader()) == n_train // (32 * 8)


def test_windows_samplers():
    dm = TextDataModule(block_size=16, batch_size=4, seed=3)
    dm.setup()
    sampler = RandomWindows(dm.splits["train"], batch_size=4, num_batches=5, seed=3)
    first = list(sampler)
    assert first == list(sampler)  # the same epoch replays the same batches (exact resume)
    sampler.set_epoch(1)
    assert list(sampler) != first

    def keyed(before: int, done: int = 0) -> list[list[int]]:  # under a Trainer: keyed by the loop's position
        return list(RandomWindows(dm.splits["train"], 4, 5, seed=3, position=lambda: (before, done)))

    assert keyed(40) == keyed(40) != keyed(60)
    assert keyed(40, done=2) == keyed(40)[2:]  # resumed mid-epoch: the rest of the same epoch
    val = dm.splits["val"]
    starts = sorted(s for batch in EvalWindows(val, batch_size=4, seed=3) for s in batch)
    assert starts == list(range(0, len(val), 16))  # non-overlapping windows covering the split


def test_text_file_is_tokenized_once_and_cached(tmp_path, monkeypatch):
    source = tmp_path / "book.txt"
    source.write_text("to be or not to be, that is the question\n" * 50, encoding="utf-8")
    dm = TextDataModule(path=str(source), block_size=8, batch_size=2)
    dm.setup()
    assert (tmp_path / "book.txt.char.bin").stat().st_size == 2 * len(source.read_text())
    assert isinstance(dm.tokens, np.memmap)
    assert dm.tokenizer.decode(dm.tokens[:9]) == "to be or "

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(text, "tokenize_file", no_tokenizing)
    again = TextDataModule(path=str(source), block_size=8, batch_size=2)
    again.setup()
    assert again.tokenizer == dm.tokenizer and np.array_equal(again.tokens, dm.tokens)
    monkeypatch.undo()

    source.write_text("a changed file, with a new vocabulary: XYZ\n" * 50, encoding="utf-8")
    changed = TextDataModule(path=str(source), block_size=8, batch_size=2)
    changed.setup()
    assert "X" in changed.tokenizer.chars
    byte = TextDataModule(path=str(source), tokenizer="byte", block_size=8, batch_size=2)
    byte.setup()
    assert byte.vocab_size == 256 and (tmp_path / "book.txt.byte.bin").is_file()


def test_url_uses_the_cached_download_offline(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    url = "https://example.org/corpora/input.txt"
    cached = url_cache_path(url, tmp_path)
    assert cached.parent == tmp_path and cached.name.startswith("input-") and cached.suffix == ".txt"
    cached.write_text("first citizen: before we proceed any further, hear me speak.\n" * 20, encoding="utf-8")
    dm = TextDataModule(url=url, data_dir=str(tmp_path), block_size=16, batch_size=2)
    dm.prepare_data()
    dm.setup()
    assert dm.tokenizer.decode(dm.tokens[:5]) == "first"

    other = "https://example.org/other/input.txt"
    with pytest.raises(DataError, match="could not download") as err:
        TextDataModule(url=other, data_dir=str(tmp_path)).prepare_data()
    assert str(url_cache_path(other, tmp_path)) in str(err.value) and other in str(err.value)
    assert not list(tmp_path.glob("*.part"))


@pytest.mark.parametrize(
    ("content", "match"),
    [(b"", "is empty"), (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"), (b"abc\xff\xfe\xfddef", "not UTF-8")],
)
def test_bad_files_are_clear_errors(tmp_path, content, match):
    source = tmp_path / "bad.dat"
    source.write_bytes(content)
    with pytest.raises(DataError, match=match) as err:
        TextDataModule(path=str(source)).setup()
    assert str(source) in str(err.value)


def test_missing_file_and_bad_settings_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist") as err:
        TextDataModule(path=str(tmp_path / "nope.txt")).setup()
    assert "nope.txt" in str(err.value)
    with pytest.raises(ConfigError, match="both"):
        TextDataModule(path="a.txt", url="https://example.org/a.txt")
    with pytest.raises(ConfigError, match="val_fraction"):
        TextDataModule(val_fraction=0.0)


def test_block_size_larger_than_the_data(tmp_path):
    source = tmp_path / "short.txt"
    source.write_text("just a short text, a few hundred characters at most. " * 4, encoding="utf-8")
    with pytest.raises(DataError, match="block_size=64 is larger than the data"):
        TextDataModule(path=str(source), block_size=64).setup()
    TextDataModule(path=str(source), block_size=16).setup()  # fits


def _prepare(path: str, start, results) -> None:
    start.wait()  # every process tokenizes at the same moment, as the first process of each node does
    try:
        TextDataModule(path=path, block_size=8).prepare_data()
        results.put("ok")
    except Exception as err:  # reported to the test, which names it
        results.put(f"{type(err).__name__}: {err}")


def test_nodes_preparing_the_same_file_at_once_all_succeed(tmp_path):
    """Lightning calls prepare_data once per node; on shared storage the nodes race on one cache."""
    import multiprocessing

    source = tmp_path / "shared.txt"
    source.write_text("the quick brown fox jumps over the lazy dog\n" * 60_000, encoding="utf-8")  # ~2.6 MB
    context = multiprocessing.get_context("fork")  # no torch work in prepare_data: forking is safe and fast
    start, results = context.Barrier(3), context.Queue()
    workers = [context.Process(target=_prepare, args=(str(source), start, results)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert sorted(results.get(timeout=5) for _ in workers) == ["ok"] * 3
    dm = TextDataModule(path=str(source), block_size=8)
    dm.setup()
    assert dm.tokenizer.decode(dm.tokens[:9]) == "the quick"
    assert len(dm.tokens) == len(source.read_text())
    assert not list(tmp_path.glob(".*.part"))  # no temporary file left behind


def test_bpe_learns_from_the_training_text_only_and_is_cached(tmp_path, monkeypatch):
    source = tmp_path / "book.txt"
    train_part = "the cat sat on the mat, and the dog ran to his old red mat.\n" * 40
    val_part = "zyxwq qwxyz " * 10  # within the last 10%: no merge may come from it
    source.write_text(train_part + val_part, encoding="utf-8")
    dm = TextDataModule(path=str(source), tokenizer="bpe", vocab_size=300, block_size=8, data_dir=str(tmp_path))
    dm.setup()
    text = source.read_text(encoding="utf-8")
    cut = len(text) - int(len(text) * 0.1)
    train, val = dm.splits["train"], dm.splits["val"]
    assert dm.tokenizer.decode(dm.tokens[train.start : train.stop]) == text[:cut]  # exact, split by characters
    assert dm.tokenizer.decode(dm.tokens[val.start : val.stop]) == text[cut:]
    assert dm.vocab_size <= 300 and dm.tokens.dtype == np.uint16
    learnt = dm.tokenizer._tokenizer.get_vocab()
    assert any("mat" in token for token in learnt) and not any("zyx" in token for token in learnt)

    def no_training(*args, **kwargs):
        raise AssertionError("the token cache should have been used")

    monkeypatch.setattr(tokenizers.BPETokenizer, "train", no_training)
    again = TextDataModule(path=str(source), tokenizer="bpe", vocab_size=300, block_size=8, data_dir=str(tmp_path))
    again.setup()
    assert again.tokenizer == dm.tokenizer and np.array_equal(again.tokens, dm.tokens)
    with pytest.raises(ConfigError, match="data.vocab_size"):
        TextDataModule(tokenizer="bpe", vocab_size=100)
