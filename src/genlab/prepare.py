"""Convert a data set once into sharded chunks that `data=streaming` trains from (LitData's `optimize`).

    genlab-prepare SRC OUT [--workers N] ...        # or: make prepare SRC=... OUT=...

    SRC = a folder of images   flat, or one subfolder per class (as data=image_folder reads it)
          mnist | cifar10      torchvision's files in --data-dir (downloaded once when online)
          a text file          tokenized once (--tokenizer char|byte); windows are cut at train time
          latents.pt | .npz    float latents `(N, C, H, W)` and int labels `(N,)` (an autoencoder's, e.g. SD's
                               VAE on ImageNet for experiment=dit_s2_imagenet256_latent), stored as they are

OUT gets one folder of chunks per split (`train/`, `val/`, and `test/` for images), each a LitData
`index.json` and `chunk-*.bin` files, plus `genlab.json` (what the chunks hold: kind, classes,
levels, split sizes, the tokenizer's state) and, for text, `tokenizer.json`. The conversion runs in
`--workers` processes with a progress bar. Copy OUT to object storage (s3://...) as it is, or train
from it on local disk: `data=streaming data.path=OUT`.

Images are stored as encoded bytes (the file's own PNG/JPEG bytes, other formats re-encoded as PNG;
with --image-size resized once here and stored as PNG) and an int label, so chunks stay about the
size of the source and decoding happens per sample in the loader's workers. Text is stored as uint16
token ids. Latents are stored as float tensors (float16 kept, other floats as float32), with no
intensity grid (`levels`): scale them as the model should see them (SD's VAE: times 0.18215).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genlab import tokenizers
from genlab.data.chunks import IMAGE_SPLITS, META, count_samples
from genlab.data.images import split_indices
from genlab.errors import ConfigError, DataError, GenlabError

log = logging.getLogger(__name__)

ENCODED = {"PNG", "JPEG"}  # formats stored as the file's own bytes
TOKENS_PER_ITEM = 2**16  # tokens per optimize() item: chunks of text are cut from these
# LitData starts its workers with "spawn" by default: each re-imports torch (seconds, ~10 s on a busy
# machine) for every split. Forked workers start at once; fork is Linux's own default.
START_METHOD = "fork" if sys.platform == "linux" else None


# ---------------------------------------------------------------------------------------------
# Images: one sample per input, in worker processes (the functions are top level so they pickle)


def encode_png(array: np.ndarray) -> bytes:
    """uint8 `(H, W)` or `(H, W, C)` as PNG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)  # fast; PNG stays lossless
    return buffer.getvalue()


def image_file_sample(item: tuple[str, int], image_size: int | None, channels: int) -> Iterator[dict[str, Any]]:
    """One file as {"image": encoded bytes, "label": int}; an unreadable file is left out with a warning."""
    from PIL import Image

    from genlab.data.image_folder import READ_ERRORS, read_image

    path, label = item
    try:
        if image_size is not None:  # resized once here: (C, S, S) in [-1, 1] back to uint8
            x = read_image(Path(path), channels, image_size)
            array = x.add(1).mul(127.5).round().byte().permute(1, 2, 0).squeeze(-1).numpy()
            data = encode_png(array)
        else:
            with Image.open(path) as image:
                image.load()  # decodes fully: a truncated file fails here, not in training
                kind = image.format
            data = Path(path).read_bytes() if kind in ENCODED else encode_png(np.asarray(image))
            if kind not in ENCODED:  # modes PNG cannot hold (CMYK, 32-bit): what read_image would read
                read_image(Path(path), channels, 8)
    except READ_ERRORS as err:
        log.warning("skipping unreadable image %s (%s)", path, err)
        return
    yield {"image": data, "label": int(label)}


def array_sample(item: tuple[np.ndarray, int]) -> dict[str, Any]:
    array, label = item
    return {"image": encode_png(array), "label": int(label)}


def folder_items(src: Path, val_fraction: float, test_fraction: float, seed: int) -> tuple[dict, int]:
    """The folder's files split by seed (as data=image_folder splits), and the number of classes."""
    from genlab.data.image_folder import index_folder

    files, labels, classes = index_folder(src)
    parts = split_indices(len(files), val_fraction, test_fraction, seed)  # data=image_folder's own split
    return {k: [(str(files[i]), labels[i]) for i in sorted(v)] for k, v in parts.items()}, len(classes)


