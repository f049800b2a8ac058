"""Text for language models: one corpus, tokenized once, read as random windows of tokens.

    (default)       the English reference text shipped with Python (`pydoc_data.topics`, the pages
                    `help()` shows: ~465k characters, 103 distinct), so a first run needs nothing
    path=FILE       any local UTF-8 text file
    url=URL         downloaded once into `data_dir/`, read from there after

A file is tokenized once into `<file>.<tokenizer>.bin` (uint16 ids, as nanoGPT's prepare.py does)
with a small `.json` beside it (the vocabulary and the source's size and mtime, to notice a changed
file). Later runs map the .bin into memory (`np.memmap`) and start at once; the file is read in
chunks, so a corpus larger than memory works. The embedded corpus is small and tokenized in memory.

Batches are `(x, y)`, each `(B, block_size)` int64, `y` being `x` shifted by one token. The split is
by position (the last `val_fraction` of the tokens is validation), so validation text is never
seen in training, not even as overlapping windows.

`tokenizer=bpe` learns its merges from the training text only, so the split comes first: the last
`val_fraction` of the CHARACTERS is validation, and the whole file is read into memory once.
Data modules with their own split (code split by file, ...) override `split_texts()`: the documents
of each split, tokenized here into one array with a content-addressed cache in `data_dir/token_cache/`
(`<sha1 of the texts and tokenizer settings>.bin/.json`), so a later run starts at once and a changed
corpus is never read from a stale cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from genlab import tokenizers
from genlab.data.images import ddp_world, epoch_position
from genlab.errors import ConfigError, DataError
from genlab.tokenizers import BPETokenizer, ByteTokenizer, CharTokenizer, Tokenizer, TokenizerKind

CHUNK_CHARS = 2**24  # characters read at a time while tokenizing a file (~64 MB as code points)
EMBEDDED = "the embedded corpus (pydoc_data.topics)"


def embedded_corpus() -> str:
    """The text of Python's `help()` topics: English prose with code, shipped with every CPython."""
    from pydoc_data.topics import topics

    return "\n".join(topics.values())


def url_cache_path(url: str, data_dir: str | Path) -> Path:
    """Where `url` is kept: `data_dir/<name>-<8 hex of the url>.<ext>` (many corpora are "input.txt")."""
    name = Path(urllib.parse.urlparse(url).path).name or "download.txt"
    stem, dot, ext = name.partition(".")
    digest = hashlib.sha1(url.encode()).hexdigest()[:8]
    return Path(data_dir) / f"{stem}-{digest}{dot}{ext}"


def private_temp_path(path: Path) -> Path:
    """A temporary name beside `path` that no other process uses. Lightning prepares data once per
    node, so on shared storage several nodes write the same cache at once: each writes its own
    file and renames it over the target (atomic; the contents are the same), instead of all
    writing one `.part` file whose first rename leaves the others failing."""
    return path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.part")


def write_atomically(path: Path, text: str) -> None:
    temp = private_temp_path(path)
    temp.write_text(text, encoding="utf-8")
    temp.replace(path)


