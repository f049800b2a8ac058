"""`make prepare` / genlab-prepare on inputs the tests write: an image folder, MNIST's IDX files, a text
file, and the bad inputs a user gives (each one line, no traceback)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genlab.data.streaming import StreamingDataModule
from genlab.prepare import main, prepare


def write_idx(folder: Path, prefix: str, n: int, rng: np.random.Generator) -> None:
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.tobytes())


def test_image_folder_with_a_bad_file_and_resizing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(10):
        path = tmp_path / "images" / ("cats" if i < 6 else "dogs") / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30), (20 * i, 0, 0)).save(path, quality=95)
    (tmp_path / "images" / "cats" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    out = tmp_path / "chunks"
    args = ["--workers=2", "--image-size=16", "--val-fraction=0.2", "--test-fraction=0.3"]  # no split left empty
    assert main([str(tmp_path / "images"), str(out), *args]) == 0
    meta = json.loads((out / "genlab.json").read_text())
    assert meta["num_classes"] == 2 and meta["image_size"] == 16
    assert sum(meta["samples"].values()) == 10  # the broken file left out (with a warning naming it)
    assert "prepared images" in capsys.readouterr().out
    data = StreamingDataModule(str(out), batch_size=4, num_workers=0, image_size=16, channels=3)
    data.setup("fit")
    x, y = next(iter(data.train_dataloader()))
    assert x.shape == (4, 3, 16, 16) and y.max() <= 1


def test_mnist_idx_files(tmp_path: Path) -> None:
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    write_idx(raw, "train", 40, rng)
    write_idx(raw, "t10k", 10, rng)
    meta = prepare("mnist", str(tmp_path / "chunks"), workers=2, val_fraction=0.25, data_dir=str(tmp_path / "data"))
    assert meta["samples"] == {"train": 30, "val": 10, "test": 10} and meta["num_classes"] == 10
    data = StreamingDataModule(str(tmp_path / "chunks"), batch_size=8, num_workers=0, image_size=28, channels=1)
    data.setup("fit")
    x, _ = next(iter(data.test_dataloader()))
    pixels = np.frombuffer((raw / "t10k-images-idx3-ubyte").read_bytes()[16:], np.uint8).reshape(10, 28, 28)
    assert x.shape == (8, 1, 28, 28)
    assert ((x[0, 0] + 1) * 127.5).round().byte().numpy().tolist() == pixels[0].tolist()  # lossless, in order


@pytest.mark.parametrize(
    ("src", "message"),
    [
        ("", "SRC is empty: give an image folder, mnist, cifar10 or a text file"),
        ("{tmp}/empty_folder", "no images (.bmp, .gif, .jpeg, .jpg, .png, .tif, .tiff, .webp) under"),
        ("{tmp}/empty.txt", "is an empty file: give a text file with some text"),
        ("{tmp}/nothing_here", "is not a folder of images, a text file, mnist or cifar10"),
        ("imagenet", "is not a folder of images, a text file, mnist or cifar10"),
    ],
)
def test_bad_sources_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], src: str, message: str) -> None:
    (tmp_path / "empty_folder").mkdir()
    (tmp_path / "empty.txt").write_text("")
    assert main([src.format(tmp=tmp_path), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("genlab-prepare: error: ") and message in err[0], err


def test_an_existing_output_is_not_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "book.txt").write_text("some text " * 50)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert main([str(tmp_path / "book.txt"), str(tmp_path / "out")]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_prepare_splits_a_folder_as_data_image_folder_does(tmp_path: Path) -> None:
    from genlab.data import ImageFolderDataModule
    from genlab.prepare import folder_items

    for i in range(20):
        path = tmp_path / ("a" if i < 10 else "b") / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(np.full((4, 4, 3), i * 10, np.uint8)).save(path)
    for seed in (0, 1):
        data = ImageFolderDataModule(str(tmp_path), image_size=4, val_fraction=0.1, test_fraction=0.2, seed=seed)
        data.setup("fit")
        files = data.splits["train"].dataset.files
        folder = {s: sorted(str(files[i]) for i in data.splits[s].indices) for s in ("train", "val", "test")}
        parts, _ = folder_items(tmp_path, 0.1, 0.2, seed)
        assert {s: sorted(path for path, _ in parts[s]) for s in parts} == folder  # no test image trains


@pytest.mark.parametrize(("good", "bad"), [(1, 3), (0, 3)])
def test_a_split_left_empty_by_unreadable_images_is_refused_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], good: int, bad: int
) -> None:
    src = tmp_path / "imgs"
    src.mkdir()
    for i in range(good):
        Image.fromarray(np.full((4, 4, 3), i, np.uint8)).save(src / f"good{i}.png")
    for i in range(bad):
        (src / f"bad{i}.png").write_bytes(b"not an image")
    args = [str(src), str(tmp_path / "out"), "--workers=1", "--val-fraction=0.2", "--test-fraction=0.2"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("genlab-prepare: error: none of the") and "split of" in err[-1], err
    assert not (tmp_path / "out" / "genlab.json").exists()


def test_a_split_its_fraction_gives_no_image_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "imgs" / "only.png")
    assert main([str(tmp_path / "imgs"), str(tmp_path / "out"), "--workers=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has 1 images: the val split gets none (--val-fraction 0.05)" in err[0], err


def test_text_with_val_fraction_zero_names_the_val_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "book.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 100)
    assert main([str(tmp_path / "book.txt"), str(tmp_path / "out"), "--val-fraction", "0", "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--val-fraction 0 leaves the val split of a text empty" in err[0], err
    assert "too few" not in err[0]
    assert main([str(tmp_path / "book.txt"), str(tmp_path / "out2"), "--val-fraction", "0.0001"]) == 2
    assert "the val split would hold 0 (--val-fraction 0.0001)" in capsys.readouterr().err


def test_streaming_names_an_empty_split_instead_of_litdatas_assertion(tmp_path: Path) -> None:
    from genlab.errors import DataError

    src = tmp_path / "imgs"
    src.mkdir()
    for i in range(10):
        Image.fromarray(np.full((4, 4, 3), i, np.uint8)).save(src / f"{i}.png")
    prepare(str(src), str(tmp_path / "out"), workers=1, val_fraction=0.2, test_fraction=0.2)
    index = tmp_path / "out" / "val" / "index.json"  # as an older prepare left a split whose files all failed
    index.write_text(json.dumps({**json.loads(index.read_text()), "chunks": []}))
    data = StreamingDataModule(str(tmp_path / "out"), batch_size=2, num_workers=0, image_size=4)
    with pytest.raises(DataError, match=r"the val split of .*out holds no samples"):
        data.setup("fit")