def torchvision_items(name: str, data_dir: Path, val_fraction: float, seed: int) -> tuple[dict, int]:
    """MNIST or CIFAR-10 from torchvision's files: its test set is `test`, `val` is carved from train."""
    from torchvision.datasets import CIFAR10, MNIST

    kind = {"mnist": MNIST, "cifar10": CIFAR10}[name]
    try:
        train, test = (kind(str(data_dir), train=t, download=True) for t in (True, False))
    except (RuntimeError, OSError) as err:  # not there, and no network to fetch it
        raise DataError(
            f"{name} is not in {data_dir} and could not be downloaded ({err}): put torchvision's files there "
            "(--data-dir), or prepare a folder of images instead"
        ) from None

    def arrays(ds: Any) -> list[tuple[np.ndarray, int]]:
        data = ds.data.numpy() if isinstance(ds.data, torch.Tensor) else np.asarray(ds.data)  # (N, H, W[, 3]) uint8
        return list(zip(data, (int(t) for t in ds.targets), strict=True))

    items = arrays(train)
    split = split_indices(len(items), val_fraction, 0.0, seed)  # data=mnist's own split of the training set
    parts = {name: [items[i] for i in sorted(split[name])] for name in ("train", "val")}
    return {**parts, "test": arrays(test)}, 10


# ---------------------------------------------------------------------------------------------
# Latents: float tensors of one shape, stored as they are

LATENT_SUFFIXES = (".pt", ".npz")
LATENT_FORMAT = (
    'a torch.save of {"latents": (N, C, H, W) floats, "labels": (N,) ints} (.pt), '
    "or np.savez(path, latents=..., labels=...) (.npz); labels may be left out (one class)"
)


def read_latents(src: Path) -> tuple[np.ndarray, np.ndarray]:
    """float `(N, C, H, W)` latents and int64 `(N,)` labels from a .pt or .npz file, checked."""
    import pickle
    import zipfile

    try:
        if src.suffix == ".pt":
            data = torch.load(src, map_location="cpu", weights_only=True)
        else:
            with np.load(src, allow_pickle=False) as npz:
                data = {name: npz[name] for name in npz.files}
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise DataError(f"SRC '{src}' cannot be read as latents ({err}); give {LATENT_FORMAT}") from None
    if not isinstance(data, dict) or "latents" not in data:
        raise DataError(f"SRC '{src}' holds no 'latents' entry; give {LATENT_FORMAT}")

    def array(value: Any) -> np.ndarray:
        if isinstance(value, torch.Tensor):  # bfloat16 has no numpy type: float32 holds it exactly
            value = value.float() if value.dtype == torch.bfloat16 else value
            return value.detach().cpu().numpy()
        return np.asarray(value)

    latents = array(data["latents"])
    labels = array(data["labels"]) if data.get("labels") is not None else np.zeros(len(latents), dtype=np.int64)
    if latents.ndim != 4 or latents.shape[2] != latents.shape[3] or not np.issubdtype(latents.dtype, np.floating):
        raise DataError(
            f"SRC '{src}': latents must be square floats (N, C, H, H), got {latents.dtype} {tuple(latents.shape)}"
        )
    if not np.isfinite(latents).all():
        raise DataError(f"SRC '{src}': the latents hold NaN or infinite values: encode the images again")
    if labels.shape != (len(latents),) or not np.issubdtype(labels.dtype, np.integer) or (labels < 0).any():
        raise DataError(
            f"SRC '{src}': labels must be {len(latents)} non-negative ints (one per latent), "
            f"got {labels.dtype} {tuple(labels.shape)}"
        )
    dtype = np.float16 if latents.dtype == np.float16 else np.float32  # half stays half: chunks half the size
    return latents.astype(dtype, copy=False), labels.astype(np.int64)


def latent_sample(item: tuple[np.ndarray, int]) -> dict[str, Any]:
    latent, label = item
    return {"latent": torch.from_numpy(np.ascontiguousarray(latent)), "label": int(label)}


def latent_items(src: Path, val_fraction: float, test_fraction: float, seed: int) -> tuple[dict, int, list[int]]:
    """The file's latents split by seed (as image folders are), the number of classes, and the shape (C, H, W)."""
    latents, labels = read_latents(src)
    parts = split_indices(len(latents), val_fraction, test_fraction, seed)
    items = {k: [(latents[i], int(labels[i])) for i in sorted(v)] for k, v in parts.items()}
    return items, int(labels.max()) + 1 if len(labels) else 0, list(latents.shape[1:])