def download(url: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = private_temp_path(dest)
    rank_zero_info(f"Downloading {url} to {dest}")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            shutil.copyfileobj(response, out)
    except (OSError, ValueError) as err:  # URLError/HTTPError/timeouts are OSErrors; a malformed URL a ValueError
        partial.unlink(missing_ok=True)
        raise DataError(
            f"data.url: could not download {url} ({err}). Without network, put the file at {dest} "
            "yourself, or train on a local file with data.path=..."
        ) from None
    partial.replace(dest)  # a download cut short never looks complete


def read_chunks(path: Path) -> Iterator[str]:
    """The file's text in chunks; a clear DataError for a file that is not UTF-8 text."""
    try:
        with open(path, encoding="utf-8", newline="") as file:  # newline="": keep the bytes' line ends
            while chunk := file.read(CHUNK_CHARS):
                if "\x00" in chunk:
                    raise DataError(f"'{path}' holds NUL bytes: it looks like a binary file, not text")
                yield chunk
    except UnicodeDecodeError as err:
        raise DataError(
            f"'{path}' is not UTF-8 text ({err.reason} at byte {err.start} of a chunk): "
            "is it a binary file? Convert it to UTF-8 text first."
        ) from None


def tokenize_file(source: Path, kind: TokenizerKind, bin_path: Path) -> tuple[Tokenizer, int]:
    """Write `source`'s token ids to `bin_path` (uint16) chunk by chunk; returns the tokenizer and count."""
    if kind == "char":  # a first pass for the vocabulary
        points = np.zeros(0, dtype=np.uint32)
        for chunk in read_chunks(source):
            points = np.union1d(points, np.unique(tokenizers.code_points(chunk)))
        if len(points) == 0:
            raise DataError(f"'{source}' is empty: give a file with some text")
        tokenizer: Tokenizer = CharTokenizer.from_code_points(points)
    else:
        tokenizer = ByteTokenizer()
    partial = private_temp_path(bin_path)
    count = 0
    try:
        with open(partial, "wb") as out:
            for chunk in read_chunks(source):
                ids = tokenizer.encode(chunk)
                ids.tofile(out)
                count += len(ids)
        if count == 0:
            raise DataError(f"'{source}' is empty: give a file with some text")
        partial.replace(bin_path)
    finally:
        partial.unlink(missing_ok=True)
    return tokenizer, count


class TokenWindows(Dataset):
    """Windows of `block_size + 1` consecutive tokens in `tokens[start:stop]`. Indexed with a list
    of window starts it returns the whole batch `(x, y)`, each `(B, block_size)` int64."""

    def __init__(self, tokens: np.ndarray, start: int, stop: int, block_size: int) -> None:
        self.tokens, self.start, self.stop, self.block_size = tokens, start, stop, block_size
        self._span = np.arange(block_size + 1)

    def __len__(self) -> int:  # the number of window starts
        return self.stop - self.start - self.block_size

    def __getitem__(self, starts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = self.start + np.asarray(starts)[:, None] + self._span  # (B, block_size + 1)
        windows = torch.from_numpy(self.tokens[index].astype(np.int64))
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()

    def __getstate__(self) -> dict[str, Any]:
        # Worker processes reopen the memmap instead of receiving a pickled copy of the whole corpus.
        state = dict(self.__dict__)
        if isinstance(self.tokens, np.memmap):
            state["tokens"] = ("memmap", self.tokens.filename)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state["tokens"], tuple):
            state["tokens"] = np.memmap(state["tokens"][1], dtype=np.uint16, mode="r")
        self.__dict__.update(state)


class RandomWindows(DistributedSampler):
    """`num_batches` batches of random window starts for this rank (a DistributedSampler, so
    Lightning leaves it in place under DDP).

    The draws depend on `seed` and the fit loop's position (`EpochPosition`: the batches trained
    before this epoch, and those of this epoch already trained, which are drawn and skipped), so a
    run resumed from any checkpoint, mid-epoch too, sees the batches an unbroken run would. Without
    a position (a plain loop), the epoch given to `set_epoch` is used.
    """

    def __init__(
        self,
        dataset: TokenWindows,
        batch_size: int,
        num_batches: int,
        seed: int,
        position: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        world, rank = ddp_world()
        super().__init__(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
        self.batch_size, self.num_batches, self.position = batch_size, num_batches, position

    def __iter__(self) -> Iterator[list[int]]:
        key, skip = self.position() if self.position is not None else (self.epoch, 0)
        generator = torch.Generator().manual_seed(hash((self.seed, key)) % 2**63)  # int hashes are not salted
        for batch in range(self.num_batches):  # batch by batch: an epoch of a large corpus has many
            starts = torch.randint(len(self.dataset), (self.num_replicas, self.batch_size), generator=generator)
            if batch >= skip:
                yield starts[self.rank].tolist()  # every rank draws all ranks' starts and keeps its own

    def __len__(self) -> int:
        return self.num_batches


class EvalWindows(DistributedSampler):
    """Batches of non-overlapping windows covering the split, in an order fixed by `seed`, so that
    `limit_val_batches` evaluates a fair sample of the split and the same one every time."""

    def __init__(self, dataset: TokenWindows, batch_size: int, seed: int) -> None:
        world, rank = ddp_world()
        super().__init__(dataset, num_replicas=world, rank=rank, shuffle=False, seed=seed)
        starts = torch.arange(0, len(dataset), dataset.block_size)
        starts = starts[torch.randperm(len(starts), generator=torch.Generator().manual_seed(seed))]
        per_rank = -(-len(starts) // world)  # pad by wrapping around, so every rank runs as many batches
        starts = starts.repeat(-(-per_rank * world // len(starts)))[: per_rank * world]
        self.batches = starts[rank::world].split(batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        return (batch.tolist() for batch in self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class TextDataModule(L.LightningDataModule):
    """A text corpus as token windows for next-token prediction; `vocab_size` is known after `setup()`.

    `batch_size` is per device. One training epoch draws as many windows as the training split
    holds `block_size` pieces (about one pass over the text); `trainer.limit_train_batches` sets a
    shorter epoch, i.e. how often validation, checkpoints and samples come.
    """

    def __init__(
        self,
        path: str | None = None,
        url: str | None = None,
        tokenizer: TokenizerKind = "char",
        vocab_size: int = 2048,
        bpe_split: tokenizers.BPESplit = "gpt2",
        block_size: int = 128,
        batch_size: int = 32,
        val_fraction: float = 0.1,
        data_dir: str = "data",
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        """`path` (a local text file) or `url` (downloaded into `data_dir`), or neither for the
        embedded corpus; `tokenizer` is "char" (vocabulary from the corpus), "byte" (256 ids) or "bpe"
        (byte-level BPE of `vocab_size` ids learnt from the training text, whose merges stay within the
        pieces `bpe_split` cuts: "gpt2" or "whitespace"; `vocab_size` is ignored otherwise, and the
        `vocab_size` attribute is the tokenizer's actual size once set up)."""
        super().__init__()
        if path is not None and url is not None:
            raise ConfigError("data.path and data.url are both set: give one (or neither, for the embedded corpus)")
        if tokenizer not in ("char", "byte", "bpe"):
            raise ConfigError(f"data.tokenizer must be 'char', 'byte' or 'bpe', got {tokenizer!r}")
        if bpe_split not in tokenizers.BPE_SPLITS:
            raise ConfigError(f"data.bpe_split must be one of {', '.join(tokenizers.BPE_SPLITS)}, got {bpe_split!r}")
        if tokenizer == "bpe" and not 256 < vocab_size <= tokenizers.MAX_VOCAB:
            raise ConfigError(f"data.vocab_size must be in (256, {tokenizers.MAX_VOCAB}] for bpe, got {vocab_size}")
        if not 0 < val_fraction < 1:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
        if block_size < 1 or batch_size < 1:
            raise ConfigError("data.block_size and data.batch_size must be at least 1")
        self.path, self.url, self.tokenizer_kind, self.bpe_vocab_size = path, url, tokenizer, vocab_size
        self.bpe_split = bpe_split
        self.block_size, self.batch_size, self.val_fraction = block_size, batch_size, val_fraction
        self.data_dir, self.num_workers, self.seed = Path(data_dir), num_workers, seed
        self.tokenizer: Tokenizer | None = None
        self.tokens: np.ndarray | None = None
        self.splits: dict[str, TokenWindows] = {}

    @property
    def vocab_size(self) -> int:
        if self.tokenizer is None:
            raise RuntimeError("TextDataModule.vocab_size is known after setup()")
        return self.tokenizer.vocab_size

    @property
    def source(self) -> Path | None:
        """The text file (None for the embedded corpus)."""
        if self.url is not None:
            return url_cache_path(self.url, self.data_dir)
        if self.path is not None:
            return Path(self.path).expanduser()
        return None

    def _cache_paths(self, source: Path) -> tuple[Path, Path]:
        stem = source.with_name(f"{source.name}.{self.tokenizer_kind}")
        return stem.with_name(stem.name + ".bin"), stem.with_name(stem.name + ".json")

    def _cached(self, source: Path) -> dict[str, Any] | None:
        """The cache's metadata if it matches the source file as it is now."""
        bin_path, meta_path = self._cache_paths(source)
        if not (bin_path.is_file() and meta_path.is_file()):
            return None
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        stat = source.stat()
        fresh = (meta.get("source_bytes"), meta.get("source_mtime_ns")) == (stat.st_size, stat.st_mtime_ns)
        return meta if fresh and bin_path.stat().st_size == 2 * meta["tokens"] else None

    def prepare_data(self) -> None:
        """Download (url) and tokenize into the cache once. Lightning calls this on one process per node."""
        texts = self.split_texts()
        if texts is not None:  # split before tokenizing (bpe, or a module's own split)
            self._tokenize_splits(texts)  # fills the token cache
            return
        self._fetch_source()
        source = self.source
        if source is not None and self._cached(source) is None:
            bin_path, meta_path = self._cache_paths(source)
            rank_zero_info(f"Tokenizing {source} ({self.tokenizer_kind}) into {bin_path}")
            tokenizer, count = tokenize_file(source, self.tokenizer_kind, bin_path)
            stat = source.stat()
            meta = {
                "tokens": count,
                "tokenizer": tokenizer.state(),
                "source_bytes": stat.st_size,
                "source_mtime_ns": stat.st_mtime_ns,
            }
            write_atomically(meta_path, json.dumps(meta, ensure_ascii=False) + "\n")

    def _fetch_source(self) -> None:
        """Download (url) and check the text file."""
        source = self.source
        if source is None:
            return
        if self.url is not None and not source.is_file():
            download(self.url, source)
        if not source.is_file():
            what = "is a folder, not a text file" if source.is_dir() else "does not exist"
            raise DataError(f"data.path: '{source}' {what}")
        if source.stat().st_size == 0:
            raise DataError(f"'{source}' is empty: give a file with some text")

    def split_texts(self) -> dict[str, list[str]] | None:
        """The documents of each split ("train", "val", and "test" where there is one), for data that is
        split before tokenizing; None: one corpus tokenized whole and split by token position.

        Here: None, except for bpe, whose merges are learnt from the training text only: then the text
        is split by characters (the last `val_fraction` is validation). Subclasses with their own split
        (by file, by piece) override this; `setup` tokenizes and caches what it returns."""
        if self.tokenizer_kind != "bpe":
            return None
        self._fetch_source()
        text = embedded_corpus() if self.source is None else "".join(read_chunks(self.source))
        if not text:
            raise DataError(f"'{self.source}' is empty: give a file with some text")
        cut = len(text) - int(len(text) * self.val_fraction)
        return {"train": [text[:cut]], "val": [text[cut:]]}

    def _tokenize_splits(self, texts: dict[str, list[str]]) -> tuple[Tokenizer, np.ndarray, dict[str, tuple[int, int]]]:
        """(tokenizer, the splits' tokens one after the other, each split's (start, stop)), from the token
        cache when these texts were tokenized the same way before. A char vocabulary holds the characters of
        every split (a validation character unseen in training still encodes); bpe learns from "train" only."""
        settings = [self.tokenizer_kind, self.bpe_vocab_size, sorted(texts)]
        if self.tokenizer_kind == "bpe" and self.bpe_split != "gpt2":  # gpt2: the cache keys of earlier runs
            settings.append(self.bpe_split)
        digest = hashlib.sha1(json.dumps(settings).encode())
        for split in sorted(texts):
            for doc in texts[split]:
                digest.update(f"{split}:{len(doc)}:".encode())
                digest.update(doc.encode("utf-8", errors="surrogatepass"))
        cache = self.data_dir / "token_cache"
        bin_path, meta_path = cache / f"{digest.hexdigest()}.bin", cache / f"{digest.hexdigest()}.json"
        if meta_path.is_file() and bin_path.is_file():
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            bounds = {split: tuple(span) for split, span in meta["bounds"].items()}
            return tokenizers.from_state(meta["tokenizer"]), np.memmap(bin_path, np.uint16, "r"), bounds
        if not texts.get("train") or not any(texts["train"]):
            raise DataError("the training split holds no text: give more files, or a smaller val/test fraction")
        if self.tokenizer_kind == "char":
            points = np.unique(np.concatenate([tokenizers.code_points(d) for docs in texts.values() for d in docs]))
            tokenizer: Tokenizer = CharTokenizer.from_code_points(points)
        elif self.tokenizer_kind == "byte":
            tokenizer = ByteTokenizer()
        else:
            rank_zero_info(f"Training a byte-level BPE tokenizer of {self.bpe_vocab_size} ids on the training split")
            tokenizer = BPETokenizer.train(texts["train"], self.bpe_vocab_size, self.bpe_split)
        parts, bounds, start = [], {}, 0
        for split, docs in texts.items():
            ids = tokenizer.encode_many(docs) if isinstance(tokenizer, BPETokenizer) else map(tokenizer.encode, docs)
            parts.extend(ids)
            stop = start + sum(len(p) for p in parts[len(parts) - len(docs) :])
            bounds[split], start = (start, stop), stop
        tokens = np.concatenate(parts).astype(np.uint16)
        cache.mkdir(parents=True, exist_ok=True)
        temp = private_temp_path(bin_path)
        tokens.tofile(temp)
        temp.replace(bin_path)
        meta = {"tokenizer": tokenizer.state(), "bounds": bounds, "tokens": len(tokens)}
        write_atomically(meta_path, json.dumps(meta, ensure_ascii=False) + "\n")  # written last: marks it complete
        return tokenizer, tokens, bounds

    def _load(self) -> tuple[Tokenizer, np.ndarray]:
        source = self.source
        if source is None:
            text = embedded_corpus()
            tokenizer: Tokenizer = (
                CharTokenizer.from_code_points(tokenizers.code_points(text))
                if self.tokenizer_kind == "char"
                else ByteTokenizer()
            )
            return tokenizer, tokenizer.encode(text)
        meta = self._cached(source) if source.is_file() else None
        if meta is None:  # used without a Trainer (which calls prepare_data first)
            self.prepare_data()
            meta = self._cached(source)
        assert meta is not None
        return tokenizers.from_state(meta["tokenizer"]), np.memmap(self._cache_paths(source)[0], np.uint16, "r")

    def setup(self, stage: str | None = None) -> None:
        if self.tokens is None:
            texts = self.split_texts()
            if texts is None:
                self.tokenizer, self.tokens = self._load()
                n = len(self.tokens)
                n_train = n - int(n * self.val_fraction)
                bounds = {"train": (0, n_train), "val": (n_train, n)}
            else:
                self.tokenizer, self.tokens, bounds = self._tokenize_splits(texts)
            for split, (start, stop) in bounds.items():
                size = stop - start
                if size < self.block_size + 1:
                    raise DataError(
                        f"data.block_size={self.block_size} is larger than the data: the {split} split of "
                        f"{self.source or EMBEDDED} has {size} tokens, and a window needs block_size + 1. "
                        "Lower data.block_size, change data.val_fraction, or use more text."
                    )
            self.splits = {split: TokenWindows(self.tokens, a, b, self.block_size) for split, (a, b) in bounds.items()}
        if self.trainer is not None and self.trainer.is_global_zero:  # the vocabulary goes with the run
            run_dir = Path(self.trainer.default_root_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            tokenizers.save(self.tokenizer, run_dir / "tokenizer.json")

    def _loader(self, sampler: DistributedSampler) -> DataLoader:
        return DataLoader(
            sampler.dataset,
            batch_size=None,  # the sampler yields whole batches
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            # Its own generator: making an iterator otherwise draws a worker seed from the global RNG, and a
            # run resumed mid-epoch makes one at another point than an unbroken run (its noise would shift).
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        train = self.splits["train"]
        world, _ = ddp_world()
        num_batches = max(1, (train.stop - train.start) // (self.block_size * self.batch_size * world))
        return self._loader(RandomWindows(train, self.batch_size, num_batches, self.seed, epoch_position(self)))

    def val_dataloader(self) -> DataLoader:
        return self._loader(EvalWindows(self.splits["val"], self.batch_size, self.seed))

    def eval_dataloader(self, split: str) -> DataLoader:
        """Non-overlapping windows of `split` (a module with a "test" split returns this from test_dataloader)."""
        return self._loader(EvalWindows(self.splits[split], self.batch_size, self.seed))


class DocumentsDataModule(TextDataModule):
    """Text made of separate documents (source files, pieces of music, molecules) split by document into
    train, val and test, so no document is in two splits. Subclasses supply `split_texts()` (and the
    `source` they read); the windows, samplers, tokenizers and token cache are TextDataModule's.

    `val_fraction` and `test_fraction` are fractions of the documents; the other arguments are
    TextDataModule's except `path`/`url`, which each subclass reads in its own way."""

    def __init__(self, test_fraction: float = 0.1, **text_options: Any) -> None:
        if text_options.get("url") is not None:
            raise ConfigError(f"data.url: {type(self).__name__} reads local files only; give data.path")
        super().__init__(**text_options)
        if not 0 < test_fraction < 1 or self.val_fraction + test_fraction >= 1:
            raise ConfigError(
                "data.test_fraction must be in (0, 1) with data.val_fraction + data.test_fraction < 1, "
                f"got {test_fraction} and {self.val_fraction}"
            )
        self.test_fraction = test_fraction

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test")
