"""Character, byte and BPE tokenizers for text models (shared by the text data modules and the models
that store a vocabulary in their checkpoints). Ids are uint16 (what the token cache stores).

    char   one id per distinct character of the corpus, in code-point order (nanoGPT's
           shakespeare_char); the vocabulary travels with the run and the checkpoint
    byte   the 256 byte values of the UTF-8 encoding: no vocabulary to keep, any text fits
    bpe    byte-level BPE (GPT-2's scheme) trained on the training split with Hugging Face
           `tokenizers`: the 256 bytes plus merges up to `vocab_size`, so any text encodes and
           decodes back exactly; its JSON travels with the run and the checkpoint

char and byte encode whole chunks with NumPy instead of a Python loop over characters, so tokenizing
a file of hundreds of megabytes takes seconds; bpe runs in Rust (`encode_many` in parallel).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from genlab.errors import ConfigError, DataError

TokenizerKind = Literal["char", "byte", "bpe"]
BPESplit = Literal["gpt2", "whitespace"]
BPE_SPLITS = get_args(BPESplit)
MAX_VOCAB = 2**16  # ids are stored as uint16


def code_points(text: str) -> np.ndarray:
    """The Unicode code points of `text`, `(len(text),)` uint32."""
    return np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype=np.uint32)


class CharTokenizer:
    kind = "char"

    def __init__(self, chars: str) -> None:
        """`chars`: the vocabulary, one id per character in the given order."""
        if not chars:
            raise DataError("a character vocabulary needs at least one character")
        if len(chars) > MAX_VOCAB:
            raise DataError(f"{len(chars)} distinct characters is more than {MAX_VOCAB}: use data.tokenizer=byte")
        self.chars = chars
        points = code_points(chars)
        self._order = np.argsort(points, kind="stable")
        self._sorted = points[self._order]  # searchsorted maps a code point to its id

    @classmethod
    def from_code_points(cls, points: np.ndarray) -> CharTokenizer:
        """The vocabulary of the distinct code points given, sorted."""
        return cls(np.unique(points).astype("<u4").tobytes().decode("utf-32-le", errors="surrogatepass"))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        points = code_points(text)
        pos = np.searchsorted(self._sorted, points).clip(max=len(self._sorted) - 1)
        unknown = self._sorted[pos] != points
        if unknown.any():
            missing = sorted({chr(p) for p in points[unknown]})
            shown = ", ".join(repr(c) for c in missing[:10]) + (" ..." if len(missing) > 10 else "")
            raise DataError(
                f"{len(missing)} character(s) not in the vocabulary of {self.vocab_size}: {shown}. "
                "Remove them, or train with data.tokenizer=byte"
            )
        return self._order[pos].astype(np.uint16)

    def decode(self, ids: list[int] | np.ndarray) -> str:
        return "".join(self.chars[i] for i in ids)

    def char_counts(self) -> np.ndarray:
        """Characters each id adds to decoded text, `(vocab_size,)`: one each."""
        return np.ones(self.vocab_size, dtype=np.int64)

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "chars": self.chars}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and other.chars == self.chars


class ByteTokenizer:
    kind = "byte"
    vocab_size = 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)

    def decode(self, ids: list[int] | np.ndarray) -> str:
        # A sampled sequence need not be valid UTF-8 (a multi-byte character cut short).
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def char_counts(self) -> np.ndarray:
        """Characters each id adds to decoded text, `(256,)`: 1 for a byte that starts a UTF-8 character,
        0 for a continuation byte (0x80-0xBF), so the sum over valid UTF-8 is its number of characters."""
        return starts_of_characters(np.arange(256))

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ByteTokenizer)


class BPETokenizer:
    """Byte-level BPE from Hugging Face `tokenizers`: no normalizer and no prefix space, so decode(encode(s))
    == s for every string; `state()` holds the tokenizer's own JSON (a plain string in the checkpoint)."""

    kind = "bpe"

    def __init__(self, spec: str) -> None:
        """`spec`: the JSON of a trained `tokenizers.Tokenizer` (`to_str()`)."""
        from tokenizers import Tokenizer as HFTokenizer

        self.spec = spec
        self._tokenizer = HFTokenizer.from_str(spec)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, split: BPESplit = "gpt2") -> BPETokenizer:
        """Learn merges on `texts` (the training split only) up to `vocab_size` ids (at least the 256 bytes).
        Merges never cross the pieces `split` cuts the text into first: "gpt2", GPT-2's pattern (letters,
        digits and punctuation apart: "67:4" is three pieces); "whitespace", runs of non-space characters
        with the one space before them (" 67:4" may become one token: a whole note of the chorales)."""
        from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
        from tokenizers import Tokenizer as HFTokenizer

        if not 256 < vocab_size <= MAX_VOCAB:
            raise ConfigError(f"data.vocab_size must be in (256, {MAX_VOCAB}] for data.tokenizer=bpe, got {vocab_size}")
        if split not in BPE_SPLITS:
            raise ConfigError(f"data.bpe_split must be one of {', '.join(BPE_SPLITS)}, got {split!r}")
        tokenizer = HFTokenizer(models.BPE())
        if split == "gpt2":
            tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's split, text as is
        else:  # every character kept: the pieces and the gaps between them (newlines, runs of spaces)
            words = pre_tokenizers.Split(Regex(r" ?[^\s]+"), behavior="isolated")
            tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
                [words, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
            )
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte has an id: no unknown text
            show_progress=False,
        )
        tokenizer.train_from_iterator(texts, trainer)
        return cls(tokenizer.to_str())

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size()

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tokenizer.encode(text).ids, dtype=np.uint16)

    def encode_many(self, texts: list[str]) -> list[np.ndarray]:
        """`encode` of each text, in parallel threads (Rust)."""
        return [np.asarray(e.ids, dtype=np.uint16) for e in self._tokenizer.encode_batch(texts)]

    def decode(self, ids: list[int] | np.ndarray) -> str:
        # Sampled ids need not form valid UTF-8 (a character's bytes cut short): replaced, as bytes do.
        return self._tokenizer.decode([int(i) for i in ids])

    def char_counts(self) -> np.ndarray:
        """Characters each id adds to decoded text, `(vocab_size,)`: the UTF-8 characters its bytes start
        (a token may hold part of a character; the sum over valid UTF-8 is its number of characters)."""
        to_byte = {c: b for b, c in byte_level_alphabet().items()}
        counts = np.zeros(self.vocab_size, dtype=np.int64)
        for token, i in self._tokenizer.get_vocab().items():
            counts[i] = starts_of_characters(np.array([to_byte[c] for c in token])).sum()
        return counts

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "spec": self.spec}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BPETokenizer) and other.spec == self.spec