# ---------------------------------------------------------------------------------------------
# Text: token ids, cut into items of TOKENS_PER_ITEM


def token_slice(item: tuple[str, int, int]) -> torch.Tensor:
    path, start, stop = item
    tokens = np.memmap(path, dtype=np.uint16, mode="r")
    return torch.from_numpy(np.array(tokens[start:stop], dtype=np.int32))  # int32: torch reads it everywhere


def prepare_text(src: Path, out: Path, kind: str, val_fraction: float, workers: int) -> dict[str, Any]:
    from litdata import optimize
    from litdata.streaming.item_loader import TokensLoader

    from genlab.data.text import tokenize_file

    if kind not in ("char", "byte"):
        raise ConfigError(f"--tokenizer must be 'char' or 'byte', got {kind!r}")
    if val_fraction <= 0:  # checked before tokenizing: a GPT run validates on the val split
        raise ConfigError(
            "--val-fraction 0 leaves the val split of a text empty (runs validate on it): give --val-fraction "
            "above 0, e.g. 0.05"
        )
    bin_path = out / ".tokens.bin"
    tokenizer, count = tokenize_file(src, kind, bin_path)  # DataError for empty or binary files
    n_train = count - int(count * val_fraction)
    for split, size in {"train": n_train, "val": count - n_train}.items():
        if size < 2:  # a window needs 2 tokens (input and target)
            bin_path.unlink()
            raise DataError(
                f"'{src}' has {count} tokens: the {split} split would hold {size} (--val-fraction {val_fraction}); "
                + ("raise --val-fraction or give more text" if split == "val" else "lower --val-fraction")
            )
    sizes = {}
    for split, (start, stop) in {"train": (0, n_train), "val": (n_train, count)}.items():
        items = [(str(bin_path), a, min(a + TOKENS_PER_ITEM, stop)) for a in range(start, stop, TOKENS_PER_ITEM)]
        optimize(
            fn=token_slice,
            inputs=items,
            output_dir=str(out / split),
            num_workers=min(workers, len(items)),
            chunk_bytes="64MB",
            item_loader=TokensLoader(),
            mode="overwrite",
            start_method=START_METHOD,
        )
        sizes[split] = stop - start
    bin_path.unlink()
    tokenizers.save(tokenizer, out / "tokenizer.json")
    return {"kind": "text", "tokenizer": tokenizer.state(), "vocab_size": tokenizer.vocab_size, "tokens": sizes}


# ---------------------------------------------------------------------------------------------


