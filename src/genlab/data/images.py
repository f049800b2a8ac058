"""What every image data module shares: the value range, splits fixed by seed, and batch loading.

Images are float tensors `(B, C, H, W)` in [-1, 1] (the range tanh outputs and diffusion assumes),
labels are int64 `(B,)`. Every image source can be resized (`image_size`) and given 1 or 3
channels, so any image family runs on any image data.

Every image data module declares `levels`, the number of intensity levels its data really has
(sklearn's digits 17: 0..16; 8-bit images 256). Pixel values are exactly the grid
k / (levels - 1) * 2 - 1, k = 0..levels-1: raw values are checked against it (a mismatch is a
DataError naming data.levels) and resized or converted images are snapped back onto it. Likelihoods
and bits/dim are then measured for that discretization, the same for every family (see
`genlab.models.likelihoods.bits_per_dim` and docs/evaluation.md, "Bits per dimension").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from genlab.errors import ConfigError, DataError


def check_levels(x: torch.Tensor, levels: int) -> None:
    """Raise a one-line DataError unless every value of `x` (in [0, 1]) is one of `levels` evenly
    spaced levels k / (levels - 1)."""
    if levels < 2:
        raise ConfigError(f"data.levels must be at least 2, got {levels}")
    index = x.double() * (levels - 1)
    off = (index - index.round()).abs()
    if off.max() > 1e-3 or x.min() < 0 or x.max() > 1:
        bad = x.flatten()[off.flatten().argmax()].item()
        raise DataError(
            f"data.levels={levels} does not match the data: value {bad:.4g} (of [0, 1]) is not on the grid "
            f"k/{levels - 1}; set data.levels to the number of intensity levels the data has (digits 17, 8-bit 256)"
        )


def check_all_levels_used(x: torch.Tensor, levels: int) -> None:
    """A whole data set in [-1, 1] whose values use only every g-th level (e.g. the digits' 17 levels
    declared as 33) gets a DataError: bits/dim would be measured on a finer grid than the data has."""
    index = ((x + 1) / 2 * (levels - 1)).round().long().unique()
    step = math.gcd(*index.tolist(), levels - 1) if len(index) > 1 else 1
    if step > 1:
        raise DataError(
            f"data.levels={levels} does not match the data: it uses only every {step}th level; "
            f"set data.levels={(levels - 1) // step + 1}"
        )


def to_model_range(images: torch.Tensor, channels: int, image_size: int, levels: int = 256) -> torch.Tensor:
    """uint8 `(N, C, H, W)` in [0, 255] (or float in [0, 1] on the `levels` grid) to float in [-1, 1], at the
    asked size and on the grid of `levels` intensity levels (values made by resizing or RGB->grey are
    rounded to the nearest level, so the data stay discrete)."""
    x = images.float().div(255) if images.dtype == torch.uint8 else images.float()
    check_levels(x, levels)
    if x.shape[1] != channels:
        if x.shape[1] == 1:
            x = x.expand(-1, channels, -1, -1)
        elif channels == 1:  # ITU-R 601 luma
            x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        else:
            raise ConfigError(f"cannot turn {x.shape[1]}-channel images into {channels} channels")
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    x = x.clamp(0, 1).mul(levels - 1).round().div(levels - 1)
    return x.mul(2).sub(1).contiguous()


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[int]]:
    """Positions 0..n-1 split into train, val and test by `seed`. Every image data module and `make
    prepare` split with this one function, so switching between a folder and its prepared chunks moves
    no image across splits. A permutation keyed by seed, cut train first: torch's `random_split` with the
    sizes [n - n_val - n_test, n_val, n_test], which made the splits before (runs keep theirs)."""
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_train = n - n_val - n_test
    return {"train": order[:n_train], "val": order[n_train : n_train + n_val], "test": order[n_train + n_val :]}


def ddp_world() -> tuple[int, int]:
    """(world size, rank) once DDP is up, else (1, 0): samplers are made after Lightning starts DDP."""
    ddp = dist.is_available() and dist.is_initialized()
    return (dist.get_world_size(), dist.get_rank()) if ddp else (1, 0)


class EpochPosition:
    """Where the trainer's fit loop stands when a training epoch's batches are drawn, as
    `(batches trained before this epoch, batches of this epoch already trained)`.

    Training samplers key their shuffle on the first and skip the second, so a run stopped anywhere
    (mid-epoch by a signal, or at an epoch's end) and resumed draws exactly the batches an unbroken
    run would. Lightning alone restarts a plain sampler's epoch from its first batch after a
    mid-epoch stop: the first k batches are trained twice and the last k never. Both numbers come
    from the loop's own progress counters, restored from the checkpoint before the first batch is
    drawn, so they hold for any optimizer set-up (a GAN steps twice per batch; accumulation steps
    once per several); the epoch number does not (Lightning hands a step-budget run resumed at an
    epoch's end the finished epoch's number).
    """

    def __init__(self, trainer: L.Trainer) -> None:
        self.trainer = trainer

    def __call__(self) -> tuple[int, int]:
        progress = self.trainer.fit_loop.epoch_loop.batch_progress
        done = progress.current.completed
        if done >= self.trainer.num_training_batches:  # a checkpoint from an epoch's end: a new epoch starts
            done = 0
        return progress.total.completed - done, done


def epoch_position(datamodule: L.LightningDataModule) -> Callable[[], tuple[int, int]] | None:
    """The fit loop's position for a data module's training sampler (None outside a Trainer's fit)."""
    trainer = datamodule.trainer
    return EpochPosition(trainer) if trainer is not None else None


class TensorImages(Dataset):
    """Images and labels held in memory. Indexed with a list of indices, it returns the whole
    batch with one gather instead of collating samples one by one."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index_tensor = torch.as_tensor(index)
        return self.images[index_tensor], self.labels[index_tensor]


class ShuffledBatches(DistributedSampler):
    """Yields whole batches of indices, this rank's share of them.

    Why a DistributedSampler: Lightning then leaves it in place under DDP instead of wrapping it.
    The order is a permutation keyed by `seed` and, in a Trainer, the fit loop's position
    (`EpochPosition`): a resumed run replays exactly the batches an unbroken run would have seen,
    from the next unseen one even after a mid-epoch stop. Without a position (a plain loop),
    `seed + epoch` as Lightning's `set_epoch` or the caller gives it.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        shuffle: bool,
        seed: int,
        drop_last: bool,
        position: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        world, rank = ddp_world()
        super().__init__(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed)
        # The partial last batch is dropped (even batch statistics), unless it is the only one: a data set
        # smaller than a batch per device still trains, on one smaller batch.
        drop_last = drop_last and self.num_samples >= batch_size
        self.batch_size, self.drop_last_batch, self.position = batch_size, drop_last, position

    def __iter__(self) -> Iterator[list[int]]:
        skip = 0
        if self.position is not None:  # runs at the first batch, after Lightning restored its loops
            self.epoch, skip = self.position()  # DistributedSampler shuffles with seed + epoch
        indices = list(super().__iter__())
        stop = len(indices) - (len(indices) % self.batch_size if self.drop_last_batch else 0)
        for start in range(skip * self.batch_size, stop, self.batch_size):
            yield indices[start : start + self.batch_size]

    def __len__(self) -> int:
        full, rest = divmod(self.num_samples, self.batch_size)
        return full + (1 if rest and not self.drop_last_batch else 0)


class ImageDataModule(L.LightningDataModule):
    """Splits one labelled image set into train/val/test by seed; subclasses implement `load()`.

    `batch_size` is per device: with N devices an optimizer step sees N x batch_size images.
    """

    def __init__(
        self,
        image_size: int,
        channels: int,
        num_classes: int,
        batch_size: int = 128,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        num_workers: int = 0,
        seed: int = 0,
        levels: int = 256,
    ) -> None:
        """`levels`: how many intensity levels the data has (see the module docstring); models read it
        through `${data.levels}` to measure bits/dim on that discretization."""
        super().__init__()
        if channels not in (1, 3):
            raise ConfigError(f"data.channels must be 1 or 3, got {channels}")
        if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
            raise ConfigError("data.val_fraction and data.test_fraction must be in [0, 1) and sum below 1")
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be at least 1 (images per device and step), got {batch_size}")
        if num_workers < 0:
            raise ConfigError(f"data.num_workers must be 0 (load in the main process) or more, got {num_workers}")
        self.image_size, self.channels, self.num_classes = image_size, channels, num_classes
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.levels = levels
        self.splits: dict[str, Dataset] = {}

    def load(self) -> dict[str, Dataset]:
        """The data set(s): {"all": ds} to be split by fraction, or explicit "train"/"test" parts."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        parts = self.load()
        for part in parts.values():
            if isinstance(part, TensorImages):  # in memory: cheap to check once as a whole
                check_all_levels_used(part.images, self.levels)
        if "all" in parts:
            split = split_indices(len(parts["all"]), self.val_fraction, self.test_fraction, self.seed)
            splits: dict[str, Dataset] = {name: Subset(parts["all"], indices) for name, indices in split.items()}
            asked = {"val": self.val_fraction > 0, "test": self.test_fraction > 0}
        else:  # a test set of its own (MNIST's); val is carved from train
            split = split_indices(len(parts["train"]), self.val_fraction, 0.0, self.seed)
            splits = {name: Subset(parts["train"], split[name]) for name in ("train", "val")}
            splits["test"] = parts["test"]
            asked = {"val": self.val_fraction > 0, "test": True}
        self.check_splits(splits, asked)
        self.splits = splits

    def check_splits(self, splits: dict[str, Dataset], asked: dict[str, bool]) -> None:
        """Refuse, before training, a split that would give no batch: the train split, or a val/test split
        asked for (`asked`: its fraction is above 0), holding no image. (A train split smaller than a batch
        gives one partial batch: see `ShuffledBatches`.)"""
        sizes = {name: len(part) for name, part in splits.items()}
        empty = [name for name in ("train", "val", "test") if (name == "train" or asked[name]) and not sizes[name]]
        if empty:
            counts = ", ".join(f"{name} {size}" for name, size in sizes.items())
            raise DataError(
                f"{self.describe()}: {sum(sizes.values())} images split into {counts}: too few, the "
                f"{' and '.join(empty)} split{'s hold' if len(empty) > 1 else ' holds'} no image; add images, "
                "or change data.val_fraction/data.test_fraction"
            )

    def describe(self) -> str:
        """The data set, as an error names it."""
        return f"data ({type(self).__name__})"

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.splits[split]
        position = epoch_position(self) if split == "train" else None
        sampler = ShuffledBatches(dataset, self.batch_size, shuffle, self.seed, drop_last=shuffle, position=position)
        return DataLoader(
            dataset,
            batch_size=None,  # the sampler yields batches
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            # Its own generator: making an iterator otherwise draws a worker seed from the global RNG, and a
            # run resumed mid-epoch makes one at another point than an unbroken run (its noise would shift).
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
