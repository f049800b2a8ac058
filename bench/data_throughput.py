"""Images/s and batches/s (batch 256) through genlab's image loaders, and a plain torchvision loader beside them.

    python bench/data_throughput.py [--images 50000] [--batches 30] [--workers 0 2 4] [--root DIR]

Writes a synthetic folder of `--images` small PNGs (32x32 RGB, 10 class folders) into a temporary
folder once (reused while it is there), converts it once with `make prepare`'s code into chunks, then
draws `--batches` batches from each loader, in one process, one after the other:

    digits        the in-memory digits module (1,797 8x8 images, held as one tensor)
    image_folder  data=image_folder on the PNG folder (decoded per batch in the workers)
    streaming     data=streaming on the prepared chunks (LitData, decoded per sample in the workers)
    torchvision   plain torchvision ImageFolder + ToTensor + DataLoader on the same folder: the reference

Time starts at the first batch's request (worker start-up included, it is reported apart as the
first batch's latency) and stops at the last batch. Everything is measured on this machine as it
is: on a shared machine with few cores, more workers than cores only compete for them.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Iterable
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch

BATCH = 256


def write_png(args: tuple[Path, int]) -> None:
    from PIL import Image

    path, seed = args
    pixels = np.random.default_rng(seed).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, compress_level=1)


def synthetic_folder(root: Path, n: int) -> Path:
    folder = root / f"pngs_{n}"
    done = folder / ".complete"
    if done.is_file():
        return folder
    for c in range(10):
        (folder / f"class{c}").mkdir(parents=True, exist_ok=True)
    jobs = [(folder / f"class{i % 10}" / f"{i:06d}.png", i) for i in range(n)]
    start = time.perf_counter()
    with Pool(os.cpu_count()) as pool:
        pool.map(write_png, jobs, chunksize=500)
    done.touch()
    print(f"wrote {n} PNGs into {folder} in {time.perf_counter() - start:.1f} s")
    return folder


def prepared_chunks(folder: Path, root: Path, n: int) -> Path:
    from genlab.prepare import prepare

    out = root / f"chunks_{n}"
    if (out / "genlab.json").is_file():
        return out
    start = time.perf_counter()
    prepare(str(folder), str(out), val_fraction=0, test_fraction=0)
    print(f"make prepare: {n} PNGs into chunks at {out} in {time.perf_counter() - start:.1f} s")
    return out


def measure(loader: Iterable, batches: int) -> tuple[float, float, int]:
    """(seconds to the first batch, seconds for all, images drawn), cycling epochs if one is short."""
    start = time.perf_counter()
    first, images, drawn = None, 0, 0
    while drawn < batches:
        for x, _ in loader:
            images += len(x)
            drawn += 1
            if first is None:
                first = time.perf_counter() - start
            if drawn == batches:
                break
    return first or 0.0, time.perf_counter() - start, images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--batches", type=int, default=30, help="batches drawn from each loader")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4])
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "genlab_data_bench")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the loaders' own work, not intra-op threads, is measured

    from torchvision import datasets, transforms

    from genlab.data import DigitsDataModule, ImageFolderDataModule
    from genlab.data.streaming import StreamingDataModule

    folder = synthetic_folder(args.root, args.images)
    chunks = prepared_chunks(folder, args.root, args.images)

    def digits(workers: int):
        data = DigitsDataModule(batch_size=BATCH, num_workers=workers)
        data.setup("fit")
        return data.train_dataloader()

    def image_folder(workers: int):
        sizes = {"image_size": 32, "channels": 3, "val_fraction": 0, "test_fraction": 0}
        data = ImageFolderDataModule(str(folder), batch_size=BATCH, num_workers=workers, **sizes)
        data.setup("fit")
        return data.train_dataloader()

    def streaming(workers: int):
        data = StreamingDataModule(str(chunks), batch_size=BATCH, num_workers=workers, image_size=32, channels=3)
        data.setup("fit")
        return data.train_dataloader()

    def plain_torchvision(workers: int):
        to_range = transforms.Compose([transforms.ToTensor(), transforms.Normalize(0.5, 0.5)])
        dataset = datasets.ImageFolder(str(folder), transform=to_range)
        return torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers, drop_last=True)

    rows = []
    for name, make, worker_counts in (
        ("digits (in memory)", digits, [0]),
        ("image_folder", image_folder, args.workers),
        ("streaming (chunks)", streaming, args.workers),
        ("torchvision ImageFolder", plain_torchvision, args.workers),
    ):
        for workers in worker_counts:
            setup_start = time.perf_counter()
            loader = make(workers)
            setup = time.perf_counter() - setup_start
            first, seconds, images = measure(loader, args.batches)
            rows.append((name, workers, setup, first, images / seconds, args.batches / seconds))
            print(f"  measured {name} with {workers} workers", flush=True)
            del loader

    print(f"\n{args.batches} batches of {BATCH} from each; {os.cpu_count()} CPU cores; images 32x32 RGB PNG")
    print(f"{'loader':<26}{'workers':>8}{'set-up s':>10}{'1st batch s':>13}{'images/s':>11}{'batches/s':>11}")
    for name, workers, setup, first, ips, bps in rows:
        print(f"{name:<26}{workers:>8}{setup:>10.2f}{first:>13.2f}{ips:>11.0f}{bps:>11.2f}")


if __name__ == "__main__":
    main()
