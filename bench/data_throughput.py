"""Images/s and batches/s (batch 256) through genlab's image loaders, and a plain torchvision loader beside them.

    python bench/data_throughput.py [--images 50000] [--batches 24] [--rounds 3] [--workers 0 2 4] [--root DIR]

Writes a synthetic folder of `--images` small PNGs (32x32 RGB, 10 class folders) into a temporary
folder once (reused while it is there), converts it once with `make prepare`'s code into chunks, then
draws `--batches` batches from each loader, in one process; `--rounds` times over all loaders in turn
(so a busy spell of the machine hits them alike), reporting each figure's median over the rounds:

    digits        the in-memory digits module (1,797 8x8 images, held as one tensor)
    image_folder  data=image_folder on the PNG folder (decoded per batch in the workers)
    streaming     data=streaming on the prepared chunks (LitData, decoded per sample in the workers)
    torchvision   plain torchvision ImageFolder + ToTensor + DataLoader on the same folder: the reference

Time starts at the first batch's request and stops at the last batch; the steady rate leaves the
first batch (worker start-up) out, which is reported apart as the first batch's latency. Everything
is measured on this machine as it is: on a shared machine with few cores, more workers than cores
only compete for them.
"""

from __future__ import annotations

import argparse
import os
import statistics
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


def measure(loader: Iterable, batches: int) -> tuple[float, float, float]:
    """(seconds to the first batch, images/s over all batches, images/s after the first batch: the
    steady rate, worker start-up left out), cycling epochs if one is short."""
    start = time.perf_counter()
    first, first_images, images, drawn = 0.0, 0, 0, 0
    while drawn < batches:
        for x, _ in loader:
            images += len(x)
            drawn += 1
            if drawn == 1:
                first, first_images = time.perf_counter() - start, len(x)
            if drawn == batches:
                break
    seconds = time.perf_counter() - start
    return first, images / seconds, (images - first_images) / max(seconds - first, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--batches", type=int, default=24, help="batches drawn from each loader per round")
    parser.add_argument("--rounds", type=int, default=3, help="passes over all loaders, interleaved")
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

    loaders = [("digits (in memory)", digits, [0])]
    loaders += [("image_folder", image_folder, args.workers), ("streaming (chunks)", streaming, args.workers)]
    loaders += [("torchvision ImageFolder", plain_torchvision, args.workers)]
    results: dict[tuple[str, int], list[tuple[float, float, float, float]]] = {}
    for round_ in range(args.rounds):
        for name, make, worker_counts in loaders:
            for workers in worker_counts:
                setup_start = time.perf_counter()
                loader = make(workers)
                setup = time.perf_counter() - setup_start
                first, overall, steady = measure(loader, args.batches)
                results.setdefault((name, workers), []).append((setup, first, overall, steady, steady / BATCH))
                print(f"  round {round_ + 1}: {name}, {workers} workers: {steady:.0f} images/s", flush=True)
                del loader

    print(f"\n{args.batches} batches of {BATCH} from each loader, median of {args.rounds} interleaved rounds;")
    print(f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at the end; images 32x32 RGB PNG")
    print("images/s and batches/s: after the first batch (steady); 'all': from the first request, start-up included")
    header = f"{'loader':<26}{'workers':>8}{'set-up s':>10}{'1st batch s':>13}{'images/s all':>14}"
    print(f"{header}{'images/s':>10}{'batches/s':>11}")
    for (name, workers), runs in results.items():
        setup, first, overall, steady, bps = (statistics.median(column) for column in zip(*runs, strict=True))
        print(f"{name:<26}{workers:>8}{setup:>10.2f}{first:>13.2f}{overall:>14.0f}{steady:>10.0f}{bps:>11.2f}")


if __name__ == "__main__":
    main()
