"""Glue for text data modules whose splits are separate texts (molecules, chorales): one token
stream of train, val and test one after another, read through TextDataModule's windows."""

from __future__ import annotations

import numpy as np

from genlab import tokenizers
from genlab.data.text import TextDataModule, TokenWindows
from genlab.errors import DataError
from genlab.tokenizers import ByteTokenizer, CharTokenizer


def setup_from_texts(dm: TextDataModule, texts: dict[str, str], what: str) -> None:
    """Set `dm`'s tokenizer, tokens and splits from one text per split ("train", "val", optionally "test")."""
    joined = "".join(texts.values())
    dm.tokenizer = (
        CharTokenizer.from_code_points(tokenizers.code_points(joined))
        if dm.tokenizer_kind == "char"
        else ByteTokenizer()
    )
    ids = {split: dm.tokenizer.encode(text) for split, text in texts.items()}
    dm.tokens = np.concatenate(list(ids.values()))
    dm.splits, start = {}, 0
    for split, part in ids.items():
        if len(part) < dm.block_size + 1 and split != "test":
            raise DataError(
                f"data.block_size={dm.block_size} is larger than the data: the {split} split of {what} has "
                f"{len(part)} tokens, and a window needs block_size + 1. Lower data.block_size or use more data."
            )
        if len(part) >= dm.block_size + 1:
            dm.splits[split] = TokenWindows(dm.tokens, start, start + len(part), dm.block_size)
        start += len(part)
