"""Character and byte tokenizers for text models (shared by the text data modules and the models that
store a vocabulary in their checkpoints). Ids are uint16 (what the token cache stores).

    char   one id per distinct character of the corpus, in code-point order (nanoGPT's
           shakespeare_char); the vocabulary travels with the run and the checkpoint
    byte   the 256 byte values of the UTF-8 encoding: no vocabulary to keep, any text fits

Both encode whole chunks with NumPy instead of a Python loop over characters, so tokenizing a
file of hundreds of megabytes takes seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np

from genlab.errors import DataError

TokenizerKind = Literal["char", "byte"]
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

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ByteTokenizer)


Tokenizer = CharTokenizer | ByteTokenizer


def from_state(state: dict[str, Any]) -> Tokenizer:
    """A tokenizer back from `tokenizer.state()` (as stored in a checkpoint or tokenizer.json)."""
    if state.get("kind") == "char":
        return CharTokenizer(state["chars"])
    if state.get("kind") == "byte":
        return ByteTokenizer()
    raise DataError(f"unknown tokenizer state {state.get('kind')!r}: expected 'char' or 'byte'")


def save(tokenizer: Tokenizer, path: Path) -> None:
    path.write_text(json.dumps(tokenizer.state(), ensure_ascii=False) + "\n", encoding="utf-8")


def load(path: Path) -> Tokenizer:
    return from_state(json.loads(path.read_text(encoding="utf-8")))