Tokenizer = CharTokenizer | ByteTokenizer | BPETokenizer


def starts_of_characters(byte_values: np.ndarray) -> np.ndarray:
    """1 where a byte starts a UTF-8 character, 0 for continuation bytes (0b10xxxxxx)."""
    return ((byte_values & 0xC0) != 0x80).astype(np.int64)


def byte_level_alphabet() -> dict[int, str]:
    """GPT-2's byte-to-character map (`bytes_to_unicode` in openai/gpt-2's encoder.py), which the
    ByteLevel pre-tokenizer of Hugging Face `tokenizers` uses to spell a token's bytes as text:
    printable bytes stand for themselves, the others for the characters from U+0100 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    alphabet, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in alphabet:
            alphabet[b] = chr(256 + extra)
            extra += 1
    return alphabet


def from_state(state: dict[str, Any]) -> Tokenizer:
    """A tokenizer back from `tokenizer.state()` (as stored in a checkpoint or tokenizer.json)."""
    if state.get("kind") == "char":
        return CharTokenizer(state["chars"])
    if state.get("kind") == "byte":
        return ByteTokenizer()
    if state.get("kind") == "bpe":
        return BPETokenizer(state["spec"])
    raise DataError(f"unknown tokenizer state {state.get('kind')!r}: expected 'char', 'byte' or 'bpe'")


def save(tokenizer: Tokenizer, path: Path) -> None:
    path.write_text(json.dumps(tokenizer.state(), ensure_ascii=False) + "\n", encoding="utf-8")


def load(path: Path) -> Tokenizer:
    return from_state(json.loads(path.read_text(encoding="utf-8")))