def prepare(
    src: str,
    out: str,
    workers: int | None = None,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    seed: int = 0,
    tokenizer: str = "char",
    image_size: int | None = None,
    channels: int = 3,
    data_dir: str = "data",
) -> dict[str, Any]:
    """Convert `src` into chunks under `out`; returns what `genlab.json` says."""
    from litdata import optimize

    workers = workers or max(1, os.cpu_count() or 1)
    if not src:
        raise ConfigError(
            "SRC is empty: give an image folder, mnist, cifar10 or a text file, or latents (.pt, .npz) "
            "(make prepare SRC=...)"
        )
    if not out:
        raise ConfigError("OUT is empty: give the folder to write the chunks to (make prepare OUT=...)")
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ConfigError("--val-fraction and --test-fraction must be in [0, 1) and sum below 1")
    if "://" in out:
        raise ConfigError(f"OUT '{out}': write the chunks to a local folder, then copy it (aws s3 sync OUT s3://...)")
    out_dir = Path(out).expanduser().resolve()
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DataError(f"OUT '{out_dir}' exists and is not empty: choose a new folder, or remove it first")
    source = Path(src).expanduser()
    shape = None
    if source.is_file() and source.suffix in LATENT_SUFFIXES:
        parts, num_classes, shape = latent_items(source, val_fraction, test_fraction, seed)
        fn = latent_sample
        kind = "latents"
    elif src.lower() in ("mnist", "cifar10"):
        parts, num_classes = torchvision_items(src.lower(), Path(data_dir), val_fraction, seed)
        fn: Any = array_sample
        kind = src.lower()
    elif source.is_dir():
        parts, num_classes = folder_items(source, val_fraction, test_fraction, seed)
        fn = partial(image_file_sample, image_size=image_size, channels=channels)
        kind = "image folder"
    elif source.is_file():
        if source.stat().st_size == 0:
            raise DataError(f"SRC '{source}' is an empty file: give a text file with some text")
        out_dir.mkdir(parents=True, exist_ok=True)
        meta = {"source": str(source), **prepare_text(source, out_dir, tokenizer, val_fraction, workers)}
        (out_dir / META).write_text(json.dumps(meta, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        return meta
    else:
        raise DataError(
            f"SRC '{src}' is not a folder of images, a text file, mnist or cifar10, or latents (.pt, .npz): "
            "give one of those (a path that does not exist is taken for an unknown kind)"
        )

    own_test = kind in ("image folder", "latents")  # torchvision's sets bring their own test split
    fractions = {"train": 1.0, "val": val_fraction, "test": test_fraction if own_test else 1.0}
    for split in IMAGE_SPLITS:
        if not parts[split] and fractions[split] > 0:  # asked for, but the fraction of this few files rounds to none
            fix = f"a larger --{split}-fraction" if split != "train" else "smaller --val-fraction/--test-fraction"
            raise DataError(
                f"SRC '{src}' has {sum(len(p) for p in parts.values())} {'latents' if shape else 'images'}: "
                f"the {split} split gets none"
                + (f" (--{split}-fraction {fractions[split]})" if split != "train" else "")
                + f"; give more images or {fix}"
            )
    sizes = {}
    for split in IMAGE_SPLITS:
        items = parts[split]
        if not items:
            continue
        optimize(
            fn=fn,
            inputs=items,
            output_dir=str(out_dir / split),
            num_workers=min(workers, len(items)),
            chunk_bytes="64MB",
            mode="overwrite",
            start_method=START_METHOD,
        )
        sizes[split] = count_samples(out_dir / split)
        if not sizes[split]:  # every file of the split was unreadable (each named in a warning above)
            shutil.rmtree(out_dir, ignore_errors=True)
            raise DataError(
                f"none of the {len(items)} images of the {split} split of '{src}' could be read (the warnings "
                "above name them): nothing was written; remove the broken files or add readable images"
            )
    if shape is not None:  # no intensity grid: the model sees the floats as they are
        meta = {"kind": "latents", "source": str(source), "num_classes": num_classes, "shape": shape, "samples": sizes}
        (out_dir / META).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        return meta
    meta = {"kind": "images", "source": kind if kind != "image folder" else str(source)}
    meta.update(num_classes=num_classes, levels=256, samples=sizes)
    if image_size is not None:
        meta.update(image_size=image_size, channels=channels)
    (out_dir / META).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="genlab-prepare", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("src", help="a folder of images, mnist, cifar10, a UTF-8 text file, or latents (.pt, .npz)")
    parser.add_argument("out", help="the folder to write the chunks to (new or empty)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: one per CPU core)")
    parser.add_argument("--val-fraction", type=float, default=0.05, help="share held out for validation")
    parser.add_argument(
        "--test-fraction", type=float, default=0.05, help="image folders and latents: share held out for test"
    )
    parser.add_argument("--seed", type=int, default=0, help="the split's seed")
    parser.add_argument("--tokenizer", default="char", help="text: char (vocabulary from the text) or byte")
    parser.add_argument("--image-size", type=int, default=None, help="image folders: resize once to this size")
    parser.add_argument("--channels", type=int, default=3, choices=(1, 3), help="with --image-size: 1 grey, 3 RGB")
    parser.add_argument("--data-dir", default="data", help="mnist/cifar10: where torchvision's files are")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("litdata").setLevel(logging.WARNING)  # its cache-size notice is about reading, not writing
    try:
        meta = prepare(
            args.src,
            args.out,
            workers=args.workers,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            seed=args.seed,
            tokenizer=args.tokenizer,
            image_size=args.image_size,
            channels=args.channels,
            data_dir=args.data_dir,
        )
    except GenlabError as err:
        print(f"genlab-prepare: error: {err}", file=sys.stderr)
        return 2
    what = meta.get("samples") or meta.get("tokens")
    print(f"prepared {meta['kind']} from {meta['source']} into {Path(args.out).resolve()}: {what}")
    print(f"train from it: python -m genlab.train data=streaming data.path={Path(args.out).resolve()} ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
