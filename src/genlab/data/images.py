"""What every image data module shares: the value range, splits fixed by seed, and batch loading.

Images are float tensors `(B, C, H, W)` in [-1, 1] (the range tanh outputs and diffusion assumes),
labels are int64 `(B,)`. Every image source can be resized (`image_size`) and given 1 or 3
channels, so any image family runs on any image data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from genlab.errors import ConfigError


def to_model_range(images: torch.Tensor, channels: int, image_size: int) -> torch.Tensor:
    """uint8 `(N, C, H, W)` in [0, 255] (or float in [0, 1]) to float in [-1, 1], at the asked size."""
    x = images.float().div(255) if images.dtype == torch.uint8 else images.float()
    if x.shape[1] != channels:
        if x.shape[1] == 1:
            x = x.expand(-1, channels, -1, -1)
        elif channels == 1:  # ITU-R 601 luma
            x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        else:
            raise ConfigError(f"cannot turn {x.shape[1]}-channel images into {channels} channels")
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(0, 1).mul(2).sub(1).contiguous()


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
    ) -> None:
        super().__init__()
        if channels not in (1, 3):
            raise ConfigError(f"data.channels must be 1 or 3, got {channels}")
        if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
            raise ConfigError("data.val_fraction and data.test_fraction must be in [0, 1) and sum below 1")
        self.image_size, self.channels, self.num_classes = image_size, channels, num_classes
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.splits: dict[str, Dataset] = {}

    def load(self) -> dict[str, Dataset]:
        """The data set(s): {"all": ds} to be split by fraction, or explicit "train"/"test" parts."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        parts = self.load()
        generator = torch.Generator().manual_seed(self.seed)
        if "all" in parts:
            n = len(parts["all"])
            n_val, n_test = round(n * self.val_fraction), round(n * self.test_fraction)
            train, val, test = torch.utils.data.random_split(
                parts["all"], [n - n_val - n_test, n_val, n_test], generator
            )
        else:
            n = len(parts["train"])
            n_val = round(n * self.val_fraction)
            train, val = torch.utils.data.random_split(parts["train"], [n - n_val, n_val], generator)
            test = parts["test"]
        self.splits = {"train": train, "val": val, "test": test}

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
