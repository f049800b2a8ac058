"""The format of the chunks `make prepare` writes and `data=streaming` reads (both import it from here).

    OUT/genlab.json           what the chunks hold (META): kind ("images" | "latents" | "text"), classes,
                              levels (images), shape (latents: [C, H, W]), split sizes (`samples` or
                              `tokens`), the tokenizer's state
    OUT/<split>/index.json    LitData's index of the split's chunks; `chunk-*.bin` beside it
    OUT/tokenizer.json        text only: the tokenizer, as the runs save theirs

Splits: `train`, `val` and, for images and latents, `test`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from genlab.errors import DataError

META = "genlab.json"  # what the chunks hold; data=streaming reads it first
IMAGE_SPLITS = ("train", "val", "test")
TEXT_SPLITS = ("train", "val")


def read_meta(path: str | Path) -> dict[str, Any]:
    """`genlab.json` of a prepared folder (local); a one-line DataError if the folder holds no chunks."""
    meta_path = Path(path) / META
    if not meta_path.is_file():
        what = "does not exist" if not Path(path).exists() else f"holds no prepared chunks (no {META})"
        raise DataError(
            f"data.path: '{path}' {what}: convert your data first with "
            f"`make prepare SRC=<image folder | mnist | cifar10 | text file> OUT={path}`"
        )
    return json.loads(meta_path.read_text(encoding="utf-8"))


def count_samples(split_dir: Path) -> int:
    """Items in a split's chunks, from LitData's `index.json` (0 when the split has none)."""
    index_path = split_dir / "index.json"
    if not index_path.is_file():
        return 0
    index = json.loads(index_path.read_text(encoding="utf-8"))
    return sum(chunk["chunk_size"] for chunk in index.get("chunks", []))
